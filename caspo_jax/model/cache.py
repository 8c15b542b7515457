"""The KV cache as an explicit pytree, and the two calls that use it: `extend` and `decode_step`.

A cache holds keys and values for every layer, [L, B, S, K, H], the slots that hold real tokens
(`valid`: [B, S]) and the next free slot (`end`, shared by the batch). Left-padded prompts occupy
slots [0, T) with their padding marked invalid, so every row appends at the same slot and positions
are counted from valid slots only: a padded row behaves exactly like that row alone.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from caspo_jax.config import ModelConfig
from caspo_jax.model.qwen import Transformer

Array = jax.Array

# Logical axes of the cache arrays, for `caspo_jax.parallel.mesh.logical_to_spec`.
KV_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")
VALID_AXES = ("batch", "length")


@flax.struct.dataclass
class KVCache:
    keys: Array  # [L, B, S, K, H]
    values: Array  # [L, B, S, K, H]
    valid: Array  # [B, S] bool: slot holds a real token
    end: Array  # [] int32: next slot to write

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]

    @property
    def next_positions(self) -> Array:
        """[B] int32: the position of the next token of each row (its count of real tokens)."""
        return jnp.sum(self.valid, axis=-1, dtype=jnp.int32)


def init_cache(config: ModelConfig, batch: int, max_length: int, dtype: str | None = None) -> KVCache:
    """An empty cache of `max_length` slots (dtype: the compute dtype by default)."""
    shape = (config.num_layers, batch, max_length, config.num_kv_heads, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return KVCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, max_length), bool),
        end=jnp.zeros((), jnp.int32),
    )


def extend(
    params: dict, config: ModelConfig, cache: KVCache, tokens: Array, token_mask: Array | None = None
) -> tuple[Array, KVCache]:
    """Appends T tokens to every row and returns their hidden states.

    tokens: [B, T] int32 written at slots [end, end + T); token_mask: [B, T] (0 = padding, e.g. the
    left padding of a prompt). Returns (hidden [B, T, D], cache). Prefill is `extend` on an empty
    cache; apply `Transformer.logits` (see `logits`) to the positions you need.
    """
    b, t = tokens.shape
    if token_mask is None:
        token_mask = jnp.ones((b, t), bool)
    token_mask = token_mask.astype(bool)
    positions = cache.next_positions[:, None] + jnp.cumsum(token_mask, axis=-1, dtype=jnp.int32) - 1
    positions = jnp.maximum(positions, 0)
    slots = cache.end + jnp.arange(t, dtype=jnp.int32)
    valid = jax.lax.dynamic_update_slice(cache.valid, token_mask, (0, cache.end))
    all_slots = jnp.arange(cache.max_length, dtype=jnp.int32)
    mask = valid[:, None, :] & (all_slots[None, None, :] <= slots[None, :, None])  # [B, T, S]
    hidden, (keys, values) = Transformer(config).apply(
        {"params": params}, tokens, positions, mask, (cache.keys, cache.values), cache.end
    )
    return hidden, KVCache(keys=keys, values=values, valid=valid, end=cache.end + t)


def logits(params: dict, config: ModelConfig, hidden: Array) -> Array:
    """hidden: [..., D] -> logits [..., V] f32 through the model's LM head."""
    return Transformer(config).apply({"params": params}, hidden, method=Transformer.logits)


def decode_step(params: dict, config: ModelConfig, cache: KVCache, token: Array) -> tuple[Array, KVCache]:
    """token: [B] int32 -> (next-token logits [B, V] f32, cache with the token appended)."""
    hidden, cache = extend(params, config, cache, token[:, None])
    return logits(params, config, hidden[:, 0]), cache


def repeat_rows(cache: KVCache, n: int) -> KVCache:
    """Each row n times, in order (row b becomes rows b * n .. b * n + n - 1): n continuations of one
    prompt share its prefill."""
    return KVCache(
        keys=jnp.repeat(cache.keys, n, axis=1),
        values=jnp.repeat(cache.values, n, axis=1),
        valid=jnp.repeat(cache.valid, n, axis=0),
        end=cache.end,
    )


def gather_rows(cache: KVCache, index: Array) -> KVCache:
    """Rows picked by index: [B'] int32 (row i of the result is row index[i]); CaT reorders and
    repeats the surviving paths' rows this way, on device."""
    return KVCache(
        keys=jnp.take(cache.keys, index, axis=1),
        values=jnp.take(cache.values, index, axis=1),
        valid=jnp.take(cache.valid, index, axis=0),
        end=cache.end,
    )
