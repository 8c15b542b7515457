"""CaT's results on the host: each question's tree of paths, the path that answers, and the tree as text.

`cat.search` records every round on device (`cat.Record`: per slot, its path, parent, step tokens and
confidences, and whether it finished, was pruned or dropped); once the search ends it reads the
records to the host and `build_paths` turns a question's slots into its root-to-leaf paths, with the
steps each shares with the path it branched from. `choose` picks the answering path and `render`
prints the tree for `caspo-jax cat`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

from caspo_jax.data import grading
from caspo_jax.eval import metrics

if TYPE_CHECKING:
    from caspo_jax.infer.cat import Record


@dataclasses.dataclass
class Path:
    """One root-to-leaf path of a question's tree (host side)."""

    id: int
    parent: int | None  # the path it branched from (None: from the root)
    started: int  # round of its first own step
    tokens: list[int]  # all its tokens, shared prefix included
    steps: list[str]
    step_confidence: list[float]
    confidence: float
    status: str  # 'finished' | 'pruned' | 'dropped' (not in the top W, or no token budget left) | 'unfinished' (out of rounds)
    ended: int  # round of its last step
    text: str = ""
    answer: str | None = None
    own_tokens: int = 0  # tokens generated for it (not shared with its parent)


@dataclasses.dataclass
class CaTResult:
    """One question: the answer, the path that gives it, every path, tokens generated, wall seconds
    (the batch's time divided by its questions) and rounds run. batch_rows: the rows the batch this
    question ran in computed in each round (with compaction they shrink as paths end); row_steps:
    sum over rounds of rows * decode iterations, the batch's compute in row-tokens."""

    answer: str | None
    chosen: int | None  # index into paths
    paths: list[Path]
    tokens: int
    seconds: float
    rounds: int
    batch_rows: list[int] = dataclasses.field(default_factory=list)
    row_steps: int = 0


def build_paths(records: Sequence[Record], row0: int, r: int, tokenizer) -> list[Path]:
    """The paths of the question whose slots are [row0, row0 + r), from every round's record (read to
    the host) and the tokenizer that decodes their steps."""
    paths: dict[int, Path] = {}
    steps: dict[int, list[tuple[int, list[int], float]]] = {}
    for n, rec in enumerate(records):
        for row in range(row0, row0 + r):
            if not rec.live[row]:
                continue
            pid, parent = int(rec.path[row]), int(rec.parent[row])
            own = rec.tokens[row, : rec.lengths[row]].tolist()
            if pid not in paths:
                steps[pid] = [s for s in steps.get(parent, []) if s[0] < n]
                paths[pid] = Path(pid, None if parent < 0 else parent, n, [], [], [], 0.0, "unfinished", n)
            steps[pid].append((n, own, float(rec.step_conf[row])))
            p = paths[pid]
            p.confidence, p.ended, p.own_tokens = float(rec.path_conf[row]), n, p.own_tokens + len(own)
            p.status = "finished" if rec.finished[row] else "pruned" if rec.pruned[row] else "dropped"
    for pid, p in paths.items():
        if p.status == "dropped" and p.ended == len(records) - 1:
            p.status = "unfinished"
        p.tokens = [t for _, own, _ in steps[pid] for t in own]
        p.step_confidence = [c for _, _, c in steps[pid]]
        p.steps = [tokenizer.decode(own, skip_special_tokens=True) for _, own, _ in steps[pid]]
        p.text = tokenizer.decode(p.tokens, skip_special_tokens=True)
        p.answer = grading.extract_answer(p.text)
    return [paths[k] for k in sorted(paths)]


def choose(paths: Sequence[Path], rule: str) -> int | None:
    """The answering path: 'vote' (confidence-weighted, over finished paths; over unfinished ones if
    none finished) or 'best' (the most confident of them)."""
    pool = [i for i, p in enumerate(paths) if p.status == "finished"]
    pool = pool or [i for i, p in enumerate(paths) if p.status == "unfinished"]
    pool = [i for i in pool if paths[i].answer is not None] or pool
    if not pool:
        return None
    if rule == "best":
        return max(pool, key=lambda i: paths[i].confidence)
    answers, weights = [paths[i].answer for i in pool], [paths[i].confidence for i in pool]
    won = metrics.majority_vote(answers, grading.grade_answer, weights)
    return None if won is None else pool[won]


def render(result: CaTResult) -> str:
    """The tree as indented text: one line per step, with its confidence, then the answer."""
    lines = []
    for p in result.paths:
        mark = " <- answer" if result.chosen is not None and result.paths[result.chosen] is p else ""
        origin = "root" if p.parent is None else f"path {p.parent}"
        lines.append(f"path {p.id} (from {origin} at round {p.started}): {p.status} at round {p.ended}, "
                     f"confidence {p.confidence:.3f}, answer {p.answer!r}{mark}")
        for n, (text, conf) in enumerate(zip(p.steps, p.step_confidence)):
            shared = "= " if n < p.started else "  "  # '=': the step it shares with the path it branched from
            lines.append(f"  {shared}[{conf:.3f}] {text.strip()!r}")
    lines.append(f"answer: {result.answer!r}  tokens: {result.tokens}  rounds: {result.rounds}  "
                 f"seconds: {result.seconds:.2f}")
    return "\n".join(lines)
