"""The optimiser: AdamW after global-norm clipping, with warmup then linear, cosine or constant decay.

The schedule follows Hugging Face's (`get_linear_schedule_with_warmup`, `..._cosine_...`): the step-s
learning rate is lr * s / W during W warmup steps, then decays to 0 at the last step.
"""

from __future__ import annotations

import optax

from caspo_jax.config import OptimConfig


def schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate by optimiser step (0-based)."""
    lr, warmup = config.learning_rate, min(config.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if config.schedule == "linear":
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    elif config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    clip = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
    adamw = optax.adamw(
        schedule(config, total_steps), b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
    )
    return optax.chain(*clip, adamw)
