"""CASPO's pair rules on hand-made annotated solutions: each rule, threshold edges, missing siblings."""

import pytest

from caspo_jax.caspo.pairs import (
    CONFIDENT_WRONG, CORRECT_UNSURE, ScoredStep, Solution, build_pairs, find_candidates, quantile_thresholds,
)


def solution(qid, *steps):
    return Solution(qid, "Q: " + qid + "\n", tuple(ScoredStep(t, c, l) for t, c, l in steps))


S1 = solution("q1", ("a", 0.9, True), ("b", 0.3, True), ("c", 0.95, False), ("d", 0.1, True))
S2 = solution("q2", ("x", 0.2, False), ("y", 0.99, False))


def test_candidates_follow_each_rule_and_stop_at_the_first_error():
    found = [(c.solution.question_id, c.index, c.kind) for c in find_candidates([S1, S2], tau_low=0.5, tau_high=0.9)]
    # q1: 'b' right and unsure; 'c' wrong and confident; 'd' sits after an error: never used.
    # q2: 'x' wrong but unsure: no rule; 'y' after an error: never used.
    assert found == [("q1", 1, CORRECT_UNSURE), ("q1", 2, CONFIDENT_WRONG)]


def test_threshold_edges():
    s = solution("q", ("a", 0.5, True), ("b", 0.9, False))
    # right at exactly tau_low is not "unsure" (strict <); wrong at exactly tau_high is "confident" (>=).
    assert [c.kind for c in find_candidates([s], tau_low=0.5, tau_high=0.9)] == [CONFIDENT_WRONG]
    assert [c.kind for c in find_candidates([s], tau_low=0.50001, tau_high=0.90001)] == [CORRECT_UNSURE]


def test_pairs_take_the_most_extreme_sibling_of_the_opposite_label():
    candidates = find_candidates([S1], tau_low=0.5, tau_high=0.9)
    siblings = {
        ("q1", ("a",)): [ScoredStep("b2", 0.4, False), ScoredStep("b3", 0.8, False), ScoredStep("b4", 0.7, True)],
        ("q1", ("a", "b")): [ScoredStep("c1", 0.6, True), ScoredStep("c2", 0.2, True), ScoredStep("c3", 0.99, False)],
    }
    pairs, counts = build_pairs(candidates, siblings)
    assert [(p.kind, p.chosen, p.rejected) for p in pairs] == [
        (CORRECT_UNSURE, "b\n\n", "b3\n\n"),
        (CONFIDENT_WRONG, "c1\n\n", "c\n\n"),
    ]
    assert pairs[0].prompt == "Q: q1\na\n\n" and pairs[1].prompt == "Q: q1\na\n\nb\n\n"
    assert (pairs[1].chosen_confidence, pairs[1].rejected_confidence) == (0.6, 0.95)
    assert counts == {CORRECT_UNSURE: 1, CONFIDENT_WRONG: 1}


def test_no_sibling_falls_back_to_runner_up_or_is_counted():
    candidates = find_candidates([S1], tau_low=0.5, tau_high=0.9)
    runner = {("q1", ("a",)): ScoredStep("runner", 0.5, False)}
    pairs, counts = build_pairs(candidates, {}, runner_up=runner)
    assert [(p.chosen, p.rejected) for p in pairs] == [("b\n\n", "runner\n\n")]
    assert counts == {CORRECT_UNSURE: 1, "no_sibling": 1}  # the confidently wrong step has no right sibling
    # a runner-up that is right, or the step itself, is not a rejected step
    for bad in (ScoredStep("r", 0.5, True), ScoredStep("b", 0.3, False)):
        pairs, counts = build_pairs(candidates[:1], {}, runner_up={("q1", ("a",)): bad})
        assert pairs == [] and counts == {"no_sibling": 1}


def test_duplicates_and_identical_siblings():
    twice = [S1, solution("q1", ("a", 0.9, True), ("b", 0.3, True))]
    candidates = [c for c in find_candidates(twice, 0.5, 0.9) if c.kind == CORRECT_UNSURE]
    siblings = {("q1", ("a",)): [ScoredStep("b", 0.3, False), ScoredStep("bad", 0.5, False)]}
    pairs, counts = build_pairs(candidates, siblings)
    assert [(p.chosen, p.rejected) for p in pairs] == [("b\n\n", "bad\n\n")]  # the twin "b" is skipped
    assert counts == {CORRECT_UNSURE: 1, "duplicate": 1}


def test_final_steps_keep_their_own_ending():
    s = Solution("q", "P ", (ScoredStep("answer: 3", 0.95, False, ending=""),))
    pairs, _ = build_pairs(find_candidates([s], 0.5, 0.9), {("q", ()): [ScoredStep("answer: 4", 0.5, True, ending="")]})
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("P ", "answer: 4", "answer: 3")


def test_quantile_thresholds_use_clean_prefix_steps_only():
    low, high = quantile_thresholds([S1, S2], 0.0, 1.0)
    # clean-prefix steps: a .9, b .3, c .95, x .2 ('d' and 'y' follow errors)
    assert (low, high) == (0.2, 0.95)
    with pytest.raises(ValueError, match="quantiles"):
        quantile_thresholds([S1], -0.1, 0.5)
    with pytest.raises(ValueError, match="no steps"):
        quantile_thresholds([], 0.1, 0.5)
