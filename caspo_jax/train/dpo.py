"""Completion log-probs of packed rows, and the DPO and SFT objectives on a batch.

One forward reads a packed row [prompt | chosen | rejected] (see `caspo_jax.data.pipeline`): the
shared prompt is computed once and the mask keeps rejected from seeing chosen. The LM head then runs
only on the hidden states that predict completion tokens, gathered to [B, C, D] and projected in
chunks of `chunk` positions under `jax.checkpoint`, so neither pass holds more than B * chunk * V
fp32 logits. For CASPO's step pairs (long shared prefixes, short steps) this is most of the saving.

Objectives return a *sum* normalised by a denominator computed from the whole step's batch
(`normaliser`), so micro-batches of an accumulated step add up to exactly the full batch's loss.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from caspo_jax.config import DPOConfig, ModelConfig
from caspo_jax.data.pipeline import CHOSEN, PAD, REJECTED
from caspo_jax.model.qwen import Transformer
from caspo_jax.train import losses

Array = jax.Array
Batch = Mapping[str, Array]  # the keys documented in caspo_jax.data.pipeline


class SequenceLogps(NamedTuple):
    """Per row, [B] f32: summed log-probs and token counts of each completion."""

    chosen: Array
    rejected: Array
    chosen_tokens: Array
    rejected_tokens: Array


def packed_mask(segments: Array) -> Array:
    """segments: [B, T] -> [B, T, T] bool: causal over real tokens, except rejected never sees chosen."""
    t = segments.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    query, key = segments[:, :, None], segments[:, None, :]
    return causal[None] & (key != PAD) & ~((query == REJECTED) & (key == CHOSEN))


def token_logps(params: dict, config: ModelConfig, hidden: Array, targets: Array, chunk: int) -> Array:
    """log p(targets) from hidden: [B, C, D], targets: [B, C] -> [B, C] f32, `chunk` positions at a time."""
    b, c, d = hidden.shape
    chunk = min(chunk, c)
    n = -(-c // chunk)
    pad = n * chunk - c
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(h: Array, t: Array) -> Array:  # [B, chunk, D], [B, chunk] -> [B, chunk]
        logits = Transformer(config).apply({"params": params}, h, method=Transformer.logits)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    out = jax.lax.map(lambda xs: one(*xs), (hidden, targets))  # [n, B, chunk]
    return out.swapaxes(0, 1).reshape(b, n * chunk)[:, :c]


def sequence_logps(params: dict, config: ModelConfig, batch: Batch, chunk: int) -> SequenceLogps:
    """One packed forward -> summed completion log-probs per row (prompt and padding excluded)."""
    hidden, _ = Transformer(config).apply(
        {"params": params}, batch["tokens"], batch["positions"], packed_mask(batch["segments"])
    )
    gathered = jnp.take_along_axis(hidden, batch["gather"][..., None], axis=1)  # [B, C, D]
    logps = token_logps(params, config, gathered, batch["targets"], chunk)
    chosen, rejected = batch["sides"] == CHOSEN, batch["sides"] == REJECTED
    return SequenceLogps(
        chosen=jnp.sum(jnp.where(chosen, logps, 0.0), axis=-1),
        rejected=jnp.sum(jnp.where(rejected, logps, 0.0), axis=-1),
        chosen_tokens=jnp.sum(chosen, axis=-1, dtype=jnp.int32),
        rejected_tokens=jnp.sum(rejected, axis=-1, dtype=jnp.int32),
    )


def normaliser(batch: Batch, mode: str) -> Array:
    """The loss denominator of a whole step's batch: total pair weight (DPO) or weighted tokens (SFT)."""
    weights = batch["weights"].astype(jnp.float32)
    if mode == "sft":
        weights = weights * jnp.sum(batch["sides"] == CHOSEN, axis=-1)
    return jnp.sum(weights)


def dpo_objective(
    params: dict,
    config: ModelConfig,
    batch: Batch,
    total: Array,
    dpo: DPOConfig,
    chunk: int,
    ref: SequenceLogps | None = None,
) -> tuple[Array, dict[str, Array]]:
    """sum_i w_i loss_i / total, and TRL's metrics scaled by this batch's share of `total`.

    ref: the reference model's log-probs for a live reference; None reads the batch's precomputed ones.
    """
    policy = sequence_logps(params, config, batch, chunk)
    ref_chosen = batch["ref_chosen_logps"] if ref is None else ref.chosen
    ref_rejected = batch["ref_rejected_logps"] if ref is None else ref.rejected
    out = losses.dpo_loss(
        policy.chosen, policy.rejected, ref_chosen, ref_rejected,
        beta=dpo.beta, loss_type=dpo.loss_type, label_smoothing=dpo.label_smoothing, rpo_alpha=dpo.rpo_alpha,
        chosen_tokens=policy.chosen_tokens, rejected_tokens=policy.rejected_tokens,
        length_normalize=dpo.length_normalize,
    )  # fmt: skip
    weights = batch["weights"].astype(jnp.float32)
    share = jnp.sum(weights) / total
    metrics = {name: value * share for name, value in losses.dpo_metrics(out, weights).items()}
    return jnp.sum(weights * out.losses) / total, metrics


def sft_objective(
    params: dict, config: ModelConfig, batch: Batch, total: Array, chunk: int
) -> tuple[Array, dict[str, Array]]:
    """Weighted token-mean NLL of the completions (sum over this batch / total weighted tokens)."""
    logps = sequence_logps(params, config, batch, chunk)
    nll = -jnp.sum(batch["weights"].astype(jnp.float32) * logps.chosen) / total
    return nll, {"loss": jax.lax.stop_gradient(nll)}
