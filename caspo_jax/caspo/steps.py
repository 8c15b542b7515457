"""Reasoning steps: split a solution into steps and map each step to the tokens that produced it.

A step is the text between delimiters: a blank line ("\n\n") by default, any regex, or "Step k:"
headers. `token_spans` maps steps to [start, end) token indices through the tokens' character
offsets, so per-token confidence aggregates per step (a token belongs to the step in which its first
non-whitespace character lies; a whitespace-only token between steps belongs to no step).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

BLANK_LINE = r"\n\s*\n"
STEP_HEADER = r"(?=Step \d+:)"
SPLITTERS = {"blank_line": BLANK_LINE, "step_header": STEP_HEADER}


@dataclasses.dataclass(frozen=True)
class Step:
    text: str  # stripped step text
    start: int  # character offsets of the stripped text in the solution
    end: int


def split_steps(solution: str, splitter: str = "blank_line") -> list[Step]:
    """Steps of a solution; `splitter` is 'blank_line', 'step_header' or a regex of the delimiter."""
    pattern = re.compile(SPLITTERS.get(splitter, splitter))
    steps, cursor = [], 0
    bounds = [(m.start(), m.end()) for m in pattern.finditer(solution) if m.end() > m.start() or m.start() > 0]
    for begin, finish in bounds + [(len(solution), len(solution))]:
        _append(steps, solution, cursor, begin)
        cursor = finish
    return steps


def _append(steps: list[Step], text: str, begin: int, end: int) -> None:
    chunk = text[begin:end]
    stripped = chunk.strip()
    if stripped:
        offset = begin + len(chunk) - len(chunk.lstrip())
        steps.append(Step(stripped, offset, offset + len(stripped)))


def token_char_offsets(token_texts: Sequence[str]) -> np.ndarray:
    """[N + 1] int: character offset where each token's text starts in the concatenated text."""
    return np.concatenate([[0], np.cumsum([len(t) for t in token_texts])]).astype(np.int64)


def token_spans(steps: Sequence[Step], token_texts: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) token indices of each step, given each token's decoded text (in order).

    A token belongs to the step containing its first non-whitespace character; steps that no token
    starts in (possible only when one token spans two steps) get the token that covers their start.
    """
    offsets = token_char_offsets(token_texts)
    anchors = np.array(  # first non-whitespace character; -1 for whitespace-only tokens
        [offsets[i] + len(t) - len(t.lstrip()) if t.strip() else -1 for i, t in enumerate(token_texts)]
    )
    spans = []
    for step in steps:
        inside = np.nonzero((anchors >= step.start) & (anchors < step.end))[0]
        if inside.size:
            spans.append((int(inside[0]), int(inside[-1]) + 1))
        else:
            covering = int(np.searchsorted(offsets, step.start, side="right") - 1)
            spans.append((covering, covering + 1))
    return spans


def step_confidences(
    token_confidence: np.ndarray, spans: Sequence[tuple[int, int]], how: str = "mean"
) -> np.ndarray:
    """token_confidence: [N] -> [num_steps] mean (or min) over each step's tokens."""
    if how not in ("mean", "min"):
        raise ValueError(f"unknown step aggregation {how!r}; expected 'mean' or 'min'")
    reduce = np.mean if how == "mean" else np.min
    return np.array([reduce(token_confidence[a:b]) for a, b in spans], dtype=np.float32)
