"""DeepConf online (Fu et al. 2025), the early-stopping baseline CaT is compared with.

Token confidence is DeepConf's C (`TokenSignals.topk_conf`), group confidence its mean over a sliding
window of the last `window` tokens. `warmup` traces per question run to the end; the threshold is a
percentile of their lowest group confidences (10: DeepConf-high, keeps ~90%; 90: DeepConf-low). The
remaining traces run in one decode whose loop stops a row, on device, as soon as its windowed
confidence drops below its question's threshold (`decoding.FINISH_LOW_CONFIDENCE`). The answer is a
vote over the warm-up and the completed traces, weighted by their lowest group confidence.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import numpy as np

from caspo_jax.config import CaTConfig
from caspo_jax.infer import decoding
from caspo_jax.infer.sampler import Sampler, SampleOutput, SamplingConfig
from caspo_jax.parallel import mesh as mesh_lib


class DeepConfOutput(NamedTuple):
    """P prompts * K traces, prompt-major (each prompt's warm-up traces first)."""

    output: SampleOutput  # numpy, [P * K] rows
    lowest: np.ndarray  # [P * K] f32 lowest group confidence of each trace
    voting: np.ndarray  # [P * K] bool: warm-up or completed (not stopped for low confidence)
    threshold: np.ndarray  # [P] f32
    row_steps: int = 0  # decoded rows * decode iterations over both decodes (compute)


def lowest_group_confidence(conf: np.ndarray, length: int, window: int) -> float:
    """conf: [N] topk_conf of one trace -> min over windows of `window` tokens (the whole trace if shorter)."""
    conf = np.asarray(conf[:length], np.float64)
    if len(conf) == 0:
        return 0.0
    w = min(window, len(conf))
    sums = np.convolve(conf, np.ones(w), mode="valid")
    return float(sums.min() / w)


def generate(
    sampler: Sampler, prompts: Sequence[Sequence[int]], cfg: CaTConfig, k: int, sampling: SamplingConfig, seed: int = 0
) -> DeepConfOutput:
    """K traces per prompt with online early stopping after cfg.warmup warm-up traces."""
    warm_n = min(cfg.warmup, k)
    p = len(prompts)
    warm = sampler.generate(prompts, sampling, num_samples=warm_n, seed=seed)
    lowest_warm = np.array([
        lowest_group_confidence(warm.signals.topk_conf[i], warm.lengths[i], cfg.window) for i in range(p * warm_n)
    ]).reshape(p, warm_n)
    threshold = np.percentile(lowest_warm, cfg.percentile, axis=1).astype(np.float32)  # [P]
    rest_n = k - warm_n
    if rest_n == 0:
        rest, lowest_rest = None, np.zeros((p, 0))
    else:
        rest = _stopping_decode(sampler, prompts, sampling, rest_n, threshold, cfg.window, seed, first_row=p * warm_n)
        lowest_rest = np.array([
            lowest_group_confidence(rest.signals.topk_conf[i], rest.lengths[i], cfg.window) for i in range(p * rest_n)
        ]).reshape(p, rest_n)

    def merge(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        a = a.reshape(p, warm_n, *a.shape[1:])
        if b is None:
            return a.reshape(p * warm_n, *a.shape[2:])
        b = b.reshape(p, rest_n, *b.shape[1:])
        return np.concatenate([a, b], axis=1).reshape(p * k, *a.shape[2:])

    output = jax.tree.map(merge, warm, rest) if rest is not None else warm
    stopped = output.finish == decoding.FINISH_LOW_CONFIDENCE
    lowest = np.concatenate([lowest_warm, lowest_rest], axis=1).reshape(-1)
    steps = sum(len(o.lengths) * max(int(np.max(o.lengths, initial=0)), 1) for o in (warm, rest) if o is not None)
    return DeepConfOutput(output, lowest.astype(np.float32), ~stopped, threshold, steps)


def _stopping_decode(
    sampler: Sampler, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, n: int, threshold: np.ndarray,
    window: int, seed: int, first_row: int,
) -> SampleOutput:
    """n traces per prompt that stop once their windowed topk_conf falls below their prompt's threshold."""
    table = sampler.table(sampling.strings) if sampling.strings else None
    tokens, mask = sampler.left_pad(prompts, sampling.max_new_tokens, n)
    rows = tokens.shape[0] * n
    floor = np.repeat(np.pad(threshold, (0, tokens.shape[0] - len(prompts))), n).astype(np.float32)
    knobs = decoding.Knobs(
        temperature=np.float32(sampling.temperature or 1.0), top_p=np.float32(sampling.top_p),
        eos=sampler.replicate(np.asarray(sampler.eos_token_ids or (-1,), np.int32)),
        pad=np.int32(sampler.pad_token_id), seed=np.int32(seed),
        rows=sampler.to_batch(np.arange(first_row, first_row + rows, dtype=np.int32)), floor=sampler.to_batch(floor),
    )
    cache, logits = decoding.prefill(
        sampler.params, sampler.to_batch(tokens), sampler.to_batch(mask), model=sampler.model, num_samples=n,
        cache_length=tokens.shape[1] + sampling.max_new_tokens, mesh=sampler.mesh,
    )
    plan = sampling.plan()._replace(signals=True, confidence_window=window)
    out, _, _ = decoding.decode(
        sampler.params, cache, logits, knobs, table, model=sampler.model, plan=plan, mesh=sampler.mesh
    )
    return jax.tree.map(lambda x: mesh_lib.to_host(x)[: len(prompts) * n], out)
