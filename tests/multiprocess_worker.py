"""One process of the simulated multi-host job that tests/test_multiprocess.py starts N times.

    python tests/multiprocess_worker.py SPEC.json

The environment says who this process is (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID,
read by `caspo_jax.parallel.mesh.initialize_distributed`; none of them in the single-process reference)
and XLA_FLAGS how many fake CPU devices it holds. Through the package's own code paths it runs:
  1. DPO: trainer.train for one step (reference log-probs, the jitted step, an Orbax checkpoint, the
     HF export by process 0);
  2. checkpoint restore: the step-1 checkpoint read back onto the mesh with `Checkpointer.restore`;
  3. sampling: the exported model, loaded onto the mesh, sampled at temperature 1 by `Sampler`;
  4. an evaluation (eval.runner.evaluate, the same decode) reported into reports/p{process}: only
     process 0 may write.
It writes what it saw to SPEC["result"] + ".p{process}.json" for the test to compare with the reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from caspo_jax.parallel import mesh as mesh_lib

mesh_lib.initialize_distributed()  # before anything touches devices

import jax  # noqa: E402
import numpy as np  # noqa: E402

from caspo_jax.config import EvalConfig, MeshConfig, OptimConfig, TrainConfig  # noqa: E402
from caspo_jax.data import prompts as prompts_lib  # noqa: E402
from caspo_jax.data.sources import Problem  # noqa: E402
from caspo_jax.eval.runner import evaluate  # noqa: E402
from caspo_jax.infer.sampler import Sampler, SamplingConfig  # noqa: E402
from caspo_jax.model import hf  # noqa: E402
from caspo_jax.model import tokenizer as tokenizer_lib  # noqa: E402
from caspo_jax.train import optim, trainer  # noqa: E402
from caspo_jax.train import state as state_lib  # noqa: E402
from caspo_jax.train.checkpoint import Checkpointer  # noqa: E402

PROBLEMS = [Problem("a", "What is 3 + 4?", "7"), Problem("b", "What is 2 + 2?", "4")]


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    process = jax.process_index()
    mesh_config = MeshConfig(**spec["mesh"])
    config = TrainConfig(
        batch_size=8, max_steps=1, save_every=1, log_every=1, mesh=mesh_config,
        optim=OptimConfig(learning_rate=1e-2, schedule="constant"),
    )  # fmt: skip
    trained = trainer.train(config, spec["model"], spec["pairs"], work / "train")

    mesh = mesh_lib.make_mesh(mesh_config)
    model_config, params = hf.load(work / "train" / "model", mesh=mesh)
    tx = optim.optimizer(config.optim, 1)
    target = state_lib.abstract_state(model_config, tx, state_lib.state_shardings(model_config, tx, mesh))
    with Checkpointer(work / "train" / "checkpoints", config.keep_checkpoints) as checkpoints:
        restored, data_state, saved_config = checkpoints.restore(1, target.as_dict())
    restored_params = jax.tree.leaves(restored["params"])
    export_diff = max(
        float(np.max(np.abs(mesh_lib.to_host(a) - mesh_lib.to_host(b))))
        for a, b in zip(restored_params, jax.tree.leaves(params), strict=True)
    )
    moments = [mesh_lib.to_host(x) for x in jax.tree.leaves(restored["opt_state"]) if np.ndim(x) > 0]

    tokenizer = tokenizer_lib.load_tokenizer(work / "train" / "model")
    sampler = Sampler(model_config, params, tokenizer, mesh=mesh, max_length=256)
    eval_config = EvalConfig(method="sc", k=2, temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=2, chat=False)
    prompt_ids = tokenizer_lib.encode(tokenizer, [prompts_lib.build_prompt(p.question) for p in PROBLEMS])
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1.0)  # as the 'sc' decoder asks
    out = jax.block_until_ready(sampler.generate(prompt_ids, sampling, num_samples=2, seed=eval_config.seed))
    metrics = evaluate(sampler, PROBLEMS, eval_config, work / "reports" / f"p{process}", "toy", progress=False)

    result = {
        "process": process,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "train": {k: trained[k] for k in ("step", "loss", "grad_norm")},
        "restored_step": int(mesh_lib.to_host(restored["step"])),
        "restored_vs_export": export_diff,
        "restored_data_state": data_state,
        "restored_config_steps": saved_config["max_steps"],
        "moment_norms": [float(np.linalg.norm(m)) for m in moments],
        "tokens": np.asarray(out.tokens).tolist(),
        "lengths": np.asarray(out.lengths).tolist(),
        "logprobs": np.asarray(out.logprobs).tolist(),
        "eval_tokens": metrics["tokens"]["mean"],
    }
    Path(f"{spec['result']}.p{process}.json").write_text(json.dumps(result))
    mesh_lib.sync("worker done")  # nobody leaves while another still needs the coordinator


if __name__ == "__main__":
    main(sys.argv[1])
