"""The DPO loss family on per-sequence log-probs, with TRL's option names and metric names.

This file owns the arithmetic from log-probs to losses, implicit rewards and logged metrics; computing
the log-probs themselves (model forward, masks) belongs to train/dpo.py.

With log-ratios r_c = pi_c - ref_c and r_r = pi_r - ref_r (pi, ref: summed log-probs of the chosen /
rejected completion under the policy / the reference) and z = r_c - r_r, per pair (eps = label_smoothing):
  sigmoid  -(1 - eps) log s(beta z) - eps log s(-beta z)   (DPO; eps > 0 is conservative DPO, cDPO)
  robust   (-(1 - eps) log s(beta z) + eps log s(-beta z)) / (1 - 2 eps)   (Chowdhury et al. 2024)
  ipo      (z - 1 / (2 beta))^2, on log-probs averaged over tokens   (Azar et al. 2023)
  hinge    max(0, 1 - beta z)   (SLiC / RSO)
These are TRL's `dpo_loss` formulas, including TRL's choice that 'ipo' length-normalises every log-prob
(policy and reference) by its completion's token count inside the loss. Implicit rewards (beta * r_c,
beta * r_r) and the logged log-probs use the summed log-probs whatever the loss, as TRL 1.16 logs them.

RPO (Pang et al. 2024) adds rpo_alpha * nll with nll = -pi_c / n_c, the chosen completion's mean
per-token negative log-likelihood (un-normalised pi_c, completion tokens only). TRL takes one token
mean over the whole batch (a cross-entropy over all chosen tokens) and adds that scalar to every pair;
we keep it per pair, which is the same number when chosen lengths are equal and lets per-pair weights
apply to it like to the rest of the loss.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")
_SMOOTHED = ("sigmoid", "robust")


class DPOOutput(NamedTuple):
    """Per-pair results of `dpo_loss`, each `[B] f32`."""

    losses: jax.Array  # preference loss + rpo_alpha * nll
    chosen_rewards: jax.Array  # beta * (pi_c - ref_c)
    rejected_rewards: jax.Array  # beta * (pi_r - ref_r)
    chosen_logps: jax.Array  # pi_c, summed over tokens (also when the loss length-normalises)
    rejected_logps: jax.Array
    nll: jax.Array | None  # -pi_c / n_c; None when chosen_tokens was not given


def _validate(loss_type: str, beta: float, label_smoothing: float, rpo_alpha: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")
    if label_smoothing and loss_type not in _SMOOTHED:
        raise ValueError(f"label_smoothing applies to loss_type {' or '.join(_SMOOTHED)}, not {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")


def _preference_loss(z: jax.Array, beta: float, loss_type: str, eps: float) -> jax.Array:
    """Per-pair loss of the log-ratio margin z: [B] f32 -> [B] f32."""
    if loss_type == "sigmoid":
        return -(1.0 - eps) * jax.nn.log_sigmoid(beta * z) - eps * jax.nn.log_sigmoid(-beta * z)
    if loss_type == "robust":
        return (-(1.0 - eps) * jax.nn.log_sigmoid(beta * z) + eps * jax.nn.log_sigmoid(-beta * z)) / (1.0 - 2.0 * eps)
    if loss_type == "ipo":
        return (z - 1.0 / (2.0 * beta)) ** 2
    return jax.nn.relu(1.0 - beta * z)


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
    chosen_tokens: jax.Array | None = None,
    rejected_tokens: jax.Array | None = None,
    length_normalize: bool | None = None,
) -> DPOOutput:
    """Per-pair DPO-family loss and implicit rewards.

    Log-probs: [B] f32, each summed over its completion's tokens. chosen_tokens / rejected_tokens:
    [B] int or float, completion token counts (needed for length normalisation and for rpo_alpha > 0).
    length_normalize: None follows TRL (True for 'ipo' only). The options (beta, loss_type,
    label_smoothing, rpo_alpha, length_normalize) are static Python values; bad ones raise ValueError.
    """
    _validate(loss_type, beta, label_smoothing, rpo_alpha)
    normalise = loss_type == "ipo" if length_normalize is None else length_normalize
    if normalise and (chosen_tokens is None or rejected_tokens is None):
        raise ValueError(f"length-normalised {loss_type!r} needs chosen_tokens and rejected_tokens")
    if rpo_alpha > 0 and chosen_tokens is None:
        raise ValueError("rpo_alpha > 0 needs chosen_tokens (the NLL is a per-token mean)")

    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    pi_c, pi_r, ref_c, ref_r = (x.astype(jnp.float32) for x in logps)
    n_c = None if chosen_tokens is None else jnp.maximum(chosen_tokens.astype(jnp.float32), 1.0)
    nll = None if n_c is None else -pi_c / n_c
    chosen_ratio, rejected_ratio = pi_c - ref_c, pi_r - ref_r
    if normalise:
        n_r = jnp.maximum(rejected_tokens.astype(jnp.float32), 1.0)
        z = chosen_ratio / n_c - rejected_ratio / n_r
    else:
        z = chosen_ratio - rejected_ratio
    losses = _preference_loss(z, beta, loss_type, label_smoothing)
    if rpo_alpha > 0:
        losses = losses + rpo_alpha * nll
    return DPOOutput(
        losses=losses,
        chosen_rewards=beta * jax.lax.stop_gradient(chosen_ratio),
        rejected_rewards=beta * jax.lax.stop_gradient(rejected_ratio),
        chosen_logps=pi_c,
        rejected_logps=pi_r,
        nll=nll,
    )


def weighted_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """sum(w * values) / sum(w) over the batch. values: [B]; weights: [B] or None (plain mean) -> [] f32.
    All-zero weights give 0 (with zero gradients, not nan)."""
    values = values.astype(jnp.float32)
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(jnp.float32)
    total = jnp.sum(weights)
    return jnp.sum(weights * values) / jnp.where(total > 0, total, 1.0)


def dpo_metrics(out: DPOOutput, weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """TRL's DPO metrics as [] f32 batch means, weighted by weights: [B] or None. 'loss' is the
    training objective (`weighted_mean(out.losses, weights)`); 'nll_loss' appears when out.nll is set."""
    stop = jax.lax.stop_gradient
    chosen, rejected = stop(out.chosen_rewards), stop(out.rejected_rewards)
    metrics = {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).astype(jnp.float32),
        "rewards/margins": chosen - rejected,
        "logps/chosen": stop(out.chosen_logps),
        "logps/rejected": stop(out.rejected_logps),
        "loss": stop(out.losses),
    }
    if out.nll is not None:
        metrics["nll_loss"] = stop(out.nll)
    return {name: weighted_mean(value, weights) for name, value in metrics.items()}
