"""Metrics against hand computations and brute force, including degenerate inputs."""

import itertools
import math

import numpy as np
import pytest

from caspo_jax.eval import metrics as m


def test_pass_at_1():
    assert m.pass_at_1([1, 0, 1, 1]) == 0.75
    assert m.pass_at_1([[True, False], [True, True]]) == 0.75
    with pytest.raises(ValueError):
        m.pass_at_1([])


def test_pass_at_k_hand_values():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10; c=0 -> 0; n-c=1 < k -> 1.
    assert m.pass_at_k([5, 5, 5], [2, 0, 4], 2) == pytest.approx((0.7 + 0.0 + 1.0) / 3)
    assert m.pass_at_k([4], [1], 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        m.pass_at_k([3], [1], 4)


@pytest.mark.parametrize("n, c, k", [(6, 2, 3), (7, 1, 2), (5, 3, 1), (8, 4, 5), (6, 0, 2)])
def test_pass_at_k_matches_subset_enumeration(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    brute = sum(any(s) for s in subsets) / len(subsets)
    assert m.pass_at_k([n], [c], k) == pytest.approx(brute)


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def test_maj_at_k():
    answers = [["7", "8", "8"], ["X", "x", "y"], [None, None, "z"], [None, None, None]]
    correct = [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]]
    # q0: "8" wins, wrong; q1: {X, x} wins, right; q2: "z" alone, right; q3: no answer.
    assert m.maj_at_k(answers, correct, _same) == 0.5
    assert m.majority_vote(["a", "b"], _same) == 0  # a tie goes to the cluster seen first
    assert m.majority_vote(["a", "b", "B"], _same, weights=[3, 1, 1]) == 0
    assert m.majority_vote(["a", "b", "B"], _same) == 1
    assert m.majority_vote([None, None], _same) is None


def _auroc_brute(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, size=30) / 4.0  # many ties
        labels = rng.integers(0, 2, size=30)
        if 0 < labels.sum() < 30:
            assert m.auroc(scores, labels) == pytest.approx(_auroc_brute(scores, labels))


def test_auroc_edge_cases():
    assert m.auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert m.auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert m.auroc([0.5] * 4, [1, 0, 1, 0]) == 0.5
    assert m.auroc([0.1, 0.9], [1, 1]) == 0.5  # one class only: chance, not NaN
    assert m.auroc([], []) == 0.5


def _ece_loop(conf, labels, n_bins=15) -> float:
    """Independent ECE: explicit half-open bins, the last one closed."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        idx = [i for i, c in enumerate(conf) if lo <= c < hi or (b == n_bins - 1 and c == 1.0)]
        if idx:
            acc = sum(labels[i] for i in idx) / len(idx)
            mean_conf = sum(conf[i] for i in idx) / len(idx)
            total += len(idx) / len(conf) * abs(acc - mean_conf)
    return total


def test_calibration_hand_values():
    # one bin: accuracy 3/4, confidence 0.9 -> ECE 0.15; Brier (3 * 0.01 + 0.81) / 4 = 0.21
    assert m.ece([0.9] * 4, [1, 1, 1, 0]) == pytest.approx(0.15)
    assert m.brier([0.9] * 4, [1, 1, 1, 0]) == pytest.approx(0.21)
    # calibrated: 0.25 -> 1 of 4 right, 0.75 -> 3 of 4 right
    conf, labels = [0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0]
    assert m.ece(conf, labels) == pytest.approx(0.0)
    assert m.brier(conf, labels) == pytest.approx(0.1875)
    # perfect, anti-calibrated, constant
    assert (m.ece([1, 1, 0, 0], [1, 1, 0, 0]), m.brier([1, 1, 0, 0], [1, 1, 0, 0])) == (0.0, 0.0)
    assert (m.ece([0, 0, 1, 1], [1, 1, 0, 0]), m.brier([0, 0, 1, 1], [1, 1, 0, 0])) == (1.0, 1.0)
    assert m.auroc([0, 0, 1, 1], [1, 1, 0, 0]) == 0.0
    assert m.ece([0.5] * 4, [1, 0, 1, 0]) == 0.0 and m.brier([0.5] * 4, [1, 0, 1, 0]) == 0.25


def test_ece_matches_loop_on_random_data():
    rng = np.random.default_rng(1)
    conf = np.concatenate([rng.uniform(size=200), [0.0, 1.0]])
    labels = (rng.uniform(size=202) < conf).astype(int)
    assert m.ece(conf, labels) == pytest.approx(_ece_loop(list(conf), list(labels)))


def test_reliability_bins_edges_and_empty_bins():
    bins = m.reliability_bins([0.0, 0.5, 1.0, 1.0], [0, 1, 1, 0])
    assert bins["edges"].shape == (16,) and bins["count"].tolist() == [1] + [0] * 6 + [1] + [0] * 6 + [2]
    assert bins["accuracy"][14] == 0.5 and bins["confidence"][14] == 1.0
    assert not np.isnan(bins["accuracy"]).any() and bins["accuracy"][3] == 0.0
    assert m.ece([0.3], [1]) == pytest.approx(0.7)  # one sample, one class


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        m.ece([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.brier([1.2], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.ece([math.nan], [1])
    with pytest.raises(ValueError, match="labels"):
        m.brier([0.5, 0.5], [1])
    with pytest.raises(ValueError, match="0/1"):
        m.brier([0.5], [2])


def test_entropy_gap():
    assert m.entropy_gap([0.9, 0.8, 0.2], [1, 1, 0]) == pytest.approx(0.65)
    assert m.entropy_gap([0.9, 0.8], [1, 1]) == 0.0  # no wrong steps
    assert m.entropy_gap([], []) == 0.0


def test_step_reliability():
    final = [1, 1, 0, 1]
    steps = [[1, 1], [1, 0], [1, 1], []]  # q1 right through a wrong step; q3 has no steps
    assert m.reliable_accuracy(final, steps) == 0.5
    assert m.right_through_wrong_step_rate(final, steps) == pytest.approx(1 / 3)
    assert m.reliable_accuracy(final, steps) == pytest.approx(0.75 * (1 - 1 / 3))
    assert m.right_through_wrong_step_rate([0, 0], [[0], [1]]) == 0.0
    with pytest.raises(ValueError):
        m.reliable_accuracy([1, 0], [[1]])


def test_cost_summary():
    summary = m.cost_summary([10, 20, 30, 40], [1.0, 1.0, 2.0, 4.0])
    # p90 by linear interpolation: position 0.9 * 3 = 2.7 -> 30 + 0.7 * 10
    assert summary["tokens"] == {"mean": 25.0, "median": 25.0, "p90": 37.0, "max": 40.0, "total": 100.0}
    assert summary["seconds"]["mean"] == 2.0 and summary["seconds"]["median"] == 1.5
    with pytest.raises(ValueError):
        m.summarize([])
