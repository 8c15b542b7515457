"""Evaluation metrics, pure numpy: accuracy (pass@1, maj@k, pass@k), calibration (AUROC, ECE,
Brier, reliability bins, entropy gap), step-level reliability, and cost summaries.

Conventions: `labels` are binary (1 = correct); `confidence` lies in [0, 1]. Each metric stays
defined on degenerate input (one class only, empty bins, empty classes) and says what it returns
there; empty inputs where no value makes sense raise ValueError.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

N_BINS = 15


def _binary(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be 0/1 or boolean")
    return arr.astype(bool)


def _paired(confidence: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """confidence [M] f64 in [0, 1] and labels [M] bool, checked; raises on empty input."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    lab = _binary(labels).reshape(-1)
    if conf.shape != lab.shape:
        raise ValueError(f"confidence has {conf.size} values but labels has {lab.size}")
    if conf.size == 0:
        raise ValueError("no values: the metric is undefined on empty input")
    if not ((conf >= 0.0) & (conf <= 1.0)).all():
        raise ValueError("confidence must lie in [0, 1] (NaN is not allowed)")
    return conf, lab


def pass_at_1(correct: ArrayLike) -> float:
    """Mean correctness. correct: [N] or [N, n] bool (n samples per question, averaged)."""
    arr = _binary(correct, "correct")
    if arr.size == 0:
        raise ValueError("no values: pass@1 is undefined on empty input")
    return float(arr.mean())


def pass_at_k(num_samples: ArrayLike, num_correct: ArrayLike, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021), averaged over questions: per question,
    1 - C(n - c, k) / C(n, k). num_samples, num_correct: [N] int; every n must be >= k."""
    n = np.asarray(num_samples, dtype=np.int64).reshape(-1)
    c = np.asarray(num_correct, dtype=np.int64).reshape(-1)
    if n.size == 0 or n.shape != c.shape:
        raise ValueError("num_samples and num_correct must be non-empty and of equal length")
    if k < 1 or (n < k).any() or (c < 0).any() or (c > n).any():
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n for every question (k={k})")
    per_question = [
        1.0 if ni - ci < k else 1.0 - float(np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1)))
        for ni, ci in zip(n, c)
    ]
    return float(np.mean(per_question))


def majority_vote(
    answers: Sequence[str | None],
    equivalent: Callable[[str, str], bool],
    weights: ArrayLike | None = None,
) -> int | None:
    """Index of the answer that wins the vote, or None when every answer is None.

    answers: [k]; answers join the first earlier cluster they are `equivalent` to. The cluster
    with the largest total weight (default 1 each) wins; ties go to the cluster seen first. The
    winner is represented by its first member.
    """
    w = np.ones(len(answers)) if weights is None else np.asarray(weights, dtype=np.float64)
    heads: list[int] = []
    totals: list[float] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for j, head in enumerate(heads):
            if equivalent(answers[head], answer):  # type: ignore[arg-type]
                totals[j] += float(w[i])
                break
        else:
            heads.append(i)
            totals.append(float(w[i]))
    return heads[int(np.argmax(totals))] if heads else None


def maj_at_k(
    answers: Sequence[Sequence[str | None]],
    correct: ArrayLike,
    equivalent: Callable[[str, str], bool],
    weights: ArrayLike | None = None,
) -> float:
    """Fraction of questions whose majority answer is correct. answers: [N][k] extracted answers
    (None = no answer); correct: [N, k] bool per sample; weights: [N, k] or None (plain vote)."""
    corr = _binary(correct, "correct")
    if len(answers) == 0 or corr.shape[0] != len(answers):
        raise ValueError("answers and correct must be non-empty with one row per question")
    wins = []
    for q, row in enumerate(answers):
        winner = majority_vote(row, equivalent, None if weights is None else np.asarray(weights)[q])
        wins.append(winner is not None and bool(corr[q][winner]))
    return float(np.mean(wins))


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of `scores` [M] as a predictor of `labels` [M]: the probability
    that a random positive outscores a random negative, ties counting one half (Mann-Whitney with
    average ranks). Returns 0.5 (chance) when only one class is present or M = 0."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = _binary(labels).reshape(-1)
    if s.shape != lab.shape or np.isnan(s).any():
        raise ValueError("scores and labels must have equal length and scores no NaN")
    n_pos, n_neg = int(lab.sum()), int((~lab).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each score
    return float((ranks[lab].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def reliability_bins(
    confidence: ArrayLike, labels: ArrayLike, n_bins: int = N_BINS
) -> dict[str, np.ndarray]:
    """Equal-width confidence bins over [0, 1] ([i/B, (i+1)/B), the last closed).

    Returns edges [B+1], count [B] int, confidence [B] (mean confidence) and accuracy [B]
    (fraction correct); empty bins have count 0 and confidence = accuracy = 0.
    """
    conf, lab = _paired(confidence, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.digitize(conf, edges[1:-1])
    count = np.bincount(index, minlength=n_bins)
    safe = np.maximum(count, 1)
    return {
        "edges": edges,
        "count": count,
        "confidence": np.bincount(index, weights=conf, minlength=n_bins) / safe,
        "accuracy": np.bincount(index, weights=lab.astype(np.float64), minlength=n_bins) / safe,
    }


def ece(confidence: ArrayLike, labels: ArrayLike, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (bin size / M) * |accuracy - confidence|.
    confidence, labels: [M]; empty bins contribute nothing."""
    bins = reliability_bins(confidence, labels, n_bins)
    gap = np.abs(bins["accuracy"] - bins["confidence"])
    return float((bins["count"] * gap).sum() / bins["count"].sum())


def brier(confidence: ArrayLike, labels: ArrayLike) -> float:
    """Brier score: mean of (confidence - label)^2. confidence, labels: [M]."""
    conf, lab = _paired(confidence, labels)
    return float(np.mean((conf - lab) ** 2))


def entropy_gap(values: ArrayLike, labels: ArrayLike) -> float:
    """mean(values of correct steps) - mean(values of wrong steps); values, labels: [S].

    With confidences, positive means correct steps are more confident. With entropies, the paper's
    "entropy gap, wrong vs correct" is the negation. 0.0 when either class is empty.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    lab = _binary(labels).reshape(-1)
    if v.shape != lab.shape:
        raise ValueError(f"values has {v.size} entries but labels has {lab.size}")
    if lab.all() or not lab.any():
        return 0.0
    return float(v[lab].mean() - v[~lab].mean())


def _step_flags(final_correct: ArrayLike, step_labels: Sequence[ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """final [N] bool and all_steps_right [N] bool (a question without steps counts as all right)."""
    final = _binary(final_correct, "final_correct").reshape(-1)
    if final.size == 0 or final.size != len(step_labels):
        raise ValueError("final_correct and step_labels must be non-empty with one entry per question")
    return final, np.array([bool(_binary(s, "step_labels").all()) for s in step_labels])


def reliable_accuracy(final_correct: ArrayLike, step_labels: Sequence[ArrayLike]) -> float:
    """Fraction of questions with the right final answer AND every step labelled right.
    final_correct: [N] bool; step_labels: N arrays [S_i] bool (ragged)."""
    final, clean = _step_flags(final_correct, step_labels)
    return float((final & clean).mean())


def right_through_wrong_step_rate(final_correct: ArrayLike, step_labels: Sequence[ArrayLike]) -> float:
    """Among questions answered right, the fraction with at least one step labelled wrong
    (0.0 when none is answered right). Same inputs as `reliable_accuracy`; note
    reliable_accuracy = accuracy * (1 - this rate)."""
    final, clean = _step_flags(final_correct, step_labels)
    return float((final & ~clean).sum() / final.sum()) if final.any() else 0.0


def summarize(values: ArrayLike) -> dict[str, float]:
    """mean, median, p90, max and total of per-question values [N] (tokens, seconds, ...)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("no values to summarize")
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p90": float(np.percentile(v, 90)),
        "max": float(v.max()),
        "total": float(v.sum()),
    }


def cost_summary(tokens: ArrayLike, seconds: ArrayLike) -> dict[str, dict[str, float]]:
    """Per-question cost: {"tokens": summarize(tokens), "seconds": summarize(seconds)};
    tokens, seconds: [N] (generated tokens and wall-clock seconds of each question)."""
    return {"tokens": summarize(tokens), "seconds": summarize(seconds)}
