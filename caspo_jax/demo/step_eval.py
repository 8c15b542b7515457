"""Step-level evaluation on held-out questions: does step confidence tell right steps from wrong ones?

The policy samples `k` solutions per held-out question (temperature `temperature`, the distribution
it really writes from); the arith verifier labels every step exactly. Out of that come the figures
CASPO targets: AUROC, ECE, Brier and the confidence gap of step confidence against step correctness,
step and final accuracy, the rate of right answers reached through a wrong step, and reliable
accuracy (right answer, every step right). Written to `folder`: samples.jsonl, annotated.parquet
(the step-wise rows, `caspo.dataset.SCHEMA`) and metrics.json, the last one marking it finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from caspo_jax.caspo import annotate as annotate_lib
from caspo_jax.caspo import dataset as dataset_lib
from caspo_jax.caspo import loop
from caspo_jax.data import arith
from caspo_jax.data.sources import Problem
from caspo_jax.eval import metrics
from caspo_jax.eval import report

METRICS = "metrics.json"


def step_metrics(samples: Sequence[dict], rows: Sequence[dict]) -> dict:
    """The figures above from samples (dicts with question_id, sample, reference, text) and their
    annotated step rows (step_confidence, label)."""
    conf = np.array([r["step_confidence"] for r in rows], np.float64)
    right = np.array([r["label"] for r in rows], bool)
    labels: dict[tuple, list[bool]] = {}
    for r in sorted(rows, key=lambda r: r["step_index"]):
        labels.setdefault((r["question_id"], r["sample"]), []).append(bool(r["label"]))
    final = [arith.final_answer(s["text"]) == int(s["reference"]) for s in samples]
    steps = [labels.get((s["question_id"], s["sample"]), [False]) for s in samples]
    return {
        "solutions": len(samples),
        "steps": int(right.size),
        "auroc": metrics.auroc(conf, right),
        "ece": metrics.ece(conf, right),
        "brier": metrics.brier(conf, right),
        "confidence_gap": metrics.entropy_gap(conf, right),
        "mean_confidence": float(conf.mean()),
        "step_accuracy": float(right.mean()),
        "final_accuracy": metrics.pass_at_1(final),
        "right_through_wrong_step": metrics.right_through_wrong_step_rate(final, steps),
        "reliable_accuracy": metrics.reliable_accuracy(final, steps),
    }


def evaluate_steps(policy: Path, problems: Sequence[Problem], folder: Path, *, k: int, temperature: float,
                   max_new_tokens: int, signal: str, aggregation: str, seed: int, mesh=None) -> dict:
    """Samples, labels and scores (each stage skipped when written); returns step_metrics."""
    if (folder / METRICS).exists():
        return json.loads((folder / METRICS).read_text())
    samples_path, table = folder / "samples.jsonl", folder / "annotated.parquet"
    sampler = None
    if not samples_path.exists():
        sampler = loop.load_sampler(policy, mesh)
        samples = annotate_lib.sample_solutions(
            sampler, problems, k, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens,
            signal=signal, seed=seed, batch_size=32,
        )
        loop.write_jsonl(samples_path, samples)
    samples = loop.read_jsonl(samples_path)
    if not table.exists():
        sampler = sampler or loop.load_sampler(policy, mesh)
        _, rows = annotate_lib.annotate(samples, loop.make_labeler("verifier"), sampler.pieces, splitter="blank_line",
                                        aggregation=aggregation, round_index=0)
        dataset_lib.write_parquet(rows, table)
    result = step_metrics(samples, dataset_lib.read_parquet(table))
    report.write_json(folder / METRICS, result)
    return result
