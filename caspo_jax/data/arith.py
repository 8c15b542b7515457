"""The step-verifiable arithmetic world of the demo: problems, step-by-step solutions, noise, verifier.

A problem is a start value and 3-5 operations (+d, -d, *d with a digit d), applied left to right,
with every intermediate value in [0, 100). A solution has one operation per step, a blank line
between steps, and a final answer step:

    question: 7 + 5 * 3 - 4
    solution: 7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 32\n\nanswer: 32

Ground truth is known for every step, so the verifier labels steps exactly. The noise model writes
one wrong intermediate result (off by 1, 2 or 10) that the next step silently ignores, continuing
from the right value: the final answer stays right through a wrong step, the failure CASPO targets.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from caspo_jax.caspo.steps import split_steps

OPS = ("+", "-", "*")
NOISE_OFFSETS = (-10, -2, -1, 1, 2, 10)
_STEP = re.compile(r"^(\d+) ([+\-*]) (\d) = (\d+)$")
_ANSWER = re.compile(r"^answer: (\d+)$")


def _apply(value: int, op: str, digit: int) -> int:
    return value + digit if op == "+" else value - digit if op == "-" else value * digit


@dataclasses.dataclass(frozen=True)
class ArithProblem:
    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def values(self) -> list[int]:
        """Running values [start, after op 1, ..., after op n]."""
        out = [self.start]
        for op, digit in self.ops:
            out.append(_apply(out[-1], op, digit))
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def question(self) -> str:
        return " ".join([str(self.start)] + [f"{op} {d}" for op, d in self.ops])

    def step_texts(self) -> list[str]:
        """The correct steps, final answer included."""
        values = self.values
        steps = [f"{values[k]} {op} {d} = {values[k + 1]}" for k, (op, d) in enumerate(self.ops)]
        return steps + [f"answer: {self.answer}"]

    def solution(self) -> str:
        return "\n\n".join(self.step_texts())


def sample_problem(rng: np.random.Generator, min_ops: int = 3, max_ops: int = 5) -> ArithProblem:
    """A random problem whose every value stays in [0, 100)."""
    value = int(rng.integers(0, 100))
    start, ops = value, []
    for _ in range(int(rng.integers(min_ops, max_ops + 1))):
        choices = [(op, d) for op in OPS for d in range(1, 10) if 0 <= _apply(value, op, d) < 100]
        choices = [c for c in choices if c[0] != "*" or value > 1 and c[1] > 1] or choices
        op, digit = choices[int(rng.integers(len(choices)))]
        ops.append((op, digit))
        value = _apply(value, op, digit)
    return ArithProblem(start, tuple(ops))


def noisy_solution(problem: ArithProblem, rng: np.random.Generator) -> tuple[str, int]:
    """A solution with one wrong intermediate result the next step ignores -> (text, wrong step index)."""
    steps = problem.step_texts()
    values = problem.values
    k = int(rng.integers(0, len(problem.ops) - 1))  # never the last operation: its result is the answer
    offsets = [o for o in NOISE_OFFSETS if 0 <= values[k + 1] + o < 100]
    wrong = values[k + 1] + int(rng.choice(offsets))
    op, digit = problem.ops[k]
    steps[k] = f"{values[k]} {op} {digit} = {wrong}"
    return "\n\n".join(steps), k


def verify_step(problem: ArithProblem, index: int, text: str) -> bool:
    """Is step `index` of a solution exactly right (operands from the true running value)?"""
    values = problem.values
    if index < len(problem.ops):
        m = _STEP.match(text.strip())
        if not m:
            return False
        a, op, d, r = int(m[1]), m[2], int(m[3]), int(m[4])
        return (a, op, d, r) == (values[index], *problem.ops[index], values[index + 1])
    if index == len(problem.ops):
        m = _ANSWER.match(text.strip())
        return bool(m) and int(m[1]) == problem.answer
    return False  # steps beyond the answer are wrong


def verify_solution(problem: ArithProblem, solution: str) -> list[bool]:
    """One label per step of `solution` (split on blank lines)."""
    return [verify_step(problem, k, s.text) for k, s in enumerate(split_steps(solution))]


def final_answer(solution: str) -> int | None:
    """The integer after the last 'answer:', or None."""
    found = re.findall(r"answer: (\d+)", solution)
    return int(found[-1]) if found else None


def parse_question(question: str) -> ArithProblem:
    """The inverse of `ArithProblem.question`; errors say what was expected."""
    parts = question.split()
    if len(parts) < 3 or len(parts) % 2 == 0 or not parts[0].isdigit():
        raise ValueError(f"not an arithmetic question {question!r}; expected e.g. '7 + 5 * 3 - 4'")
    ops = []
    for op, digit in zip(parts[1::2], parts[2::2]):
        if op not in OPS or not (digit.isdigit() and len(digit) == 1):
            raise ValueError(f"not an arithmetic question {question!r}: bad operation {op} {digit}")
        ops.append((op, int(digit)))
    return ArithProblem(int(parts[0]), tuple(ops))
