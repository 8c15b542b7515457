"""Splitting solutions into steps and mapping steps to token spans."""

import numpy as np
import pytest

from caspo_jax.caspo.steps import split_steps, step_confidences, token_spans

SOLUTION = "First 3 + 4 = 7.\n\nThen 7 * 2 = 14.\n\n\nThe answer is \\boxed{14}."
TOKENS = ["First", " 3", " +", " 4", " =", " 7.", "\n\nThen", " 7", " *", " 2", " =", " 14.", "\n\n\n",
          "The", " answer", " is", " \\boxed{14}."]


def test_blank_line_split_keeps_offsets():
    steps = split_steps(SOLUTION)
    assert [s.text for s in steps] == ["First 3 + 4 = 7.", "Then 7 * 2 = 14.", "The answer is \\boxed{14}."]
    assert all(SOLUTION[s.start : s.end] == s.text for s in steps)


def test_other_splitters():
    assert [s.text for s in split_steps("Step 1: a\nStep 2: b\n", "step_header")] == ["Step 1: a", "Step 2: b"]
    assert [s.text for s in split_steps("a; b;c", r";\s*")] == ["a", "b", "c"]
    assert split_steps("   \n\n  ") == []


def test_token_spans_follow_first_visible_character():
    assert "".join(TOKENS) == SOLUTION
    spans = token_spans(split_steps(SOLUTION), TOKENS)
    # "\n\nThen" starts step 2; the whitespace-only "\n\n\n" belongs to no step.
    assert spans == [(0, 6), (6, 12), (13, 17)]


def test_one_token_spanning_two_steps():
    tokens = ["a\n\nb", " c"]
    steps = split_steps("".join(tokens))
    assert [s.text for s in steps] == ["a", "b c"]
    assert token_spans(steps, tokens) == [(0, 1), (1, 2)]


def test_step_confidences():
    conf = np.array([0.9, 0.5, 0.7, 0.1])
    np.testing.assert_allclose(step_confidences(conf, [(0, 2), (2, 4)]), [0.7, 0.4])
    np.testing.assert_allclose(step_confidences(conf, [(0, 2), (2, 4)], "min"), [0.5, 0.1])
    with pytest.raises(ValueError, match="step aggregation"):
        step_confidences(conf, [(0, 1)], "max")
