"""The demo's stages, in order, each written once and skipped when its output exists.

    base model -> CASPO round (caspo.loop.run_round, verifier labels) -> SFT control (same steps)
    -> step-level evaluation of the three models -> greedy / self-consistency / CaT on held-out
    questions -> export of the CASPO model and the step-wise dataset -> report (demo.summary)

A killed run restarts at its first unfinished stage (training from its last checkpoint, evaluation
from its results file); a finished run only rewrites the report from the stage files, so it is
instant and gives the same report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from caspo_jax import files
from caspo_jax.caspo import dataset as dataset_lib
from caspo_jax.caspo import loop
from caspo_jax.config import (CaspoConfig, CaTConfig, DataConfig, DPOConfig, EvalConfig, MeshConfig, OptimConfig,
                              TrainConfig)
from caspo_jax.data import pipeline as data_pipeline
from caspo_jax.data.sources import Problem
from caspo_jax.demo import base, step_eval, summary, world
from caspo_jax.demo.settings import DemoSettings
from caspo_jax.eval import report

Progress = Callable[[str], None]
MODELS = ("base", "caspo", "control")
DECODERS = ("greedy", "sc", "cat")
TRAIN_MESH = MeshConfig(data=-1, fsdp=1, tensor=1)  # a 0.34M model: replicate it, split the batch


def check_writable(out: Path) -> None:
    """A PermissionError naming `out` unless a file can be created in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise PermissionError(f"--out {out} is not a writable folder ({e.strerror or e})") from None


def _check_settings(out: Path, s: DemoSettings) -> None:
    """Writes settings.json, or checks that a resumed run asks for what it started with."""
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != s.to_dict():
            changed = sorted(k for k in old.keys() | s.to_dict().keys() if old.get(k) != s.to_dict().get(k))
            raise ValueError(f"{path}: this folder holds a run with other settings ({', '.join(changed)}); "
                             "use another --out")
    else:
        report.write_json(path, s.to_dict())


def questions(s: DemoSettings) -> tuple[list[Problem], list[Problem]]:
    """(CASPO training questions, held-out questions), from the seed."""
    train = world.problems(np.random.default_rng([s.seed, 2]), s.num_train, heldout=False, prefix="train")
    heldout = world.problems(np.random.default_rng([s.seed, 1]), s.num_heldout, heldout=True, prefix="heldout")
    return train, heldout


def caspo_config(s: DemoSettings, out: Path, policy: Path) -> CaspoConfig:
    return CaspoConfig(
        output_dir=str(out / "caspo"), model=str(policy), rounds=1, seed=s.seed, num_train=s.num_train,
        num_heldout=s.num_heldout, samples_per_question=s.samples_per_question, temperature=s.temperature,
        max_new_tokens=s.max_new_tokens, siblings=s.siblings, sibling_max_new_tokens=s.step_tokens, signal=s.signal,
        step_aggregation=s.aggregation, low_quantile=s.quantile, high_quantile=s.quantile, labeler="verifier",
        train=TrainConfig(
            mode="dpo", batch_size=s.batch_size, epochs=s.epochs, log_every=10, save_every=50, keep_checkpoints=1,
            mesh=TRAIN_MESH, data=DataConfig(max_length=128, shuffle=True, seed=s.seed),
            dpo=DPOConfig(beta=s.dpo_beta, rpo_alpha=s.rpo_alpha), optim=OptimConfig(learning_rate=s.learning_rate,
                                                                                      schedule="constant"),
        ),
        eval=EvalConfig(method="greedy", max_new_tokens=s.max_new_tokens, batch_size=64, seed=s.seed),
    )


def run_caspo(s: DemoSettings, out: Path, policy: Path, train_qs, heldout, progress: Progress) -> dict:
    """One CASPO round (caspo.loop.run_round), or its summary when finished earlier."""
    done = out / "caspo" / "round_1" / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = caspo_config(s, out, policy)
    files.write_text(out / "caspo" / "config.json", json.dumps(cfg.to_dict(), indent=2))
    return loop.run_round(cfg, 1, policy, train_qs, heldout, loop.make_labeler("verifier"), None, progress)


def control_records(round_dir: Path) -> list[dict]:
    """The round's own samples whose every step the verifier passed: {prompt, completion}."""
    samples = {(r["question_id"], r["sample"]): r for r in loop.read_jsonl(round_dir / "samples.jsonl")}
    wrong = {(r["question_id"], r["sample"]) for r in dataset_lib.read_parquet(round_dir / "annotated.parquet")
             if not r["label"]}
    return [{"prompt": r["prompt"], "completion": r["text"]} for key, r in samples.items() if key not in wrong
            and r["text"].strip()]


def run_control(s: DemoSettings, out: Path, policy: Path, caspo_summary: dict, progress: Progress) -> Path:
    """Supervised training on the verified samples, for as many steps of the same batch size and
    learning rate as CASPO's DPO took: what the same budget buys without preferences."""
    model = out / "control" / "train" / "model"
    if model.exists():
        return model
    steps = data_pipeline.steps_per_run(caspo_summary["pairs"]["pairs"], s.batch_size, s.epochs, None)
    records = control_records(out / "caspo" / "round_1")
    if not steps or not records:
        progress(f"[control] nothing to train ({steps} steps, {len(records)} verified samples): the base model")
        return policy
    loop.write_jsonl(out / "control" / "sft.jsonl", records)
    cfg = TrainConfig(
        mode="sft", batch_size=s.batch_size, max_steps=steps, log_every=10, save_every=50, keep_checkpoints=1,
        mesh=TRAIN_MESH, data=DataConfig(max_length=128, add_eos=True, seed=s.seed),
        optim=OptimConfig(learning_rate=s.learning_rate, schedule="constant"),
    )
    began = time.perf_counter()
    from caspo_jax.train import trainer

    trainer.train(cfg, policy, out / "control" / "sft.jsonl", out / "control" / "train", resume=True)
    progress(f"[control] SFT on {len(records)} verified samples, {steps} steps ({time.perf_counter() - began:.0f} s)")
    return model


def eval_config(s: DemoSettings, method: str) -> EvalConfig:
    cat = CaTConfig(width=s.cat_width, branch=s.cat_branch, budget=s.vote_k, tau=s.cat_tau, max_steps=7,
                    step_tokens=s.step_tokens)
    return EvalConfig(method=method, k=s.vote_k, temperature=s.vote_temperature, top_p=1.0,
                      max_new_tokens=s.max_new_tokens, batch_size=32, seed=s.seed, signal=s.signal, cat=cat)


def run_evaluations(s: DemoSettings, out: Path, policies: dict[str, Path], heldout) -> dict:
    """Step-level figures and the three decoders for every model -> {model: {"steps", decoder...}}."""
    from caspo_jax.eval import runner

    results = {}
    for name, policy in policies.items():
        results[name] = {"steps": step_eval.evaluate_steps(
            policy, heldout, out / "steps" / name, k=s.step_eval_samples, temperature=s.temperature,
            max_new_tokens=s.max_new_tokens, signal=s.signal, aggregation=s.aggregation, seed=s.seed + 17,
        )}
        sampler = None
        for method in DECODERS:
            folder = out / "decoders" / name
            if (folder / method / "metrics.json").exists():
                results[name][method] = json.loads((folder / method / "metrics.json").read_text())
                continue
            sampler = sampler or loop.load_sampler(policy)
            runner.evaluate(sampler, heldout, eval_config(s, method), folder, method)
            results[name][method] = json.loads((folder / method / "metrics.json").read_text())
    return results


def copy_model(model: Path, dest: Path) -> Path:
    """An HF model folder's files (config, weights, tokenizer; no checkpoints) copied whole, then renamed."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def run(s: DemoSettings, out: Path, progress: Progress = print) -> dict:
    """Runs or resumes the whole demo into `out`; returns the report (also report.json)."""
    check_writable(out)
    _check_settings(out, s)
    began = time.perf_counter()
    stages = tqdm(total=6, desc="demo", unit="stage", position=0)
    if s.from_scratch:
        recipe = base.BaseRecipe()
        policy = base.train_base(out / "base", s.seed, recipe, TRAIN_MESH, progress)
    else:
        policy = base.SHIPPED
        if not (policy / "config.json").exists():
            raise FileNotFoundError(f"the shipped base model is missing ({policy}/config.json); "
                                    "run `caspo-jax demo --from-scratch`")
    stages.update()
    train_qs, heldout = questions(s)
    caspo_summary = run_caspo(s, out, policy, train_qs, heldout, progress)
    stages.update()
    control = run_control(s, out, policy, caspo_summary, progress)
    stages.update()
    policies = {"base": policy, "caspo": Path(caspo_summary["policy"]), "control": control}
    results = run_evaluations(s, out, policies, heldout)
    stages.update()
    if not (out / "model" / "config.json").exists():
        copy_model(policies["caspo"], out / "model")
    if not (out / "dataset" / "README.md").exists():
        dataset_lib.publish(out / "dataset", [out / "caspo" / "round_1" / "annotated.parquet"], signal=s.signal,
                            aggregation=s.aggregation)
    stages.update()
    result = summary.write(out, s, caspo_summary, results, seconds=time.perf_counter() - began)
    stages.update()
    stages.close()
    return result
