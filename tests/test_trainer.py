"""The training loop as a user runs it: `caspo-jax dpo`, killed and resumed, diverging, given bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

from caspo_jax.cli import main
from hf_models import save_hf_model, save_tokenizer, write_addition_pairs

ARGS = ["max_steps=40", "save_every=4", "keep_checkpoints=2", "log_every=2", "batch_size=4", "optim.learning_rate=1e-3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    model = save_hf_model("llama", root / "model")
    save_tokenizer(model, "char")
    pairs = write_addition_pairs(root / "pairs.jsonl", 24)
    return model, pairs


def dpo_args(setup, out, *extra):
    model, pairs = setup
    return ["dpo", "--model", str(model), "--pairs", str(pairs), "--out", str(out), *extra]


def finished_checkpoints(out: Path) -> list[int]:
    folder = out / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def test_sigkill_then_resume_gives_the_uninterrupted_params(setup, tmp_path):
    assert main(dpo_args(setup, tmp_path / "straight", *ARGS)) == 0

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "caspo_jax.cli", *dpo_args(setup, killed, *ARGS)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not finished_checkpoints(killed) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert finished_checkpoints(killed) and finished_checkpoints(killed)[-1] < 40 and not (killed / "model").exists()

    assert main(dpo_args(setup, killed, "--resume", *ARGS)) == 0
    # Bit for bit: the same batches, the same compiled step, from exactly the saved state.
    straight = (tmp_path / "straight" / "model" / "model.safetensors").read_bytes()
    assert (killed / "model" / "model.safetensors").read_bytes() == straight
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [m["step"] for m in reference]  # no step logged twice
    assert [m["loss"] for m in lines] == [m["loss"] for m in reference]
    assert set(reference[0]) >= {"loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected",
                                 "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"}  # fmt: skip
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "straight" / "tensorboard").iterdir())
    trained = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "model", dtype=torch.float32)
    original = transformers.AutoModelForCausalLM.from_pretrained(setup[0], dtype=torch.float32)
    assert not torch.equal(trained.lm_head.weight, original.lm_head.weight)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["max_steps=20", "save_every=1", "log_every=1", "batch_size=4", "optim.max_grad_norm=0"]
    assert main(dpo_args(setup, out, *args, "optim.learning_rate=1e30")) == 1  # step 1 sends weights to 1e30
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith("caspo-jax dpo: error: loss is nan and grad_norm is nan at step 2; stopped.")
    assert err.endswith(f"The last good checkpoint: step 1 in {out / 'checkpoints'}")
    assert finished_checkpoints(out) == [1] and not (out / "model").exists()


def test_user_errors_exit_2_and_lose_nothing(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(dpo_args(setup, out, "max_steps=2", "save_every=2", "batch_size=4")) == 0
    saved = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert main(dpo_args(setup, out, "max_steps=2")) == 2  # the run exists: --resume or another --out
    assert "already holds checkpoints up to step 2" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(setup[1].read_bytes() + b'{"prompt": "p", "chosen": "c"}\n')
    model, _ = setup
    assert main(["dpo", "--model", str(model), "--pairs", str(bad), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    expected = "missing field 'rejected' (expected prompt, chosen, rejected, optionally weight)"
    assert err == f"caspo-jax dpo: error: {bad}:25: {expected}\n"

    assert main(dpo_args(setup, tmp_path / "other", "data.max_length=8", "data.truncation=error")) == 2
    assert "pairs.jsonl:1: prompt + completion is" in capsys.readouterr().err
    assert main(dpo_args(setup, tmp_path / "other", "dpo.loss_type=kto")) == 2
    assert "dpo.loss_type: expected one of" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == saved
