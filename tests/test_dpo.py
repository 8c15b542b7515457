"""The DPO engine against independent references: transformers' log-probs, TRL's DPOTrainer (stored
golden values from tests/trl_golden.py), a single device, and an unaccumulated batch."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

import trl_golden
from caspo_jax.config import DataConfig, MeshConfig, TrainConfig, apply_overrides, from_dict
from caspo_jax.data import pairs_io, pipeline
from caspo_jax.model import hf
from caspo_jax.model.tokenizer import load_tokenizer
from caspo_jax.parallel import mesh as mesh_lib
from caspo_jax.train import dpo, optim, trainer
from caspo_jax.train import state as state_lib

GOLDEN = json.loads((Path(__file__).parent / "data" / "trl_golden.json").read_text())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = trl_golden.make_model(tmp_path_factory.mktemp("golden") / "model")
    assert trl_golden.model_checksum(folder) == pytest.approx(GOLDEN["model"]["checksum"], rel=1e-9), (
        "tests/hf_models.py changed the tiny model: regenerate tests/data/trl_golden.json with tests/trl_golden.py"
    )
    return folder


def pair_file(tmp_path: Path, name: str, weights=None) -> Path:
    rows = [dict(r) for r in GOLDEN["pair_sets"][name]]
    for row, w in zip(rows, weights or [1.0] * len(rows)):
        row["weight"] = w
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def packed_batch(model_dir: Path, path: Path, data: DataConfig = DataConfig(add_eos=True)):
    examples, _ = pipeline.tokenize(pairs_io.read_records(path), load_tokenizer(model_dir), data)
    ref = np.arange(len(examples), dtype=np.float32)
    return examples, pipeline.pack(pipeline.with_reference(examples, -10 - ref, -20 - ref), len(examples))


def test_packed_logps_equal_transformers_per_sequence(model_dir, tmp_path):
    examples, batch = packed_batch(model_dir, pair_file(tmp_path, "varied"))
    config, params = hf.load(model_dir)
    fn = jax.jit(dpo.sequence_logps, static_argnums=(1, 3))
    ours = fn(params, config, batch, 7)  # 7: several chunks, the last one padded
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for i, ex in enumerate(examples):
        for side, got in (("chosen", ours.chosen[i]), ("rejected", ours.rejected[i])):
            ids = torch.as_tensor(np.concatenate([ex["prompt"], ex[side]]))[None]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            n = len(ex[side])
            expected = logp[-n:].gather(-1, ids[0, -n:, None]).sum().item()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ours.chosen_tokens, [len(e["chosen"]) for e in examples])
    whole = fn(params, config, batch, 64)  # one chunk
    np.testing.assert_allclose(whole.rejected, ours.rejected, rtol=1e-6)
    bf16 = fn(params, config.replace(dtype="bfloat16"), batch, 64)  # bf16 compute, fp32 params and logits
    np.testing.assert_allclose(bf16.chosen, ours.chosen, rtol=2e-2)


CASES = [(case["name"], case) for case in GOLDEN["cases"]]
LIVE = {**GOLDEN["cases"][0], "overrides": GOLDEN["cases"][0]["overrides"] + ["dpo.reference=live"]}
CASES.append(("sigmoid-live-reference", LIVE))  # a frozen reference model in the step: the same numbers


@pytest.mark.parametrize("name,case", CASES, ids=[name for name, _ in CASES])
def test_two_steps_match_trl(model_dir, tmp_path, name, case):
    config = from_dict(TrainConfig, apply_overrides({}, case["overrides"]))
    trainer.train(config, model_dir, pair_file(tmp_path, case["pairs"]), tmp_path / "run")
    if config.dpo.reference == "precomputed":
        ref = np.load(tmp_path / "run" / "reference_logps.npz")
        np.testing.assert_allclose(ref["chosen"], case["ref_chosen_logps"], rtol=1e-5)
        np.testing.assert_allclose(ref["rejected"], case["ref_rejected_logps"], rtol=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    for step, (ours, theirs) in enumerate(zip(logged, case["steps"]), start=1):
        for metric, expected in theirs.items():
            if metric == "rewards/accuracies" and step == 1:
                continue  # policy == reference: every reward is 0 up to rounding, a tie either way
            np.testing.assert_allclose(ours[metric], expected, rtol=2e-5, atol=2e-5, err_msg=f"step {step} {metric}")


def one_step(model_dir, batch, mesh, overrides):
    config = from_dict(TrainConfig, apply_overrides({}, ["batch_size=8", "optim.learning_rate=1e-4", *overrides]))
    model_config, params = hf.load(model_dir, mesh=mesh)
    tx = optim.optimizer(config.optim, 10)
    shardings = state_lib.state_shardings(model_config, tx, mesh)
    step = state_lib.make_train_step(model_config, config, tx, 10, shardings, mesh)
    state, metrics = step(state_lib.init_state(params, tx, shardings), jax.device_put(batch))
    jax.block_until_ready(state)
    return jax.device_get(state.params), jax.device_get(metrics)


def test_sharded_step_equals_single_device_and_accumulation_equals_full_batch(model_dir, tmp_path):
    weights = [1.0, 0.5, 2.0, 0.0, 1.0, 3.0, 1.0, 0.25]
    _, batch = packed_batch(model_dir, pair_file(tmp_path, "varied", weights))
    single = one_step(model_dir, batch, mesh_lib.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]), [])
    sharded = one_step(model_dir, batch, mesh_lib.make_mesh(MeshConfig(2, 2, 2)), [])
    accumulated = one_step(model_dir, batch, mesh_lib.make_mesh(MeshConfig(2, 2, 2)), ["grad_accum=4"])
    for other in (sharded, accumulated):
        assert other[1].keys() == single[1].keys()
        for name in single[1]:
            np.testing.assert_allclose(other[1][name], single[1][name], rtol=1e-5, atol=1e-6, err_msg=name)
        for a, b in zip(jax.tree.leaves(other[0]), jax.tree.leaves(single[0])):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert single[1]["grad_norm"] > 0 and single[1]["learning_rate"] == pytest.approx(1e-4)


def test_sft_loss_is_the_weighted_token_mean_nll(model_dir, tmp_path):
    rows = [{"prompt": r["prompt"], "completion": r["chosen"], "weight": w}
            for r, w in zip(GOLDEN["pair_sets"]["varied"], [1, 2, 1, 0.5, 1, 1, 3, 1])]  # fmt: skip
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = from_dict(TrainConfig, apply_overrides({}, ["mode=sft", "batch_size=8", "max_steps=1", "log_every=1"]))
    trainer.train(config, model_dir, path, tmp_path / "run")
    loss = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["loss"]

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0.0
    for row in rows:
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        ids = torch.as_tensor(tok(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        total += row["weight"] * -logp[len(prompt) - 1 :].sum().item()
        count += row["weight"] * (ids.shape[1] - len(prompt))
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
