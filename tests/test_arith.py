"""The arithmetic world: generator bounds, solutions, noise, and the exact step verifier."""

import numpy as np
import pytest

from caspo_jax.data import arith


def test_problems_stay_in_range_and_solutions_verify():
    rng = np.random.default_rng(0)
    for _ in range(500):
        p = arith.sample_problem(rng)
        assert 3 <= len(p.ops) <= 5
        assert all(0 <= v < 100 for v in p.values)
        assert arith.verify_solution(p, p.solution()) == [True] * (len(p.ops) + 1)
        assert arith.parse_question(p.question) == p
        assert arith.final_answer(p.solution()) == p.answer


def test_hand_example():
    p = arith.ArithProblem(7, (("+", 5), ("*", 3), ("-", 4)))
    assert p.question == "7 + 5 * 3 - 4"
    assert p.solution() == "7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 32\n\nanswer: 32"
    # A wrong intermediate value that the next step silently ignores: only that step is wrong.
    assert arith.verify_solution(p, "7 + 5 = 13\n\n12 * 3 = 36\n\n36 - 4 = 32\n\nanswer: 32") == [False, True, True, True]
    # A step that continues from a wrong value is wrong too, and so is the answer it leads to.
    assert arith.verify_solution(p, "7 + 5 = 13\n\n13 * 3 = 39\n\n39 - 4 = 35\n\nanswer: 35") == [False] * 4
    assert arith.verify_solution(p, "7 + 5 = 12\n\ngarbage") == [True, False]
    assert arith.verify_solution(p, p.solution() + "\n\nanswer: 32") == [True] * 4 + [False]


def test_noise_keeps_the_answer_and_breaks_exactly_one_step():
    rng = np.random.default_rng(1)
    for _ in range(300):
        p = arith.sample_problem(rng)
        text, k = arith.noisy_solution(p, rng)
        labels = arith.verify_solution(p, text)
        assert labels.count(False) == 1 and labels[k] is False
        assert k < len(p.ops) - 1 and arith.final_answer(text) == p.answer
        wrong = int(text.split("\n\n")[k].split("= ")[1])
        assert wrong - p.values[k + 1] in arith.NOISE_OFFSETS


def test_parse_question_errors():
    for bad in ["", "7 +", "x + 1", "7 / 2", "7 + 12"]:
        with pytest.raises(ValueError, match="not an arithmetic question"):
            arith.parse_question(bad)
