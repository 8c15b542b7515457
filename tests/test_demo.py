"""`caspo-jax demo`: the whole method on the arith world, checked against the verifier and transformers.

Most tests read the `fast_demo_dir` fixture (one `caspo-jax demo --fast --seed 0` per session, see
conftest.py); the resume test works on a copy, so the fixture's folder stays as the run left it.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from caspo_jax.caspo import dataset as dataset_lib
from caspo_jax.cli import main
from caspo_jax.data import arith
from caspo_jax.demo import base, pipeline, step_eval, summary, world
from caspo_jax.demo.settings import settings

pytestmark = pytest.mark.timeout(900)


def _without_seconds(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "seconds"}


def test_world_split_keeps_heldout_questions_out_of_training():
    s = settings(fast=True, seed=0, from_scratch=False)
    train, heldout = pipeline.questions(s)
    sft = world.problems(np.random.default_rng([0, 7]), 2000, heldout=False, prefix="sft")
    held = {q.question for q in heldout}
    assert len(held) == s.num_heldout and all(world.is_heldout(q) for q in held)
    assert not held & {q.question for q in train + sft}
    assert all(str(arith.parse_question(q.question).answer) == q.answer for q in train + heldout)


def test_caspo_makes_step_confidence_more_reliable(fast_demo_dir):
    report = json.loads((fast_demo_dir / "report.json").read_text())
    steps = report["step_level"]
    before, after = steps["base"], steps["caspo"]
    assert report["pairs"]["pairs"] > 0
    assert after["auroc"] > before["auroc"]
    assert after["right_through_wrong_step"] < before["right_through_wrong_step"]
    assert after["reliable_accuracy"] >= before["reliable_accuracy"]
    # Every other figure is reported before and after, for the three models and three decoders.
    for model in ("base", "caspo", "control"):
        assert set(steps[model]) == {k for k, _, _ in summary.STEP_FIGURES}
        for decoder in ("greedy", "sc", "cat"):
            figures = report["decoders"][model][decoder]
            assert 0 <= figures["accuracy"] <= 1 and figures["tokens_per_question"] > 0


@pytest.mark.parametrize("model", ["base", "caspo"])
def test_step_figures_match_the_verifier(fast_demo_dir, model):
    """The step labels are the arith verifier's, and the figures recompute from the labelled steps."""
    folder = fast_demo_dir / "steps" / model
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    rows = dataset_lib.read_parquet(folder / "annotated.parquet")
    for r in rows:
        assert r["label"] == arith.verify_step(arith.parse_question(r["question"]), r["step_index"], r["text"])
    conf = np.array([r["step_confidence"] for r in rows])
    right = np.array([r["label"] for r in rows])
    # AUROC by brute force over all (right, wrong) pairs: the Mann-Whitney definition.
    diff = conf[right][:, None] - conf[~right][None, :]
    brute = float(((diff > 0) + 0.5 * (diff == 0)).mean())
    figures = json.loads((folder / "metrics.json").read_text())
    assert figures["auroc"] == pytest.approx(brute, abs=1e-9)
    assert figures["step_accuracy"] == pytest.approx(right.mean())
    wrong_first = {(r["question_id"], r["sample"]) for r in rows if not r["label"]}
    final = [arith.final_answer(s["text"]) == int(s["reference"]) for s in samples]
    through = [f and (s["question_id"], s["sample"]) in wrong_first for f, s in zip(final, samples)]
    assert figures["right_through_wrong_step"] == pytest.approx(sum(through) / sum(final))
    assert figures["reliable_accuracy"] == pytest.approx((sum(final) - sum(through)) / len(samples))
    assert figures == pytest.approx(step_eval.step_metrics(samples, rows))


def test_outputs_are_where_the_docstring_says(fast_demo_dir):
    for name in ("settings.json", "report.json", "report.md", "accuracy_vs_tokens.png", "model/config.json",
                 "dataset/README.md", "caspo/round_1/pairs.jsonl", "control/train/model/config.json"):
        assert (fast_demo_dir / name).exists(), name
    for model in ("base", "caspo", "control"):
        for name in (f"reliability_{model}.png", f"confidence_hist_{model}.png", f"steps/{model}/metrics.json"):
            assert (fast_demo_dir / name).exists(), name
    assert not list(fast_demo_dir.rglob(".*.tmp*")), "a temp file was left behind"


def test_exported_model_decodes_like_ours_in_transformers(fast_demo_dir):
    """transformers loads the export and, greedily, writes the solutions our greedy decoder wrote."""
    model = transformers.AutoModelForCausalLM.from_pretrained(fast_demo_dir / "model", dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(fast_demo_dir / "model")
    results = [json.loads(line) for line in (fast_demo_dir / "decoders/caspo/greedy/results.jsonl").read_text().splitlines()]
    for record in results[:3]:
        prompt = tok.apply_chat_template([{"role": "user", "content": record["question"]}], add_generation_prompt=True,
                                         tokenize=False)
        assert prompt == f"Q: {record['question']}\n"
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=80, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == record["traces"][0]["text"]


def test_interrupted_run_resumes_to_the_same_report(fast_demo_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(fast_demo_dir, out)
    expected = _without_seconds(json.loads((out / "report.json").read_text()))
    # A crash during self-consistency of the CASPO model, after its first batch was appended:
    sc = out / "decoders" / "caspo" / "sc"
    lines = (sc / "results.jsonl").read_text().splitlines(keepends=True)
    (sc / "results.jsonl").write_text("".join(lines[: pipeline.eval_config(settings(fast=True, seed=0, from_scratch=False), "sc").batch_size]))
    for name in ("metrics.json", "report.md"):
        (sc / name).unlink()
    shutil.rmtree(out / "decoders" / "control" / "cat")
    shutil.rmtree(out / "model")
    (out / "report.json").unlink()
    assert main(["demo", "--fast", "--seed", "0", "--out", str(out)]) == 0
    assert _without_seconds(json.loads((out / "report.json").read_text())) == expected
    assert (out / "model" / "model.safetensors").read_bytes() == (fast_demo_dir / "model" / "model.safetensors").read_bytes()


def test_bad_out_and_changed_settings_exit_2_with_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--fast", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "not a writable folder" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps(settings(fast=True, seed=1, from_scratch=False).to_dict()))
    assert main(["demo", "--fast", "--seed", "0", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "settings.json" in err and "seed" in err


def test_shipped_base_model_is_the_recipe_and_small():
    config = json.loads((base.SHIPPED / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["hidden_size"] == 96
    assert sum(f.stat().st_size for f in base.SHIPPED.iterdir()) < 2 * 2**20
