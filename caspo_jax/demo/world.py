"""The demo's data: which arith problems are held out, and the supervised set the base model learns.

The arith world (`caspo_jax.data.arith`) gives problems, solutions, the noise model and the exact
step verifier. This file splits its question space once and for all: a question is held out when
a CRC of its text falls in `HELDOUT_BUCKET` (one in ten), whatever the seed, so no seed's training
or CASPO questions can leak into any seed's evaluation, the shipped base model's included.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from caspo_jax.data import arith
from caspo_jax.data.sources import Problem

MIN_OPS, MAX_OPS = 3, 5
NOISE_RATE = 0.25  # share of supervised solutions with one wrong intermediate value (arith.noisy_solution)
HELDOUT_BUCKET = 0  # crc32(question) % 10 == this: held out


def is_heldout(question: str) -> bool:
    return zlib.crc32(question.encode()) % 10 == HELDOUT_BUCKET


def problems(rng: np.random.Generator, count: int, *, heldout: bool, prefix: str) -> list[Problem]:
    """`count` distinct problems on one side of the split, ids f"{prefix}-{i}"."""
    out, seen = [], set()
    while len(out) < count:
        p = arith.sample_problem(rng, MIN_OPS, MAX_OPS)
        if is_heldout(p.question) == heldout and p.question not in seen:
            seen.add(p.question)
            out.append(Problem(f"{prefix}-{len(out)}", p.question, str(p.answer)))
    return out


def sft_records(questions: Sequence[Problem], prompts: Sequence[str], rng: np.random.Generator,
                noise_rate: float = NOISE_RATE) -> list[dict]:
    """{prompt, completion} per question: its solution, with one wrong step at rate `noise_rate`."""
    records = []
    for q, prompt in zip(questions, prompts):
        p = arith.parse_question(q.question)
        text = arith.noisy_solution(p, rng)[0] if rng.random() < noise_rate else p.solution()
        records.append({"prompt": prompt, "completion": text})
    return records
