"""Decoding methods compared by the evaluation: each turns a batch of prompts into scored traces.

A method takes the sampler, prompt token ids and the eval config, and returns one `Decision` per
prompt: every sampled trace (text, answer, tokens, step confidences) and which trace answers. Every
method scores traces the same way (`score_trace`): step confidence is the mean token confidence over
the step's tokens, trace confidence the running mean over steps (CaT's path confidence), so methods
differ only in how they spend tokens and pick the answer. `METHODS` is the registry the CLI reads.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from caspo_jax.caspo import steps as steps_lib
from caspo_jax.data import grading
from caspo_jax.eval import metrics
from caspo_jax.infer import cat, deepconf
from caspo_jax.infer.sampler import Sampler, SampleOutput, SamplingConfig


@dataclasses.dataclass
class Trace:
    text: str
    answer: str | None
    tokens: int
    confidence: float  # running mean of step confidences
    steps: list[str]
    step_confidence: list[float]
    status: str = "finished"  # CaT's path status ('finished' | 'pruned' | 'dropped' | 'unfinished')


@dataclasses.dataclass
class Decision:
    traces: list[Trace]
    chosen: int | None  # index of the trace whose answer is the method's answer, None: no answer
    row_steps: int = 0  # compute of the batch this question ran in: decoded rows * decode iterations

    @property
    def answer(self) -> str | None:
        return None if self.chosen is None else self.traces[self.chosen].answer

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.traces)


def score_trace(text: str, token_ids: np.ndarray, token_conf: np.ndarray, pieces: Sequence[str], splitter: str) -> Trace:
    """token_ids, token_conf: [n] of one generated row -> a Trace with per-step confidence."""
    steps = steps_lib.split_steps(text, splitter)
    token_texts = [pieces[int(t)] for t in token_ids]
    if steps and "".join(token_texts) == text:
        spans = steps_lib.token_spans(steps, token_texts)
        step_conf = steps_lib.step_confidences(token_conf, spans).tolist()
    else:  # no steps, or special tokens in the text: the whole trace is one step
        step_conf = [float(np.mean(token_conf))] if len(token_conf) else []
    return Trace(
        text=text,
        answer=grading.extract_answer(text),
        tokens=int(len(token_ids)),
        confidence=float(np.mean(step_conf)) if step_conf else 0.0,
        steps=[s.text for s in steps] or [text.strip()],
        step_confidence=[float(c) for c in step_conf],
    )


def traces(sampler: Sampler, out: SampleOutput, pieces: Sequence[str], splitter: str, signal: str) -> list[Trace]:
    texts = sampler.texts(out)
    conf = np.asarray(getattr(out.signals, signal))
    return [
        score_trace(texts[r], out.tokens[r, : out.lengths[r]], conf[r, : out.lengths[r]], pieces, splitter)
        for r in range(len(texts))
    ]


def equivalent_answers(a: str, b: str) -> bool:
    """Answer equivalence for votes (math-verify through `grading.grade_answer`)."""
    return grading.grade_answer(a, b)


def greedy(sampler: Sampler, prompts: list[list[int]], cfg, pieces: Sequence[str]) -> list[Decision]:
    """One greedy chain of thought per prompt."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    out = sampler.generate(prompts, sampling, seed=cfg.seed)
    return [Decision([t], 0, row_steps(out)) for t in traces(sampler, out, pieces, cfg.step_splitter, cfg.signal)]


def row_steps(out: SampleOutput) -> int:
    """A one-decode batch's compute: every row runs until the longest one ends."""
    return int(len(out.lengths) * max(int(np.max(out.lengths, initial=0)), 1))


def self_consistency(sampler: Sampler, prompts: list[list[int]], cfg, pieces: Sequence[str]) -> list[Decision]:
    """K sampled chains per prompt (one shared prefill); the answer is the majority vote, answers
    clustered by equivalence (math-verify)."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    out = sampler.generate(prompts, sampling, num_samples=cfg.k, seed=cfg.seed)
    every = traces(sampler, out, pieces, cfg.step_splitter, cfg.signal)
    decisions = []
    for q in range(len(prompts)):
        group = every[q * cfg.k : (q + 1) * cfg.k]
        chosen = metrics.majority_vote([t.answer for t in group], equivalent_answers)
        decisions.append(Decision(group, chosen, row_steps(out)))
    return decisions


def deepconf_online(sampler: Sampler, prompts: list[list[int]], cfg, pieces: Sequence[str]) -> list[Decision]:
    """DeepConf online (`infer.deepconf`): K traces per prompt, cfg.cat.warmup of them set the
    stopping threshold; a vote over the traces that were not stopped, weighted by their lowest
    group confidence."""
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    result = deepconf.generate(sampler, prompts, cfg.cat, cfg.k, sampling, seed=cfg.seed)
    every = traces(sampler, result.output, pieces, cfg.step_splitter, cfg.signal)
    decisions = []
    for q in range(len(prompts)):
        rows = range(q * cfg.k, (q + 1) * cfg.k)
        answers = [every[r].answer if result.voting[r] else None for r in rows]
        chosen = metrics.majority_vote(answers, equivalent_answers, [result.lowest[r] for r in rows])
        decisions.append(Decision(every[q * cfg.k : (q + 1) * cfg.k], chosen, result.row_steps))
    return decisions


def confidence_tree(sampler: Sampler, prompts: list[list[int]], cfg, pieces: Sequence[str]) -> list[Decision]:
    """CaT (`infer.cat`) with cfg.cat, its path budget K = cfg.k; one trace per path. Rounds end
    steps at a blank line (the 'blank_line' splitter's delimiter)."""
    cat_cfg = dataclasses.replace(cfg.cat, budget=cfg.k)
    results = cat.search(
        sampler, prompts, cat_cfg, temperature=cfg.temperature, top_p=cfg.top_p,
        signal=cfg.signal, seed=cfg.seed,
    )
    return [
        Decision(
            [Trace(p.text, p.answer, p.own_tokens, p.confidence, p.steps, p.step_confidence, p.status) for p in r.paths],
            r.chosen, r.row_steps,
        )
        for r in results
    ]


Method = Callable[[Sampler, list[list[int]], object, Sequence[str]], list[Decision]]
METHODS: dict[str, Method] = {
    "greedy": greedy, "sc": self_consistency, "deepconf": deepconf_online, "cat": confidence_tree,
}
