"""Multi-host correctness, simulated: N processes on localhost (jax.distributed + CPU gloo collectives).

Every job holds 8 fake CPU devices in all (1 x 8, 2 x 4, 4 x 2) on the mesh (data 2, fsdp 2, tensor 2),
so the arrays and their layout are the same and the single-process run is the reference: DPO losses,
the restored-then-trained params, sampled tokens and their log-probs must match it. Each worker
(tests/multiprocess_worker.py) goes through the package's real entry points; every step blocks on
the host, and every process is killed when the job overruns its timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from caspo_jax.data import pipeline
from hf_models import save_hf_model, save_tokenizer, write_addition_pairs

WORKER = Path(__file__).with_name("multiprocess_worker.py")
TOTAL_DEVICES = 8
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("multiprocess")
    model = save_hf_model("qwen3", root / "model")
    save_tokenizer(model, "char")
    pairs = write_addition_pairs(root / "pairs.jsonl", 8)
    return {"model": str(model), "pairs": str(pairs)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_job(inputs: dict[str, str], work: Path, num_processes: int) -> list[dict]:
    """Runs the worker as `num_processes` processes sharing `work`; returns each one's result, by process."""
    work.mkdir(parents=True)
    spec = work / "spec.json"
    spec.write_text(json.dumps({**inputs, "mesh": MESH, "work": str(work), "result": str(work / "result")}))
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    base |= {
        "JAX_PLATFORMS": "cpu",
        # Less LLVM optimisation: compiling dominates these tiny programs (every job uses the same flags).
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={TOTAL_DEVICES // num_processes} "
        "--xla_backend_optimization_level=0",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    if num_processes > 1:
        base |= {"JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}", "JAX_NUM_PROCESSES": str(num_processes)}
    processes, logs = [], []
    try:
        for i in range(num_processes):
            env = base | ({"JAX_PROCESS_ID": str(i)} if num_processes > 1 else {})
            logs.append(open(work / f"log.p{i}.txt", "w"))
            command = [sys.executable, str(WORKER), str(spec)]
            processes.append(subprocess.Popen(command, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break  # one failed: the others would wait on it forever
            time.sleep(0.2)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in logs:
            f.close()
    codes = [p.returncode for p in processes]
    if codes != [0] * num_processes:
        tails = "\n".join(f"--- process {i} (exit {c}):\n" + (work / f"log.p{i}.txt").read_text()[-3000:]
                          for i, c in enumerate(codes))  # fmt: skip
        pytest.fail(f"{num_processes}-process job failed or timed out after {JOB_TIMEOUT_S} s:\n{tails}")
    return [json.loads((work / f"result.p{i}.json").read_text()) for i in range(num_processes)]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("reference") / "job"
    (result,) = run_job(inputs, work, 1)
    return result, work


@pytest.mark.timeout(2 * JOB_TIMEOUT_S + 60)
@pytest.mark.parametrize("num_processes", [2, 4])
def test_multi_process_job_matches_the_single_process_run(inputs, reference, tmp_path, num_processes):
    expected, reference_work = reference
    work = tmp_path / "job"
    results = run_job(inputs, work, num_processes)

    assert [r["process"] for r in results] == list(range(num_processes))
    for r in results:
        assert r["process_count"] == num_processes and r["device_count"] == TOTAL_DEVICES
        assert r["local_device_count"] == TOTAL_DEVICES // num_processes
        # DPO: the step's loss and gradient norm over the global batch, as in one process.
        assert r["train"]["step"] == 1
        for name in ("loss", "grad_norm"):
            np.testing.assert_allclose(r["train"][name], expected["train"][name], rtol=2e-5, err_msg=name)
        # Checkpoint: step 1 restored onto the mesh holds exactly the exported params, and the same
        # optimizer moments and data-iterator state as the single-process checkpoint.
        assert r["restored_step"] == 1 and r["restored_vs_export"] == 0.0 and r["restored_config_steps"] == 1
        assert r["restored_data_state"] == expected["restored_data_state"]
        np.testing.assert_allclose(r["moment_norms"], expected["moment_norms"], rtol=2e-5)
        # Sampling: every process sees all rows, the same ones the single process sampled.
        assert r["tokens"] == expected["tokens"] and r["lengths"] == expected["lengths"]
        np.testing.assert_allclose(r["logprobs"], expected["logprobs"], atol=2e-5)
        assert r["eval_tokens"] == expected["eval_tokens"]

    # The exported model holds the single-process params, and training moved them.
    got = load_file(work / "train" / "model" / "model.safetensors")
    want = load_file(reference_work / "train" / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    original = load_file(Path(inputs["model"]) / "model.safetensors")
    assert any(not np.array_equal(want[k], original[k]) for k in want)

    # Only process 0 writes: one metrics line, and the report only in process 0's folder, complete.
    assert len((work / "train" / "metrics.jsonl").read_text().splitlines()) == 1
    report = sorted(p.name for p in (reference_work / "reports" / "p0" / "toy").iterdir())
    assert {"results.jsonl", "metrics.json", "report.md"} <= set(report)
    assert sorted(p.name for p in (work / "reports" / "p0" / "toy").iterdir()) == report
    assert [p.name for p in (work / "reports").iterdir()] == ["p0"]


@pytest.mark.parametrize("process_count", [2, 4])
def test_grain_batches_are_split_by_process_without_overlap(process_count):
    examples = [
        {"prompt": np.arange(1, 3 + i % 5, dtype=np.int32), "chosen": np.full(2 + i % 3, i, np.int32),
         "rejected": np.full(1 + i % 2, 100 + i, np.int32), "weight": np.float32(1),
         "ref_chosen_logps": np.float32(0), "ref_rejected_logps": np.float32(0)}
        for i in range(20)
    ]  # fmt: skip
    whole = pipeline.dataset(examples, 8, shuffle=True, seed=3)
    parts = [
        pipeline.dataset(examples, 8, shuffle=True, seed=3, process_index=i, process_count=process_count)
        for i in range(process_count)
    ]
    assert len(whole) == 3 and all(len(p) == len(whole) for p in parts)
    for step in range(len(whole)):
        full = whole[step]
        local = [p[step] for p in parts]
        assert all(len(b["tokens"]) == 8 // process_count for b in local)
        for key in full:  # the processes' rows, stacked in process order, are the global batch exactly
            np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), full[key], err_msg=key)
    # Every example appears exactly once in an epoch's real (non-filler) rows, across all processes.
    seen = [tuple(row[row > 0][-3:]) for p in parts for step in range(len(p)) for row, w in
            zip(p[step]["targets"], p[step]["weights"]) if w > 0]  # fmt: skip
    assert len(seen) == len(examples) == len(set(seen))


def test_process_settings_come_from_the_environment(monkeypatch):
    from caspo_jax.parallel import mesh as mesh_lib

    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert mesh_lib._process_settings() == {"num_processes": 4, "process_id": 3}
    monkeypatch.delenv("JAX_PROCESS_ID")  # left to JAX's cluster detection
    assert mesh_lib._process_settings() == {"num_processes": 4}
    monkeypatch.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID: expected an integer, got 'first'"):
        mesh_lib._process_settings()
