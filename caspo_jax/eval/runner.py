"""The evaluation loop: problems -> decoded, graded, resumable results -> metrics, report and plots.

Results go to `<out>/<name>/results.jsonl`, one graded question per line, appended and fsynced after
each batch: a crash loses at most the batch in flight, and a rerun skips every question already there
(a line torn by the crash is dropped). Metrics, the markdown report and the plots are recomputed from
the whole results file at the end, so a resumed run reports exactly what an uninterrupted one would.
In a multi-host job every process decodes and only process 0 writes (`files.is_primary`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from caspo_jax import files
from caspo_jax.config import EvalConfig
from caspo_jax.data import grading, prompts
from caspo_jax.data.sources import Problem
from caspo_jax.eval import decoders, metrics, report
from caspo_jax.infer import stops
from caspo_jax.infer.sampler import Sampler
from caspo_jax.model import tokenizer as tokenizer_lib
from caspo_jax.parallel import mesh as mesh_lib

RESULTS = "results.jsonl"


def read_results(path: Path) -> dict[str, dict]:
    """Graded questions by id. A torn last line (a crash mid-write) is dropped from the file."""
    if not path.exists():
        return {}
    records, lines = {}, path.read_text(encoding="utf-8").splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                if files.is_primary():
                    files.write_text(path, "".join(lines[:-1]))
                break
            raise ValueError(f"{path}:{number}: not a JSON results line; delete the file to start over") from None
        records[record["id"]] = record
    return records


def _append(path: Path, records: list[dict]) -> None:
    if not files.is_primary():
        return
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _record(problem: Problem, decision: decoders.Decision, seconds: float, method: str) -> dict:
    traces = [
        {**t.__dict__, "correct": t.answer is not None and grading.grade_answer(t.answer, problem.answer)}
        for t in decision.traces
    ]
    chosen = decision.chosen
    return {
        "id": problem.id,
        "question": problem.question,
        "reference": problem.answer,
        "method": method,
        "answer": decision.answer,
        "correct": chosen is not None and traces[chosen]["correct"],
        "confidence": None if chosen is None else traces[chosen]["confidence"],
        "tokens": decision.tokens,
        "seconds": seconds,
        "traces": traces,
    }


def evaluate(
    sampler: Sampler, problems: Sequence[Problem], cfg: EvalConfig, out_dir: Path, name: str, progress: bool = True
) -> dict[str, Any]:
    """Decodes and grades `problems` with cfg.method, resuming from out_dir/name; returns the metrics."""
    if cfg.method not in decoders.METHODS:
        raise ValueError(f"method {cfg.method!r} is not available; expected one of {sorted(decoders.METHODS)}")
    folder = Path(out_dir) / name
    if files.is_primary():
        folder.mkdir(parents=True, exist_ok=True)
    results_path = folder / RESULTS
    done = read_results(results_path)
    mesh_lib.sync(f"eval {name}: results read")  # every process skips the same questions before any appends
    todo = [p for p in problems if p.id not in done]
    tok = sampler.tokenizer
    chat = tokenizer_lib.has_chat_template(tok) if cfg.chat is None else cfg.chat
    pieces = stops.token_pieces(tok, sampler.model.vocab_size)
    method = decoders.METHODS[cfg.method]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"eval {name} ({cfg.method})", disable=not progress)
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start : start + cfg.batch_size]
        texts = [prompts.build_prompt(p.question, tok if chat else None) for p in batch]
        began = time.perf_counter()
        decisions = method(sampler, tokenizer_lib.encode(tok, texts), cfg, pieces)
        seconds = (time.perf_counter() - began) / len(batch)
        records = [_record(p, d, seconds, cfg.method) for p, d in zip(batch, decisions)]
        _append(results_path, records)
        done.update((r["id"], r) for r in records)
        bar.update(len(batch))
        bar.set_postfix(acc=f"{np.mean([r['correct'] for r in done.values()]):.3f}")
    bar.close()
    ordered = [done[p.id] for p in problems]
    summary = summarize(ordered)
    write_report(folder, name, cfg.method, ordered, summary)
    return summary


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    """Accuracy, trace-level calibration of confidence against correctness, and cost."""
    traces = [t for r in records for t in r["traces"]]
    conf = np.array([t["confidence"] for t in traces])
    right = np.array([t["correct"] for t in traces], bool)
    k = len(records[0]["traces"])
    out = {
        "questions": len(records),
        "accuracy": metrics.pass_at_1([r["correct"] for r in records]),
        "trace_accuracy": metrics.pass_at_1(right),
        "traces_per_question": k,
        "ece": metrics.ece(conf, right),
        "brier": metrics.brier(conf, right),
        "auroc": metrics.auroc(conf, right),
        "confidence_gap": metrics.entropy_gap(conf, right),
        "no_answer_rate": float(np.mean([r["answer"] is None for r in records])),
        **metrics.cost_summary([r["tokens"] for r in records], [r["seconds"] for r in records]),
    }
    if k > 1:
        n = [len(r["traces"]) for r in records]
        c = [sum(t["correct"] for t in r["traces"]) for r in records]
        out[f"pass@{k}"] = metrics.pass_at_k(n, c, k)
    return out


def budget_curve(records: Sequence[dict]) -> tuple[list[float], list[float]]:
    """Accuracy of a majority vote over the first j traces against mean tokens spent, j = 1..k."""
    k = len(records[0]["traces"])
    tokens, accuracy = [], []
    for j in range(1, k + 1):
        wins = []
        for r in records:
            head = r["traces"][:j]
            chosen = metrics.majority_vote([t["answer"] for t in head], decoders.equivalent_answers)
            wins.append(chosen is not None and head[chosen]["correct"])
        tokens.append(float(np.mean([sum(t["tokens"] for t in r["traces"][:j]) for r in records])))
        accuracy.append(float(np.mean(wins)))
    return tokens, accuracy


def write_report(folder: Path, name: str, method: str, records: Sequence[dict], summary: dict) -> None:
    traces = [t for r in records for t in r["traces"]]
    conf = [t["confidence"] for t in traces]
    right = [t["correct"] for t in traces]
    report.write_json(folder / "metrics.json", {"benchmark": name, "method": method, **summary})
    row = {"benchmark": name, "method": method, **{k: v for k, v in summary.items() if not isinstance(v, dict)}}
    row["tokens/question"] = summary["tokens"]["mean"]
    row["seconds/question"] = summary["seconds"]["mean"]
    report.write_markdown(folder / "report.md", [row], title=f"{name}: {method}")
    report.plot_reliability(folder / "reliability.png", conf, right, title=f"{name} ({method}): trace confidence")
    report.plot_confidence_histograms(folder / "confidence_hist.png", conf, right, title=f"{name} ({method})")
    report.plot_accuracy_vs_budget(folder / "accuracy_vs_tokens.png", {method: budget_curve(records)})
