"""Confidence-filtered step pairs: CASPO's rules for turning labelled, scored steps into DPO pairs.

Two kinds of step make a pair, each conditioned on its prefix (the prompt and the earlier steps):
  correct_unsure   label right, confidence < tau_low: chosen = the step; rejected = a wrong sibling
                   step from the same prefix, else the runner-up branch (the continuation forced
                   from the second most likely first token).
  confident_wrong  label wrong, confidence >= tau_high: rejected = the step; chosen = a right sibling.
Only prefixes whose earlier steps are all labelled right give pairs: past an error, a "confidently
wrong" step is mostly a faithful copy of that error, and training on it hurts accuracy.

Building pairs is two passes, because siblings are sampled only where a candidate needs them:
`find_candidates` picks the steps (and prefixes) to pair, the caller samples and labels siblings
from those prefixes, then `build_pairs` matches each candidate with a sibling.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

CORRECT_UNSURE = "correct_unsure"
CONFIDENT_WRONG = "confident_wrong"


@dataclasses.dataclass(frozen=True)
class ScoredStep:
    text: str
    confidence: float
    label: bool  # True = right
    ending: str = "\n\n"  # what followed the step: the delimiter, or "" for a final step (EOS)


@dataclasses.dataclass(frozen=True)
class Solution:
    """One sampled solution, split into scored, labelled steps."""

    question_id: str
    prompt: str  # the text the model was prompted with
    steps: tuple[ScoredStep, ...]


@dataclasses.dataclass(frozen=True)
class Candidate:
    solution: Solution
    index: int  # which step
    kind: str  # CORRECT_UNSURE | CONFIDENT_WRONG

    @property
    def step(self) -> ScoredStep:
        return self.solution.steps[self.index]

    @property
    def prefix_key(self) -> tuple[str, tuple[str, ...]]:
        """Identifies the prefix: (question id, earlier step texts)."""
        return self.solution.question_id, tuple(s.text for s in self.solution.steps[: self.index])


@dataclasses.dataclass(frozen=True)
class Pair:
    prompt: str  # prompt + earlier steps, each followed by the delimiter
    chosen: str
    rejected: str
    kind: str
    question_id: str
    step_index: int
    chosen_confidence: float
    rejected_confidence: float
    weight: float = 1.0


def clean_prefix_steps(solutions: Iterable[Solution]) -> list[ScoredStep]:
    """Every step whose earlier steps are all right (the population thresholds are taken over)."""
    out = []
    for solution in solutions:
        for step in solution.steps:
            out.append(step)
            if not step.label:
                break
    return out


def quantile_thresholds(solutions: Sequence[Solution], low_q: float, high_q: float) -> tuple[float, float]:
    """(tau_low, tau_high) as quantiles of step confidence over clean-prefix steps."""
    if not 0 <= low_q <= 1 or not 0 <= high_q <= 1:
        raise ValueError(f"quantiles must be in [0, 1], got {low_q} and {high_q}")
    conf = [s.confidence for s in clean_prefix_steps(solutions)]
    if not conf:
        raise ValueError("no steps to take confidence quantiles over")
    return float(np.quantile(conf, low_q)), float(np.quantile(conf, high_q))


def find_candidates(solutions: Iterable[Solution], tau_low: float, tau_high: float) -> list[Candidate]:
    """Steps that make pairs: right but below tau_low, or wrong at or above tau_high, clean prefix only."""
    out = []
    for solution in solutions:
        for k, step in enumerate(solution.steps):
            if step.label and step.confidence < tau_low:
                out.append(Candidate(solution, k, CORRECT_UNSURE))
            elif not step.label and step.confidence >= tau_high:
                out.append(Candidate(solution, k, CONFIDENT_WRONG))
            if not step.label:
                break  # later steps sit on a wrong prefix
    return out


def prompt_with_prefix(candidate: Candidate, delimiter: str) -> str:
    """The DPO prompt of a candidate: its prompt and the earlier steps, each ending in the delimiter."""
    earlier = candidate.solution.steps[: candidate.index]
    return candidate.solution.prompt + "".join(s.text + delimiter for s in earlier)


def build_pairs(
    candidates: Sequence[Candidate],
    siblings: dict[tuple[str, tuple[str, ...]], Sequence[ScoredStep]],
    runner_up: dict[tuple[str, tuple[str, ...]], ScoredStep] | None = None,
    delimiter: str = "\n\n",
) -> tuple[list[Pair], Counter]:
    """Matches each candidate with a sibling of the opposite label from the same prefix.

    siblings: prefix_key -> alternative next steps sampled from that prefix (labelled, scored);
    runner_up: prefix_key -> the runner-up branch, used as the rejected side of a correct_unsure step
    that has no wrong sibling. Completions are each step's text and its `ending`. Among siblings, the most extreme one is taken (the most confident wrong
    sibling to reject, the most confident right sibling to choose). Pairs are de-duplicated on
    (prompt, chosen, rejected). Returns (pairs, counts): counts has one entry per kind made, plus
    'no_sibling' (candidates left without a partner) and 'duplicate'.
    """
    runner_up = runner_up or {}
    pairs, seen, counts = [], set(), Counter()
    for c in candidates:
        options = [s for s in siblings.get(c.prefix_key, ()) if s.text.strip() != c.step.text.strip()]
        if c.kind == CORRECT_UNSURE:
            wrong = [s for s in options if not s.label]
            other = max(wrong, key=lambda s: s.confidence) if wrong else runner_up.get(c.prefix_key)
            if other is not None and (other.label or other.text.strip() == c.step.text.strip()):
                other = None  # a right or identical runner-up is no rejected step
            chosen, rejected = c.step, other
        else:
            right = [s for s in options if s.label]
            chosen, rejected = (max(right, key=lambda s: s.confidence) if right else None), c.step
        if chosen is None or rejected is None:
            counts["no_sibling"] += 1
            continue
        prompt = prompt_with_prefix(c, delimiter)
        key = (prompt, chosen.text, rejected.text)
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        counts[c.kind] += 1
        pairs.append(Pair(
            prompt=prompt, chosen=chosen.text + chosen.ending, rejected=rejected.text + rejected.ending, kind=c.kind,
            question_id=c.solution.question_id, step_index=c.index,
            chosen_confidence=chosen.confidence, rejected_confidence=rejected.confidence,
        ))
    return pairs, counts
