"""`caspo-jax eval` end to end on a tiny model: report files, resumption after a crash, bad input."""

import json

import numpy as np
import pytest

from caspo_jax.cli import main
from caspo_jax.config import EvalConfig
from caspo_jax.data import grading, sources
from caspo_jax.eval import decoders, runner
from caspo_jax.infer.sampler import Sampler
from caspo_jax.model import hf
from caspo_jax.model import tokenizer as tokenizer_lib
from hf_models import save_hf_model, save_tokenizer

QUESTIONS = [("What is 2 + 3?", "5"), ("What is 7 * 6?", "42"), ("Is 9 odd?", "yes"),
             ("What is 1/2 + 1/4?", "\\frac{3}{4}"), ("What is 10 - 3?", "7")]


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = save_hf_model("qwen3", tmp_path_factory.mktemp("eval") / "model")
    save_tokenizer(path, "char")
    return path


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in QUESTIONS))
    return path


def test_eval_writes_report_and_grades_consistently(model_dir, data_file, tmp_path):
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--data", str(data_file), "--question-field", "q",
            "--answer-field", "a", "--method", "sc", "--k", "2", "--max-new-tokens", "24", "--batch-size", "2",
            "--out", str(out)]
    assert main(args) == 0
    folder = out / "questions"
    for name in ("results.jsonl", "metrics.json", "report.md", "reliability.png", "confidence_hist.png", "accuracy_vs_tokens.png"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in records] == [a for _, a in QUESTIONS]
    for r in records:
        assert len(r["traces"]) == 2 and r["tokens"] == sum(t["tokens"] for t in r["traces"]) <= 48
        for t in r["traces"]:  # each trace graded independently of our pipeline: extract + grade
            assert t["correct"] == grading.grade(t["text"], r["reference"]) or t["answer"] is None
            assert 0.0 <= t["confidence"] <= 1.0
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["questions"] == 5
    assert summary["accuracy"] == np.mean([r["correct"] for r in records])
    assert json.loads((out / "summary.json").read_text())["rows"][0]["questions"] == 5


def test_interrupted_run_resumes_without_redoing_graded_answers(model_dir, data_file, tmp_path, monkeypatch):
    config, params = hf.load(model_dir)
    sampler = Sampler(config, params, tokenizer_lib.load_tokenizer(model_dir))
    problems = sources.load_jsonl_problems(data_file, "q", "a")
    cfg = EvalConfig(method="greedy", k=1, max_new_tokens=16, batch_size=2)

    reference = runner.evaluate(sampler, problems, cfg, tmp_path / "clean", "q", progress=False)

    calls, crash_at = [], [2]
    real = decoders.METHODS["greedy"]

    def crashing(sampler, prompts, cfg, pieces):
        calls.append(len(prompts))
        if len(calls) in crash_at:
            crash_at.clear()
            raise Crash  # the process dies during the second batch
        return real(sampler, prompts, cfg, pieces)

    monkeypatch.setitem(decoders.METHODS, "greedy", crashing)
    with pytest.raises(Crash):
        runner.evaluate(sampler, problems, cfg, tmp_path / "crash", "q", progress=False)
    results = tmp_path / "crash" / "q" / runner.RESULTS
    assert len(results.read_text().splitlines()) == 2
    with open(results, "a") as f:
        f.write('{"id": "torn')  # a line cut short by the crash

    calls.clear()
    resumed = runner.evaluate(sampler, problems, cfg, tmp_path / "crash", "q", progress=False)
    assert calls == [2, 1]  # only the three questions not yet graded are decoded
    assert len(results.read_text().splitlines()) == 5
    for key in ("accuracy", "ece", "brier", "auroc", "questions"):
        assert resumed[key] == reference[key]
    assert resumed["tokens"] == reference["tokens"]


def test_bad_input(model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--benchmarks", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval", "--model", str(model_dir), "--data", str(empty), "--out", str(tmp_path)]) == 2
    assert "empty.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    assert main(["eval", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "answer" in err


def test_unparsable_output_grades_false():
    trace = decoders.score_trace("no answer here at all", np.array([1, 2]), np.array([0.5, 0.7]), ["a", "b", "c"], "blank_line")
    assert trace.answer is None or not grading.grade_answer(trace.answer, "5")
    assert trace.confidence == pytest.approx(0.6)
