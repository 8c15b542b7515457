"""The training loop: records -> reference log-probs -> jitted steps -> checkpoints, metrics, HF export.

`train` runs one DPO or SFT job into `out/`:
  checkpoints/         Orbax, the last `keep_checkpoints` (state, grain iterator state, config)
  reference_logps.npz  the precomputed reference log-probs, written once (atomically) per dataset
  metrics.jsonl        one line per logged step, TRL's metric names; tensorboard/ holds the same
  model/               the trained model as a Hugging Face folder
  run.json             the base model folder the run started from (read by `caspo-jax export`)
The host syncs with the device only every `log_every` steps and before each save. A non-finite loss
or gradient norm stops the run with `TrainingDiverged` before anything after it is saved, so the last
checkpoint is a good one. `resume=True` restores the latest checkpoint and iterator state: the run
then continues with exactly the batches, and so the losses, of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import tensorboardX
import tqdm

from caspo_jax import files
from caspo_jax.config import TrainConfig
from caspo_jax.data import pairs_io, pipeline
from caspo_jax.model import hf
from caspo_jax.model.tokenizer import load_tokenizer
from caspo_jax.parallel import mesh as mesh_lib
from caspo_jax.train import optim
from caspo_jax.train import state as state_lib
from caspo_jax.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became nan or inf; nothing from that step on was saved."""


def train(
    config: TrainConfig, model_dir: str | Path, pairs: Any, out_dir: str | Path, *, resume: bool = False
) -> dict[str, float]:
    """Runs a DPO or SFT job (see the module docstring); returns the last logged metrics."""
    mesh_lib.initialize_distributed()
    out, model_dir = Path(out_dir), Path(model_dir)
    mesh = mesh_lib.make_mesh(config.mesh)
    records = pairs_io.read_records(pairs, pairs=config.mode == "dpo")
    examples, stats = pipeline.tokenize(records, load_tokenizer(model_dir), config.data)
    log.info("%s: %s", pairs if isinstance(pairs, (str, Path)) else "dataset", stats.describe(config.data.max_length))

    with Checkpointer(out / "checkpoints", config.keep_checkpoints) as checkpoints:
        latest = checkpoints.latest_step()
        if latest is not None and not resume:
            raise ValueError(f"{out} already holds checkpoints up to step {latest}: pass --resume, or another --out")
        if files.is_primary():  # the base model of this run, for `caspo-jax export`
            files.write_text(out / "run.json", json.dumps({"model_dir": str(model_dir.absolute())}, indent=2) + "\n")
        model_config, params = hf.load(model_dir, dtype=config.param_dtype, mesh=mesh)
        total = pipeline.steps_per_run(len(examples), config.batch_size, config.epochs, config.max_steps)
        tx = optim.optimizer(config.optim, total)
        shardings = state_lib.state_shardings(model_config, tx, mesh)
        batch_sharding = state_lib.batch_sharding(config, mesh)

        live = config.mode == "dpo" and config.dpo.reference == "live"
        if config.mode == "dpo" and not live and records[0].ref_chosen_logps is None:
            reference = state_lib.make_reference_fn(model_config, config, mesh, shardings.params)
            fingerprint = _fingerprint(examples, model_config, model_dir, config)
            cache = out / "reference_logps.npz"
            ref = _reference_logps(examples, params, reference, config.batch_size, batch_sharding, cache, fingerprint)
            examples = pipeline.with_reference(examples, *ref)
        ref_params = (params,) if live else ()  # the step's extra argument: the frozen initial model

        data = pipeline.dataset(
            examples, config.batch_size, shuffle=config.data.shuffle, seed=config.data.seed, epochs=None,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )  # fmt: skip
        batches = pipeline.iterator(data)
        if latest is None:
            state = state_lib.init_state(params, tx, shardings)
        else:
            target = state_lib.abstract_state(model_config, tx, shardings)
            restored, data_state, _ = checkpoints.restore(latest, target.as_dict())
            state = state_lib.TrainState(**restored)
            batches.set_state(data_state)
            log.info("resumed from %s at step %d", checkpoints.directory, latest)
        del params

        step_fn = state_lib.make_train_step(model_config, config, tx, total, shardings, mesh)
        saved = latest
        with MetricsLog(out, config, start=latest or 0, total=total, num_examples=len(examples)) as metrics_log:
            for done in range((latest or 0) + 1, total + 1):
                state, metrics = step_fn(state, state_lib.to_device(next(batches), batch_sharding), *ref_params)
                metrics_log.add(done, metrics)
                save_now = done % config.save_every == 0 or done == total
                if done % config.log_every == 0 or save_now:
                    metrics_log.flush(checkpoints.directory, saved)  # raises TrainingDiverged: nothing saved
                if save_now:
                    checkpoints.save(done, state.as_dict(), batches.get_state(), config.to_dict())
                    saved = done
        checkpoints.wait()
        _export(out / "model", model_config, state.params, model_dir)
        mesh_lib.sync(f"exported {out / 'model'}")  # process 0 wrote it; the next stage may read it
    return metrics_log.last


def _export(path: Path, model_config, params: dict, model_dir: Path) -> None:
    """The trained model as an HF folder, keeping the original config.json keys and tokenizer."""
    original = json.loads((model_dir / "config.json").read_text())
    has_tokenizer = any((model_dir / f).exists() for f in hf.TOKENIZER_FILES)
    hf.save(path, model_config, params, tokenizer_dir=model_dir if has_tokenizer else None, extra_config=original)


def _fingerprint(examples: list[pipeline.Example], model_config, model_dir: Path, config: TrainConfig) -> str:
    """Identifies the pairs' tokens and the reference model, to know a cached reference is still valid."""
    digest = hashlib.sha256(repr((model_config, str(model_dir.absolute()), config.compute_dtype)).encode())
    for ex in examples:
        for key in ("prompt", "chosen", "rejected"):
            digest.update(ex[key].tobytes() + b"|")
    return digest.hexdigest()


def _reference_logps(
    examples: list[pipeline.Example], params: dict, reference: Callable, batch_size: int, sharding, cache: Path,
    fingerprint: str,
) -> tuple[np.ndarray, np.ndarray]:
    """[N] f32 chosen and rejected log-probs under `params`, in dataset order, cached (atomically) in `cache`."""
    if cache.exists():
        stored = np.load(cache)
        if str(stored["fingerprint"]) == fingerprint:
            return stored["chosen"], stored["rejected"]
        log.info("%s is for other pairs or another model: recomputing", cache)
    local = batch_size // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    chosen, rejected = [], []
    for start in tqdm.trange(0, len(examples), batch_size, desc="reference log-probs", leave=False):
        chunk = examples[start : start + batch_size]
        batch = state_lib.to_device(pipeline.pack(chunk, batch_size, rows), sharding)
        c, r = jax.device_get(reference(params, batch))
        chosen.append(c[: len(chunk)])
        rejected.append(r[: len(chunk)])
    chosen, rejected = np.concatenate(chosen), np.concatenate(rejected)
    if jax.process_index() == 0:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.npz")
        np.savez(tmp, chosen=chosen, rejected=rejected, fingerprint=np.asarray(fingerprint))
        os.replace(tmp, cache)
    return chosen, rejected


class MetricsLog:
    """Per-step device metrics, fetched in windows: checked for nan/inf, then written to metrics.jsonl,
    TensorBoard and the progress bar (process 0). Each line holds the window's means (learning_rate:
    the last step's), the step, the epoch and pairs/s."""

    def __init__(self, out: Path, config: TrainConfig, start: int, total: int, num_examples: int) -> None:
        self.config, self.num_examples, self.last = config, num_examples, {}
        self.pending: list[tuple[int, dict]] = []
        self.main = jax.process_index() == 0
        self.path = out / "metrics.jsonl"
        self.writer = self.bar = None
        if self.main:
            out.mkdir(parents=True, exist_ok=True)
            self._truncate(start)
            self.writer = tensorboardX.SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)
            self.bar = tqdm.tqdm(total=total, initial=start, desc=config.mode, unit="step", dynamic_ncols=True)
        self.clock = time.perf_counter()

    def _truncate(self, start: int) -> None:
        """Drops lines past `start` (written by a run that died after its last checkpoint)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.path)

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))
        if self.bar is not None:
            self.bar.update(1)

    def flush(self, checkpoint_dir: Path, saved: int | None) -> None:
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        values = jax.device_get([m for _, m in self.pending])
        self.pending = []
        for step, m in zip(steps, values):
            bad = [f"{name} is {m[name]}" for name in ("loss", "grad_norm") if not math.isfinite(m[name])]
            if bad:
                where = f"step {saved} in {checkpoint_dir}" if saved else "none (no checkpoint was saved yet)"
                message = f"{' and '.join(bad)} at step {step}; stopped. The last good checkpoint: {where}"
                raise TrainingDiverged(message)
        now = time.perf_counter()
        record = {name: float(np.mean([m[name] for m in values])) for name in values[0]}
        record |= {
            "step": steps[-1],
            "epoch": steps[-1] * self.config.batch_size / self.num_examples,
            "learning_rate": float(values[-1]["learning_rate"]),
            "pairs_per_s": len(steps) * self.config.batch_size / (now - self.clock),
        }
        self.clock, self.last = now, record
        if not self.main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step":
                self.writer.add_scalar(name, value, record["step"])
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", pairs_s=f"{record['pairs_per_s']:.1f}")

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
            self.bar.close()
