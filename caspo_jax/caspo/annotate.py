"""Solutions -> annotated, labelled steps: sampling, token and step confidence, labels, siblings.

A *sample* is one solution as a dict: question_id, question, reference, prompt, sample (its index
among the question's samples), text, token_ids [n] and token_conf [n] (the confidence of each
generated token). Samples come from the policy (`sample_solutions`, N per question sharing a
prefill) or from existing text scored by teacher forcing (`score_solutions`, for `caspo-jax
annotate`). `annotate` splits them into steps, aggregates step confidence, labels every step and
returns both `pairs.Solution`s and the step-wise dataset's rows. `sample_siblings` samples M
alternative next steps from each candidate's prefix (one prefill per prefix, each row stopped at
its step's end) and scores and labels them, for `pairs.build_pairs`; `runner_up_steps` makes the
runner-up branch (second most likely first token, then greedy) where a right-but-unsure step has no
wrong sibling.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from caspo_jax.caspo import pairs as pairs_lib
from caspo_jax.caspo import steps as steps_lib
from caspo_jax.caspo.label import LabelItem, Labeler
from caspo_jax.data import prompts
from caspo_jax.data.sources import Problem
from caspo_jax.infer import confidence
from caspo_jax.infer.sampler import Sampler, SamplingConfig
from caspo_jax.model import qwen
from caspo_jax.model import tokenizer as tokenizer_lib

DELIMITER = "\n\n"


def prompt_text(sampler: Sampler, question: str) -> str:
    """The question as the policy sees it (the same prompt evaluation uses)."""
    return prompts.build_prompt(question, sampler.tokenizer)


def sample_solutions(
    sampler: Sampler, problems: Sequence[Problem], num_samples: int, *, temperature: float, top_p: float,
    max_new_tokens: int, signal: str, seed: int, batch_size: int = 8,
) -> list[dict]:
    """num_samples solutions per problem (prompt-major), each with its tokens and token confidences."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    pieces = sampler.pieces
    out = []
    for start in range(0, len(problems), batch_size):
        batch = problems[start : start + batch_size]
        texts = [prompt_text(sampler, p.question) for p in batch]
        result = sampler.generate(
            tokenizer_lib.encode(sampler.tokenizer, texts), sampling, num_samples=num_samples, seed=seed,
            first_row=start * num_samples,
        )
        conf = np.asarray(getattr(result.signals, signal))
        for row in range(len(batch) * num_samples):
            problem, n = batch[row // num_samples], int(result.lengths[row])
            ids = result.tokens[row, :n].tolist()
            out.append({
                "question_id": problem.id, "question": problem.question, "reference": problem.answer,
                "prompt": texts[row // num_samples], "sample": row % num_samples,
                "text": "".join(pieces[t] for t in ids), "token_ids": ids,
                "token_conf": [float(c) for c in conf[row, :n]],
            })
    return out


def score_solutions(sampler: Sampler, records: Sequence[dict], signal: str, bucket: int = 64) -> list[dict]:
    """Teacher-forced token confidences of existing solutions.

    records: dicts with question_id, question, reference, solution (and optionally sample) -> samples.
    Confidence of token t is the signal of the distribution that predicted it (logits at t - 1).
    """
    tok, pieces = sampler.tokenizer, sampler.pieces
    forward = jax.jit(qwen.forward, static_argnums=1)
    out = []
    for record in records:
        prompt = prompt_text(sampler, record["question"])
        p_ids, s_ids = tokenizer_lib.encode(tok, [prompt, record["solution"]])
        ids = p_ids + s_ids
        width = -(-len(ids) // bucket) * bucket
        tokens = np.full((1, width), sampler.pad_token_id, np.int32)
        tokens[0, : len(ids)] = ids
        mask = (np.arange(width) < len(ids)).astype(np.int32)[None]
        logits = forward(sampler.params, sampler.model, jnp.asarray(tokens), jnp.asarray(mask))
        signals = confidence.token_signals(logits)
        conf = np.asarray(getattr(signals, signal))[0, len(p_ids) - 1 : len(ids) - 1]
        out.append({
            "question_id": str(record["question_id"]), "question": record["question"],
            "reference": str(record["reference"]), "prompt": prompt, "sample": int(record.get("sample", 0)),
            "text": "".join(pieces[t] for t in s_ids), "token_ids": s_ids, "token_conf": [float(c) for c in conf],
        })
    return out


def _scored_steps(text: str, token_ids: Sequence[int], token_conf: Sequence[float], pieces: Sequence[str],
                  splitter: str, aggregation: str) -> tuple[list[steps_lib.Step], list[tuple[int, int]], np.ndarray]:
    steps = steps_lib.split_steps(text, splitter)
    if not steps:
        return [], [], np.zeros(0, np.float32)
    spans = steps_lib.token_spans(steps, [pieces[t] for t in token_ids])
    return steps, spans, steps_lib.step_confidences(np.asarray(token_conf, np.float32), spans, aggregation)


def annotate(
    samples: Sequence[dict], labeler: Labeler, pieces: Sequence[str], *, splitter: str, aggregation: str,
    round_index: int,
) -> tuple[list[pairs_lib.Solution], list[dict]]:
    """Samples -> (solutions for pair building, step-wise dataset rows). Stepless samples give neither."""
    scored = [(s, *_scored_steps(s["text"], s["token_ids"], s["token_conf"], pieces, splitter, aggregation)) for s in samples]
    scored = [x for x in scored if x[1]]
    items = [LabelItem(s["question"], s["reference"], tuple(st.text for st in steps), s["text"]) for s, steps, _, _ in scored]
    labels = labeler.label(items) if items else []
    solutions, rows = [], []
    for (s, steps, spans, conf), step_labels in zip(scored, labels):
        last = len(steps) - 1
        solutions.append(pairs_lib.Solution(s["question_id"], s["prompt"], tuple(
            pairs_lib.ScoredStep(st.text, float(c), bool(lab), DELIMITER if k < last else "")
            for k, (st, c, lab) in enumerate(zip(steps, conf, step_labels))
        )))
        for k, (st, (a, b), c, lab) in enumerate(zip(steps, spans, conf, step_labels)):
            rows.append({
                "round": round_index, "question_id": s["question_id"], "question": s["question"],
                "reference": s["reference"], "sample": s["sample"], "step_index": k, "text": st.text,
                "token_start": a, "token_end": b, "token_confidences": s["token_conf"][a:b],
                "step_confidence": float(c), "label": bool(lab), "labeler": labeler.name,
            })
    return solutions, rows


def sample_siblings(
    sampler: Sampler, candidates: Sequence[pairs_lib.Candidate], labeler: Labeler, questions: dict[str, Problem],
    *, num_siblings: int, temperature: float, max_new_tokens: int, signal: str, splitter: str, aggregation: str,
    seed: int, batch_size: int = 8,
) -> dict[tuple[str, tuple[str, ...]], list[pairs_lib.ScoredStep]]:
    """prefix_key -> up to num_siblings scored, labelled next steps sampled from that prefix."""
    prefixes = {c.prefix_key: c for c in candidates}  # one entry per prefix, in first-seen order
    keys = list(prefixes)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, step_delimiter=DELIMITER,
                              until_step_end=True)
    pieces = sampler.pieces
    found: list[tuple[tuple, pairs_lib.ScoredStep]] = []  # (prefix key, unlabelled step)
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        texts = [pairs_lib.prompt_with_prefix(prefixes[k], DELIMITER) for k in chunk]
        out = sampler.generate(tokenizer_lib.encode(sampler.tokenizer, texts), sampling, num_samples=num_siblings,
                               seed=seed, first_row=start * num_siblings)
        conf = np.asarray(getattr(out.signals, signal))
        for row in range(len(chunk) * num_siblings):
            n = int(out.lengths[row])
            ids = out.tokens[row, :n].tolist()
            text = "".join(pieces[t] for t in ids)
            steps, _, step_conf = _scored_steps(text, ids, conf[row, :n], pieces, splitter, aggregation)
            if steps:
                ending = DELIMITER if text.rstrip(" ").endswith(DELIMITER) else ""
                found.append((chunk[row // num_siblings], pairs_lib.ScoredStep(steps[0].text, float(step_conf[0]), False, ending)))
    items = []
    for key, step in found:
        problem = questions[key[0]]
        items.append(LabelItem(problem.question, problem.answer, key[1] + (step.text,)))
    labels = labeler.label(items) if items else []
    siblings: dict[tuple, list[pairs_lib.ScoredStep]] = {k: [] for k in keys}
    for (key, step), step_labels in zip(found, labels):
        siblings[key].append(pairs_lib.ScoredStep(step.text, step.confidence, bool(step_labels[-1]), step.ending))
    return siblings


def runner_up_steps(
    sampler: Sampler, candidates: Sequence[pairs_lib.Candidate], labeler: Labeler, questions: dict[str, Problem],
    *, max_new_tokens: int, signal: str, splitter: str, aggregation: str,
) -> dict[tuple[str, tuple[str, ...]], pairs_lib.ScoredStep]:
    """prefix_key -> the runner-up branch of each correct-but-unsure candidate's prefix: the step
    that starts with the second most likely next token and continues greedily to the step's end
    (the ICLR version's rejected step), scored and labelled like any sibling."""
    prefixes = {c.prefix_key: c for c in candidates if c.kind == pairs_lib.CORRECT_UNSURE}
    if not prefixes:
        return {}
    keys = list(prefixes)
    ids = tokenizer_lib.encode(sampler.tokenizer, [pairs_lib.prompt_with_prefix(prefixes[k], DELIMITER) for k in keys])
    tokens, mask = sampler.left_pad(ids, 1, 1)
    # Next-token distribution after each prefix: the LM head on the last position only.
    model = qwen.Transformer(sampler.model)
    hidden, _ = model.apply({"params": sampler.params}, jnp.asarray(tokens), qwen.positions_from_mask(jnp.asarray(mask)),
                            qwen.causal_mask(jnp.asarray(mask)))
    logits = model.apply({"params": sampler.params}, hidden[:, -1], method=qwen.Transformer.logits)[: len(keys)]
    second = np.asarray(jax.lax.top_k(logits, 2)[1][:, 1])  # [P] the runner-up first token
    first_conf = np.asarray(getattr(confidence.token_signals(logits), signal))
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, step_delimiter=DELIMITER, until_step_end=True)
    out = sampler.generate([p + [int(t)] for p, t in zip(ids, second)], sampling)
    conf = np.asarray(getattr(out.signals, signal))
    pieces, found = sampler.pieces, []
    for row, key in enumerate(keys):
        n = int(out.lengths[row])
        step_ids = [int(second[row])] + out.tokens[row, :n].tolist()
        text = "".join(pieces[t] for t in step_ids)
        steps, _, step_conf = _scored_steps(text, step_ids, [first_conf[row], *conf[row, :n]], pieces, splitter, aggregation)
        if steps:
            ending = DELIMITER if text.rstrip(" ").endswith(DELIMITER) else ""
            found.append((key, pairs_lib.ScoredStep(steps[0].text, float(step_conf[0]), False, ending)))
    items = [LabelItem(questions[k[0]].question, questions[k[0]].answer, k[1] + (s.text,)) for k, s in found]
    labels = labeler.label(items) if items else []
    return {k: pairs_lib.ScoredStep(s.text, s.confidence, bool(lab[-1]), s.ending) for (k, s), lab in zip(found, labels)}
