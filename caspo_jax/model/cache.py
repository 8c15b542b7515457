"""The KV cache as an explicit pytree, and the calls that use it: `extend` and `decode_step`, and the
decode loop's faster one-token step, `decode_layers_step`.

A cache holds keys and values for every layer, [L, B, S, K, H], the slots that hold real tokens
(`valid`: [B, S]) and the next free slot (`end`, shared by the batch). Left-padded prompts occupy
slots [0, T) with their padding marked invalid, so every row appends at the same slot and positions
are counted from valid slots only: a padded row behaves exactly like that row alone.

The decode loop (`infer/decoding.py`) carries the same cache split by layer (`LayerCache`, from
`split_layers`, back with `stack_layers`) and the weights prepared once (`decode_layers`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from caspo_jax.config import ModelConfig
from caspo_jax.model import qwen
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


# ---------------------------------------------------------------------------------------------------
# The decode loop's form: one token per row per step, on a cache split by layer.
#
# `extend` runs the scanned Flax model, which suits prompts. One-token steps inside a `while_loop` go
# faster on a cache split into one [B, K, S, H] array per layer (each step writes one slot of each, in
# place, and attends with a plain batched matmul, grouped-query heads sharing their K/V head without a
# copy) and on weights sliced per layer once, before the loop. `decode_layers_step` is the same math
# as `Transformer` (tests check it against the full forward and against transformers).

LAYER_KV_AXES = ("batch", "kv_heads", "length", "head_dim")


@flax.struct.dataclass
class LayerCache:
    keys: tuple[Array, ...]  # L arrays [B, K, S, H]
    values: tuple[Array, ...]  # L arrays [B, K, S, H]
    valid: Array  # [B, S] bool
    end: Array  # [] int32

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]


def split_layers(cache: KVCache) -> LayerCache:
    """[L, B, S, K, H] -> L arrays [B, K, S, H] (one copy, before a decode loop)."""
    def split(x: Array) -> tuple[Array, ...]:
        return tuple(jnp.transpose(x[i], (0, 2, 1, 3)) for i in range(x.shape[0]))

    return LayerCache(keys=split(cache.keys), values=split(cache.values), valid=cache.valid, end=cache.end)


def stack_layers(cache: LayerCache) -> KVCache:
    """The inverse of `split_layers` (one copy, after a decode loop)."""
    def stack(xs: tuple[Array, ...]) -> Array:
        return jnp.stack([jnp.transpose(x, (0, 2, 1, 3)) for x in xs])

    return KVCache(keys=stack(cache.keys), values=stack(cache.values), valid=cache.valid, end=cache.end)


def gather_layer_rows(cache: LayerCache, index: Array) -> LayerCache:
    """Rows picked by index: [B'] int32 (row i of the result is row index[i]); CaT reorders and
    repeats the surviving paths' rows this way, on device."""
    def take(xs: tuple[Array, ...]) -> tuple[Array, ...]:
        return tuple(jnp.take(x, index, axis=0) for x in xs)

    return cache.replace(keys=take(cache.keys), values=take(cache.values), valid=jnp.take(cache.valid, index, axis=0))


class DecodeLayer(NamedTuple):
    """One layer's weights made ready for one-token steps, once per decode call: in the compute
    dtype, with the q, k and v projections side by side (one matmul) and gate and up side by side."""

    input_norm: Array  # [D]
    qkv: Array  # [D, (N + 2K) * H]
    qkv_bias: Array | None  # [(N + 2K) * H]
    q_norm: Array | None  # [H] (qk_norm models)
    k_norm: Array | None  # [H]
    o: Array  # [N * H, D]
    o_bias: Array | None  # [D]
    post_attn_norm: Array  # [D]
    gate_up: Array  # [D, 2F]
    gate_up_bias: Array | None  # [2F]
    down: Array  # [F, D]
    down_bias: Array | None  # [D]


def decode_layers(params: dict, config: ModelConfig) -> tuple[DecodeLayer, ...]:
    """params["layers"] (leading layer axis) -> one `DecodeLayer` per layer (slices and concatenations
    done once, outside the decode loop)."""
    c, dtype = config, jnp.dtype(config.dtype)
    attn, mlp = params["layers"]["attn"], params["layers"]["mlp"]

    def kernel(x: Array, i: int) -> Array:  # [L, D, heads, H] or [L, in, out] -> [in, out] of layer i
        return x[i].reshape(x.shape[1], -1).astype(dtype)

    def bias(x: Array, i: int) -> Array:
        return x[i].reshape(-1).astype(dtype)

    def layer(i: int) -> DecodeLayer:
        qkv_names = ("q_proj", "k_proj", "v_proj")
        return DecodeLayer(
            input_norm=params["layers"]["input_norm"]["scale"][i],
            qkv=jnp.concatenate([kernel(attn[n]["kernel"], i) for n in qkv_names], axis=1),
            qkv_bias=jnp.concatenate([bias(attn[n]["bias"], i) for n in qkv_names]) if c.qkv_bias else None,
            q_norm=attn["q_norm"]["scale"][i] if c.qk_norm else None,
            k_norm=attn["k_norm"]["scale"][i] if c.qk_norm else None,
            o=attn["o_proj"]["kernel"][i].reshape(-1, c.hidden_size).astype(dtype),
            o_bias=bias(attn["o_proj"]["bias"], i) if c.o_bias else None,
            post_attn_norm=params["layers"]["post_attn_norm"]["scale"][i],
            gate_up=jnp.concatenate([kernel(mlp[n]["kernel"], i) for n in ("gate_proj", "up_proj")], axis=1),
            gate_up_bias=jnp.concatenate([bias(mlp[n]["bias"], i) for n in ("gate_proj", "up_proj")]) if c.mlp_bias else None,
            down=kernel(mlp["down_proj"]["kernel"], i),
            down_bias=bias(mlp["down_proj"]["bias"], i) if c.mlp_bias else None,
        )

    return tuple(layer(i) for i in range(c.num_layers))


def _dense(x: Array, kernel: Array, bias: Array | None) -> Array:
    """x: [B, in] @ kernel: [in, out] (+ bias: [out]) -> [B, out]."""
    y = x @ kernel
    return y if bias is None else y + bias


def _decode_layer(
    p: DecodeLayer, config: ModelConfig, x: Array, positions: Array, keys: Array, values: Array, mask: Array, end: Array
) -> tuple[Array, Array, Array]:
    """One decoder layer for one token per row. x: [B, D]; positions: [B]; keys, values: [B, K, S, H]
    (this layer's cache; the new token's slot `end` is written here); mask: [B, S] bool ->
    (x [B, D], keys, values)."""
    c = config
    dtype, eps = jnp.dtype(c.dtype), c.rms_norm_eps
    b, n, kv_heads, hd = x.shape[0], c.num_heads, c.num_kv_heads, c.head_dim
    h = qwen.rms_norm(x, p.input_norm, eps, dtype)
    qkv = _dense(h, p.qkv, p.qkv_bias).reshape(b, n + 2 * kv_heads, hd)
    q, k, v = qkv[:, :n], qkv[:, n : n + kv_heads], qkv[:, n + kv_heads :]
    if c.qk_norm:
        q, k = qwen.rms_norm(q, p.q_norm, eps, dtype), qwen.rms_norm(k, p.k_norm, eps, dtype)
    inv_freq = qwen.rope_inv_freq(c)
    q = qwen.apply_rope(q[:, None], positions[:, None], inv_freq)[:, 0]  # [B, N, H]
    k = qwen.apply_rope(k[:, None], positions[:, None], inv_freq)[:, 0]  # [B, K, H]
    keys = jax.lax.dynamic_update_slice(keys, k[:, :, None].astype(keys.dtype), (0, 0, end, 0))
    values = jax.lax.dynamic_update_slice(values, v[:, :, None].astype(values.dtype), (0, 0, end, 0))
    grouped = q.reshape(b, kv_heads, n // kv_heads, hd)  # query head i reads K/V head i // G, as in HF
    scores = jnp.einsum("bkgh,bksh->bkgs", grouped, keys.astype(dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :], scores * (1.0 / math.sqrt(hd)), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgs,bksh->bkgh", probs, values.astype(dtype)).reshape(b, n * hd)
    x = x + _dense(out, p.o, p.o_bias)
    gate, up = jnp.split(_dense(qwen.rms_norm(x, p.post_attn_norm, eps, dtype), p.gate_up, p.gate_up_bias), 2, axis=-1)
    return x + _dense(jax.nn.silu(gate) * up, p.down, p.down_bias), keys, values


def decode_layers_step(
    params: dict, layers: tuple[DecodeLayer, ...], config: ModelConfig, cache: LayerCache, token: Array, live: Array
) -> tuple[Array, LayerCache]:
    """Appends one token per row: token: [B] int32; live: [B] bool (False: the slot is written but
    marked invalid, as `extend` with a 0 token_mask). layers: `decode_layers(params, config)`.
    Returns (hidden [B, D] after the final norm; apply `logits`), the cache with the token appended)."""
    dtype = jnp.dtype(config.dtype)
    positions = jnp.maximum(jnp.sum(cache.valid, axis=-1, dtype=jnp.int32) + live.astype(jnp.int32) - 1, 0)
    valid = jax.lax.dynamic_update_slice(cache.valid, live[:, None], (0, cache.end))
    mask = valid & (jnp.arange(cache.max_length, dtype=jnp.int32) <= cache.end)[None, :]  # [B, S]
    x = jnp.take(params["embed"]["embedding"], token, axis=0).astype(dtype)  # cast B rows, not the table
    keys, values = [], []
    for p, k, v in zip(layers, cache.keys, cache.values):
        x, k, v = _decode_layer(p, config, x, positions, k, v, mask, cache.end)
        keys.append(k)
        values.append(v)
    hidden = qwen.rms_norm(x, params["final_norm"]["scale"], config.rms_norm_eps, dtype)
    return hidden, LayerCache(keys=tuple(keys), values=tuple(values), valid=valid, end=cache.end + 1)
