"""Records -> token ids -> packed, length-bucketed batches, served by a resumable grain pipeline.

Tokenisation follows TRL: the prompt, prompt + chosen and prompt + rejected are tokenised whole and the
completions start where they diverge from the prompt's tokens, so BPE merges across the boundary are
the ones the model sees at inference.

A pair becomes one packed row, [prompt | chosen | rejected | padding], that the model reads in one
forward: the prompt is computed once, positions restart after it (rejected has the positions chosen
has), and `segments` tells the attention mask that rejected never sees chosen (see
`caspo_jax.train.dpo.packed_mask`). A batch (numpy, then device arrays) holds:

  tokens, positions, segments    [B, T] int32   segments: PAD 0, PROMPT 1, CHOSEN 2, REJECTED 3
  gather, targets, sides         [B, C] int32   completion token k is `targets[:, k]`, predicted by the
                                                hidden state at row index `gather[:, k]`; sides: PAD,
                                                CHOSEN or REJECTED
  weights, ref_chosen_logps, ref_rejected_logps  [B] f32

T and C are rounded up to a few sizes per power of two (`bucket`), so a run compiles a handful of
shapes. An SFT row is the same with no rejected part. Short batches are filled with zero-weight rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import grain
import numpy as np

from caspo_jax.config import DataConfig
from caspo_jax.data.pairs_io import PairRecord
from caspo_jax.model import tokenizer as tok_lib

PAD, PROMPT, CHOSEN, REJECTED = 0, 1, 2, 3  # segment ids
Example = dict  # prompt, chosen, rejected: int32 ids; weight, ref_chosen_logps, ref_rejected_logps: f32


@dataclasses.dataclass(frozen=True)
class TokenizeStats:
    records: int
    truncated_prompts: int
    truncated_completions: int

    def describe(self, max_length: int) -> str:
        return (
            f"{self.records} records; {self.truncated_prompts} prompts truncated from the left and "
            f"{self.truncated_completions} completions cut to fit data.max_length={max_length}"
        )


def bucket(n: int, minimum: int = 16) -> int:
    """n rounded up to one of four sizes per power of two (16, 20, 24, 28, 32, 40, ...): <= 25% padding."""
    if n <= minimum:
        return minimum
    step = max(1, (1 << (n - 1).bit_length()) >> 3)
    return -(-n // step) * step


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize(records: Sequence[PairRecord], tokenizer, config: DataConfig) -> tuple[list[Example], TokenizeStats]:
    """Token ids of every record, truncated by `config` (or a ValueError naming the record)."""
    prompts = [tok_lib.format_prompt(tokenizer, r.prompt, config.chat_template) for r in records]
    texts = prompts + [p + r.chosen for p, r in zip(prompts, records)]
    pairs = records[0].rejected is not None
    if pairs:
        texts += [p + r.rejected for p, r in zip(prompts, records)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = len(records)
    eos = [tokenizer.eos_token_id] if config.add_eos else []
    examples, cut_prompts, cut_completions = [], 0, 0
    for i, record in enumerate(records):
        prompt, with_chosen = ids[i], ids[n + i]
        with_rejected = ids[2 * n + i] if pairs else with_chosen
        start = min(_common_prefix(prompt, with_chosen), _common_prefix(prompt, with_rejected))
        if start == 0:
            raise ValueError(f"{record.where}: the prompt is empty after tokenisation")
        completions = [with_chosen[start:] + eos] + ([with_rejected[start:] + eos] if pairs else [])
        for name, c in zip(("chosen", "rejected"), completions):
            if not c:
                raise ValueError(f"{record.where}: {name} adds no tokens after the prompt")
        lengths = [len(c) for c in completions]
        prompt, completions = _truncate(prompt[:start], completions, config, record.where)
        cut_prompts += len(prompt) < start
        cut_completions += [len(c) for c in completions] != lengths
        examples.append(_example(prompt, completions, record))
    return examples, TokenizeStats(n, cut_prompts, cut_completions)


def _truncate(
    prompt: list[int], completions: list[list[int]], config: DataConfig, where: str
) -> tuple[list[int], list[list[int]]]:
    """Fits prompt + each completion into max_length: completions keep at most max_length - 1 tokens
    (from the start), the prompt its newest tokens; or raises when config.truncation is 'error'."""
    longest = max(len(c) for c in completions)
    if len(prompt) + longest <= config.max_length:
        return prompt, completions
    if config.truncation == "error":
        raise ValueError(
            f"{where}: prompt + completion is {len(prompt) + longest} tokens, over data.max_length="
            f"{config.max_length} (data.truncation=left drops the prompt's oldest tokens instead)"
        )
    completions = [c[: config.max_length - 1] for c in completions]
    keep = config.max_length - max(len(c) for c in completions)
    return prompt[len(prompt) - keep :], completions


def _example(prompt: list[int], completions: list[list[int]], record: PairRecord) -> Example:
    as_ids = functools.partial(np.asarray, dtype=np.int32)
    return {
        "prompt": as_ids(prompt),
        "chosen": as_ids(completions[0]),
        "rejected": as_ids(completions[1] if len(completions) > 1 else []),
        "weight": np.float32(record.weight),
        "ref_chosen_logps": np.float32(record.ref_chosen_logps or 0.0),
        "ref_rejected_logps": np.float32(record.ref_rejected_logps or 0.0),
    }


def with_reference(examples: list[Example], chosen: np.ndarray, rejected: np.ndarray) -> list[Example]:
    """Examples with reference log-probs chosen, rejected: [N] f32 attached."""
    return [
        {**ex, "ref_chosen_logps": np.float32(c), "ref_rejected_logps": np.float32(r)}
        for ex, c, r in zip(examples, chosen, rejected, strict=True)
    ]


def pack(examples: Sequence[Example], batch_size: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """Packs up to batch_size examples (filled with zero-weight rows) into the batch described above.

    Bucket sizes come from all examples, so every process agrees on shapes; only `rows` are built.
    """
    examples = list(examples) + [{**examples[0], "weight": np.float32(0)}] * (batch_size - len(examples))
    t = bucket(max(len(e["prompt"]) + len(e["chosen"]) + len(e["rejected"]) for e in examples))
    c = bucket(max(len(e["chosen"]) + len(e["rejected"]) for e in examples))
    examples = examples[rows]
    b = len(examples)
    out = {k: np.zeros((b, t), np.int32) for k in ("tokens", "positions", "segments")}
    out.update({k: np.zeros((b, c), np.int32) for k in ("gather", "targets", "sides")})
    for i, e in enumerate(examples):
        p, ch, rj = e["prompt"], e["chosen"], e["rejected"]
        n_p, n_c, n_r = len(p), len(ch), len(rj)
        n = n_p + n_c + n_r
        out["tokens"][i, :n] = np.concatenate([p, ch, rj])
        out["positions"][i, :n] = np.concatenate([np.arange(n_p + n_c), n_p + np.arange(n_r)])
        out["segments"][i, :n] = np.repeat([PROMPT, CHOSEN, REJECTED], [n_p, n_c, n_r])
        # Token k of a completion is predicted by the hidden state before it; the first token of both
        # completions by the last prompt position.
        out["gather"][i, : n_c + n_r] = np.concatenate(
            [n_p - 1 + np.arange(n_c), [n_p - 1] * min(n_r, 1), n_p + n_c + np.arange(n_r - 1)]
        )
        out["targets"][i, : n_c + n_r] = np.concatenate([ch, rj])
        out["sides"][i, : n_c + n_r] = np.repeat([CHOSEN, REJECTED], [n_c, n_r])
    for key in ("weight", "ref_chosen_logps", "ref_rejected_logps"):
        out[key if key != "weight" else "weights"] = np.asarray([e[key] for e in examples], np.float32)
    return out


def dataset(
    examples: Sequence[Example],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epochs: int | None = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Global batches of `batch_size` packed examples; each process builds its own contiguous rows.

    Shuffling is deterministic by (seed, epoch); batches run on across epoch ends (only the very last
    batch may be short: it is filled with zero-weight rows); epochs=None repeats forever.
    """
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the process count {process_count}")
    local = batch_size // process_count
    rows = slice(process_index * local, (process_index + 1) * local)
    ds = grain.MapDataset.source(list(examples))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(epochs)
    return ds.batch(batch_size, batch_fn=functools.partial(pack, batch_size=batch_size, rows=rows))


def steps_per_run(num_examples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    return max_steps if max_steps is not None else -(-num_examples * epochs // batch_size)


def iterator(ds: grain.MapDataset) -> grain.DatasetIterator:
    """A checkpointable iterator (`get_state`/`set_state`) that packs batches ahead on a few threads."""
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
