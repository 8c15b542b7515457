"""CASPO's rounds end to end through `caspo-jax caspo`: stages, resume after a kill, bad input.

Runs go through the CLI in subprocesses on one CPU device (the tests' 8 fake devices would only slow
a tiny model down). The warm-up of the tiny arith model is paid once: later runs start from it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caspo_jax.config import CaspoConfig, from_dict, load_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "caspo_tiny_cpu.yaml"
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def command(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "caspo_jax.cli", "caspo", "--config", str(CONFIG), f"output_dir={out}", *overrides]


def run_cli(out: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, *overrides), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted two-round run of the tiny config (warm-up included)."""
    out = tmp_path_factory.mktemp("caspo") / "reference"
    result = run_cli(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def eval_numbers(out: Path, r: int) -> dict:
    summary = json.loads((out / f"round_{r}" / "summary.json").read_text())["eval"]
    return {k: v for k, v in summary.items() if "second" not in k and "latency" not in k and "per_s" not in k}


def model_tensors(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_two_rounds_write_every_stage(reference):
    import datasets

    for r in (1, 2):
        folder = reference / f"round_{r}"
        for name in ("samples.jsonl", "annotated.parquet", "pairs.jsonl", "pairs_stats.json", "summary.json"):
            assert (folder / name).exists(), (r, name)
        stats = json.loads((folder / "pairs_stats.json").read_text())
        pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        assert stats["pairs"] == len(pairs) > 0
        assert all(p["kind"] in ("correct_unsure", "confident_wrong") and p["chosen"] != p["rejected"] for p in pairs)
        assert (folder / "train" / "model" / "config.json").exists()
        assert any((folder / "train" / "checkpoints").iterdir())
        assert (folder / "eval" / "results.jsonl").exists()
        assert 0.0 <= eval_numbers(reference, r)["accuracy"] <= 1.0
    # round 2 samples from round 1's trained policy
    assert json.loads((reference / "round_1" / "summary.json").read_text())["policy"].endswith("round_1/train/model")
    ds = datasets.load_dataset("parquet", data_files=str(reference / "dataset" / "data" / "*.parquet"))["train"]
    assert sorted(set(ds["round"])) == [1, 2]
    assert (reference / "dataset" / "README.md").read_text().startswith("---")
    assert len(json.loads((reference / "summary.json").read_text())["rounds"]) == 2


def test_killed_in_round_two_reruns_to_the_same_result(reference, tmp_path):
    out = tmp_path / "killed"
    warm = reference / "init" / "warmup" / "model"
    proc = subprocess.Popen(command(out, f"model={warm}"), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    while not (out / "round_2" / "pairs.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before round 2 started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "round_2" / "summary.json").exists()

    result = run_cli(out, f"model={warm}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[round 1/2] finished earlier" in result.stdout
    for r in (1, 2):
        for name in ("samples.jsonl", "pairs.jsonl"):
            assert (out / f"round_{r}" / name).read_text() == (reference / f"round_{r}" / name).read_text(), (r, name)
        assert eval_numbers(out, r) == eval_numbers(reference, r)
    got, want = model_tensors(out / "round_2" / "train" / "model"), model_tensors(reference / "round_2" / "train" / "model")
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_zero_pairs_stops_with_a_message(tmp_path):
    out = tmp_path / "nopairs"
    result = run_cli(out, "warmup_sft_steps=0", "low_quantile=null", "high_quantile=null", "tau_low=0.0",
                     "tau_high=2.0", "num_train=2", "num_heldout=1", "samples_per_question=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no pairs" in result.stdout
    summary = json.loads((out / "round_1" / "summary.json").read_text())
    assert summary["trained"] is False and summary["pairs"]["pairs"] == 0
    assert (out / "round_1" / "eval" / "results.jsonl").exists()
    assert not (out / "round_2").exists()


def test_judge_that_cannot_load_is_one_line_exit_2(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "1 + 1", "answer": "2"}\n')
    result = run_cli(tmp_path / "judge", "labeler=judge", f"judge_model={tmp_path / 'missing'}", "data=jsonl",
                     f"data_path={tmp_path / 'q.jsonl'}", "num_heldout=0", timeout=120)
    assert result.returncode == 2
    assert "judge model" in result.stderr and "could not be loaded" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_training_questions_without_answers_are_rejected(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "1 + 1", "answer": "2"}\n{"question": "2 + 2"}\n')
    result = run_cli(tmp_path / "out", "labeler=outcome", "data=jsonl", f"data_path={data}", "num_heldout=0", timeout=120)
    assert result.returncode == 2
    assert str(data) in result.stderr and "answer" in result.stderr


@pytest.mark.parametrize("overrides, message", [
    ({"labeler": "judge"}, "judge_model"),
    ({"labeler": "verifier", "data": "jsonl", "data_path": "x.jsonl"}, "verifier"),
    ({"low_quantile": 0.3}, "high_quantile"),
    ({"train": {"mode": "sft"}}, "dpo"),
    ({"rounds": 0}, "rounds"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        from_dict(CaspoConfig, overrides)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("caspo_*.yaml")))
def test_shipped_configs_load(path):
    cfg = from_dict(CaspoConfig, load_yaml(path))
    assert cfg.rounds >= 1 and cfg.train.mode == "dpo"
