"""`caspo-jax export` as a user runs it: a real DPO run's checkpoint -> an HF folder that transformers loads.

The oracle is transformers' PyTorch model (eager, fp32) on the exported folder, compared with our
forward on the params that the trainer's own resume path reads back from the same checkpoint step.
"""

import json
import random
import shutil
import struct
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest
import torch
import transformers
import yaml

from caspo_jax.cli import main
from caspo_jax.config import TrainConfig, apply_overrides, from_dict
from caspo_jax.model import qwen
from caspo_jax.model.hf_config import read_config
from caspo_jax.parallel import mesh as mesh_lib
from caspo_jax.train import optim
from caspo_jax.train import state as state_lib
from caspo_jax.train.checkpoint import Checkpointer
from hf_models import save_hf_model, save_tokenizer, torch_logits

TRAIN = ["max_steps=3", "save_every=2", "keep_checkpoints=3", "log_every=1", "batch_size=4", "optim.learning_rate=1e-2"]
TOKENS = np.arange(3, 27, dtype=np.int32).reshape(2, 12)  # [2, 12] token ids


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(base model folder, run folder) of a 3-step DPO run on a tiny random Qwen3: checkpoints at steps 2, 3."""
    root = tmp_path_factory.mktemp("export")
    base = save_tokenizer(save_hf_model("qwen3", root / "base"), "char")
    rng = random.Random(0)
    rows = []
    for _ in range(8):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": f"{a} + {b} = ", "chosen": f"{a + b}\n\n", "rejected": f"{a + b + 1}\n\n"})
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "run"
    assert main(["dpo", "--model", str(base), "--pairs", str(pairs), "--out", str(out), *TRAIN]) == 0
    return base, out


def our_logits(base, run_dir, step: int) -> np.ndarray:
    """[2, 12, V] f32: our forward on the params of `step`, restored as the trainer resumes (whole state)."""
    config = from_dict(TrainConfig, apply_overrides({"mode": "dpo"}, TRAIN))
    model = read_config(base)
    tx = optim.optimizer(config.optim, config.max_steps)
    shardings = state_lib.state_shardings(model, tx, mesh_lib.make_mesh(config.mesh))
    with Checkpointer(run_dir / "checkpoints", config.keep_checkpoints) as checkpoints:
        state, _, _ = checkpoints.restore(step, state_lib.abstract_state(model, tx, shardings).as_dict())
    return np.asarray(jax.jit(qwen.forward, static_argnums=1)(state["params"], model, TOKENS))


def hf_logits(path) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    return torch_logits(model.eval(), TOKENS)


def safetensors_dtypes(path) -> set[str]:
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def front_matter(card: str) -> tuple[dict, dict]:
    """(YAML front matter, the training config from the card's ```yaml block)."""
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])


def test_export_of_the_latest_step_matches_transformers_and_the_trained_weights(run, tmp_path):
    base, run_dir = run
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(out)]) == 0  # the run folder: latest step

    theirs = hf_logits(out)
    np.testing.assert_allclose(our_logits(base, run_dir, 3), theirs, atol=1e-4, rtol=0)
    assert np.abs(hf_logits(base) - theirs).max() > 1e-2  # the trained weights, not the base model's
    # The trainer's own end-of-run export holds the same (last step's) weights.
    np.testing.assert_array_equal(hf_logits(run_dir / "model"), theirs)

    assert safetensors_dtypes(out / "model.safetensors") == {"F32"}
    tokenizer, original = (transformers.AutoTokenizer.from_pretrained(p) for p in (out, base))
    assert tokenizer("7 + 8 = 15\n\n")["input_ids"] == original("7 + 8 = 15\n\n")["input_ids"]

    meta, train_config = front_matter((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and {"caspo", "dpo"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local folder is not a Hub id
    assert train_config["mode"] == "dpo" and train_config["optim"]["learning_rate"] == 0.01
    assert train_config == from_dict(TrainConfig, apply_overrides({"mode": "dpo"}, TRAIN)).to_dict()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_export_of_an_earlier_step_in_bf16(run, tmp_path):
    base, run_dir = run
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    step2 = run_dir / "checkpoints" / "2"
    assert main(["export", "--checkpoint", str(step2), "--out", str(fp32)]) == 0
    assert main(["export", "--checkpoint", str(run_dir), "--step", "2", "--out", str(bf16), "--dtype", "bf16",
                 "--base-model", "Qwen/Qwen3-0.6B"]) == 0  # fmt: skip

    exact = hf_logits(fp32)
    np.testing.assert_allclose(our_logits(base, run_dir, 2), exact, atol=1e-4, rtol=0)
    assert np.abs(hf_logits(run_dir / "model") - exact).max() > 1e-3  # step 2, not the last step

    assert safetensors_dtypes(bf16 / "model.safetensors") == {"BF16"}
    assert json.loads((bf16 / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # The bf16 weights are the fp32 ones rounded to nearest: transformers' own rounding gives the same model.
    rounded = transformers.AutoModelForCausalLM.from_pretrained(fp32, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():  # the weights only (buffers such as RoPE's inv_freq stay fp32)
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    np.testing.assert_allclose(hf_logits(bf16), torch_logits(rounded.eval(), TOKENS), atol=1e-5, rtol=0)
    assert np.abs(hf_logits(bf16) - exact).max() < 0.05 * np.abs(exact).max()

    meta, _ = front_matter((bf16 / "README.md").read_text())
    assert meta["base_model"] == "Qwen/Qwen3-0.6B"


def test_bad_input_exits_2_with_a_message_and_keeps_the_target(run, tmp_path, capsys):
    base, run_dir = run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def fails(*args) -> str:
        assert main(["export", "--out", str(out), *args]) == 2
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert "no checkpoint steps" in fails("--checkpoint", str(tmp_path / "empty"))
    assert "no such checkpoint folder" in fails("--checkpoint", str(tmp_path / "missing"))
    err = fails("--checkpoint", str(run_dir), "--step", "1")
    assert f"{run_dir / 'checkpoints'}: no checkpoint of step 1; it holds steps 2, 3" in err

    copied = tmp_path / "copied"  # checkpoints moved away from their run folder: no run.json
    shutil.copytree(run_dir / "checkpoints", copied / "checkpoints")
    err = fails("--checkpoint", str(copied))
    assert f"{copied / 'run.json'} not found" in err and "pass --model DIR" in err
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(base / "config.json", no_tokenizer / "config.json")
    assert f"{no_tokenizer}: no tokenizer files" in fails("--checkpoint", str(copied), "--model", str(no_tokenizer))
    assert f"{tmp_path / 'config.json'} not found" in fails("--checkpoint", str(copied), "--model", str(tmp_path))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    assert main(["export", "--checkpoint", str(copied), "--model", str(base), "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()  # replaced whole


class FakeHub:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, kwargs, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        FakeHub.calls.append(("upload_folder", repo_id, kwargs, files))


def test_push_to_hub_uploads_the_exported_folder(run, tmp_path, monkeypatch, capsys):
    _, run_dir = run
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(FakeHub, "calls", [])

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "a"), "--push-to-hub", "me/m"]) == 2
    assert "no Hugging Face token found" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and FakeHub.calls == []  # checked before any work

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "a"), "--push-to-hub", "m"]) == 2
    assert "expected a repo id of the form owner/name" in capsys.readouterr().err

    out = tmp_path / "tiny-caspo"
    args = ["export", "--checkpoint", str(run_dir), "--out", str(out), "--push-to-hub", "me/tiny-caspo", "--private"]
    assert main(args) == 0
    assert "pushed" in capsys.readouterr().out
    (create, repo, kwargs, token), (upload, repo2, upload_kwargs, uploaded) = FakeHub.calls
    assert (create, repo, token) == ("create_repo", "me/tiny-caspo", "hf_test")
    assert kwargs["exist_ok"] and kwargs["private"]
    assert (upload, repo2, upload_kwargs["repo_type"]) == ("upload_folder", "me/tiny-caspo", "model")
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(uploaded)
    assert 'from_pretrained("me/tiny-caspo")' in (out / "README.md").read_text()  # the card names the repo

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(FakeHub, "create_repo", offline)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--push-to-hub me/tiny-caspo: the upload failed (Network is unreachable)" in err
    assert f"the export is kept in {out}" in err and (out / "model.safetensors").exists()
