"""The decoder: one Flax module for Qwen2/2.5, Qwen3 and Llama(-3.1), chosen by `ModelConfig` fields.

Variants differ only by config: q/k/v bias (Qwen2), RMSNorm on q and k before RoPE (Qwen3), Llama-3.1
RoPE scaling, tied or untied embeddings. Layers are one `Block` scanned `num_layers` times, so params
carry a leading layer axis and deep models compile once per shape. Every param is annotated with
logical axes ('vocab', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp', 'layers') that
`caspo_jax.parallel.mesh` maps to the device mesh.

The module is pure: params are a plain dict used through `apply`, and the KV cache (per-layer keys and
values, [L, B, S, K, H]) is passed in and returned. Callers give positions and a boolean attention mask
explicitly, which is what left-padded batches, KV-cache decoding and packed DPO rows all need.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from caspo_jax.config import ModelConfig

Array = jax.Array
Cache = tuple[Array, Array]  # keys, values: [L, B, S, K, H] each

_init = nn.initializers.normal(stddev=0.02)


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [head_dim // 2] f32, with HF's 'linear' and 'llama3' scaling."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / np.power(np.float32(config.rope_theta), exponents)).astype(np.float32)
    scaling = config.rope_scaling_dict
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (expected default, linear or llama3)")


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotates x: [B, T, N, H] by positions: [B, T] (HF's rotate-half convention)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class RMSNorm(nn.Module):
    eps: float
    axis_name: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,))
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        return rms_norm(x, scale, self.eps, self.dtype)


def rms_norm(x: Array, scale: Array, eps: float, dtype: jnp.dtype) -> Array:
    """x: [..., D] normalised in fp32, scaled by scale: [D], returned in dtype."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(dtype) * y.astype(dtype)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, mask: Array, cache: Cache | None, layer: Array, write_index: Array | None
    ) -> tuple[Array, Cache | None]:
        """x: [B, T, D]; positions: [B, T]; mask: [B, T, S] bool -> ([B, T, D], updated cache).

        cache: every layer's (keys, values), [L, B, S, K, H] each; this layer's new keys and values are
        written in place at [layer, :, write_index:write_index + T] (only T slots move per call)."""
        c = self.config
        dtype, pdtype = _dtype(c.dtype), _dtype(c.param_dtype)

        def proj(name: str, heads: int, axis: str) -> Array:
            return nn.DenseGeneral(
                (heads, c.head_dim), use_bias=c.qkv_bias, dtype=dtype, param_dtype=pdtype, name=name,
                kernel_init=nn.with_logical_partitioning(_init, ("embed", axis, "head_dim")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis, "head_dim")),
            )(x)

        q = proj("q_proj", c.num_heads, "heads")
        k = proj("k_proj", c.num_kv_heads, "kv_heads")
        v = proj("v_proj", c.num_kv_heads, "kv_heads")
        if c.qk_norm:
            q = RMSNorm(c.rms_norm_eps, "head_dim", dtype, pdtype, name="q_norm")(q)
            k = RMSNorm(c.rms_norm_eps, "head_dim", dtype, pdtype, name="k_norm")(k)
        inv_freq = rope_inv_freq(c)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

        if cache is not None:
            cache_k, cache_v = cache
            start = (layer, 0, write_index, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), start)
            cache = (cache_k, cache_v)
            k = jax.lax.dynamic_index_in_dim(cache_k, layer, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(cache_v, layer, keepdims=False)
        out = jax.nn.dot_product_attention(q, k.astype(dtype), v.astype(dtype), mask=mask[:, None])
        out = nn.DenseGeneral(
            c.hidden_size, axis=(-2, -1), use_bias=c.o_bias, dtype=dtype, param_dtype=pdtype, name="o_proj",
            kernel_init=nn.with_logical_partitioning(_init, ("heads", "head_dim", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )(out)
        return out, cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dtype, pdtype = _dtype(c.dtype), _dtype(c.param_dtype)

        def dense(name: str, features: int, axes: tuple[str, str]) -> nn.Dense:
            return nn.Dense(
                features, use_bias=c.mlp_bias, dtype=dtype, param_dtype=pdtype, name=name,
                kernel_init=nn.with_logical_partitioning(_init, axes),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
            )

        gate = dense("gate_proj", c.intermediate_size, ("embed", "mlp"))(x)
        up = dense("up_proj", c.intermediate_size, ("embed", "mlp"))(x)
        return dense("down_proj", c.hidden_size, ("mlp", "embed"))(nn.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm decoder layer, written as a scan body: ((x, cache), layer) -> ((x, cache), None).

    The whole cache rides in the carry and each layer updates its own slots in place: scanning the
    cache as input and output instead would copy all of it on every decode step."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, carry: tuple[Array, Cache | None], layer: Array, positions: Array, mask: Array, write_index: Array | None
    ) -> tuple[tuple[Array, Cache | None], None]:
        x, cache = carry
        c = self.config
        dtype, pdtype = _dtype(c.dtype), _dtype(c.param_dtype)
        h = RMSNorm(c.rms_norm_eps, "embed", dtype, pdtype, name="input_norm")(x)
        h, cache = Attention(c, name="attn")(h, positions, mask, cache, layer, write_index)
        x = x + h
        h = RMSNorm(c.rms_norm_eps, "embed", dtype, pdtype, name="post_attn_norm")(x)
        return (x + MLP(c, name="mlp")(h), cache), None


class Transformer(nn.Module):
    """Embedding -> L scanned blocks -> final norm; `logits` applies the (tied or untied) LM head."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        dtype, pdtype = _dtype(c.dtype), _dtype(c.param_dtype)
        self.embed = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=pdtype,
            embedding_init=nn.with_logical_partitioning(_init, ("vocab", "embed")),
        )
        block = nn.remat(Block, prevent_cse=False) if c.remat else Block
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c)
        self.final_norm = RMSNorm(c.rms_norm_eps, "embed", dtype, pdtype)
        if not c.tie_word_embeddings:
            init = nn.with_logical_partitioning(_init, ("embed", "vocab"))
            self.lm_head = self.param("lm_head", init, (c.hidden_size, c.vocab_size), pdtype)

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        mask: Array,
        cache: Cache | None = None,
        write_index: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        """tokens, positions: [B, T] int32; mask: [B, T, S] bool (S = T without a cache).

        cache: (keys, values), each [L, B, S, K, H]; the T new keys/values are written at slots
        [write_index, write_index + T) before attending. Returns (hidden [B, T, D] after the final
        norm, updated cache or None). Apply `logits` to the positions you need.
        """
        x = self.embed(tokens)
        layers = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        (x, cache), _ = self.layers((x, cache), layers, positions, mask, write_index)
        return self.final_norm(x), cache

    def logits(self, hidden: Array) -> Array:
        """hidden: [..., D] -> logits [..., V] f32 (fp32 accumulation whatever the compute dtype)."""
        if self.config.tie_word_embeddings:
            table = self.embed.embedding.astype(hidden.dtype)
            return jnp.einsum("...d,vd->...v", hidden, table, preferred_element_type=jnp.float32)
        kernel = self.lm_head.astype(hidden.dtype)
        return jnp.einsum("...d,dv->...v", hidden, kernel, preferred_element_type=jnp.float32)

    def init_all(self, tokens: Array, positions: Array, mask: Array) -> Array:
        """Touches every param (the body and the head); used by `init_params`."""
        return self.logits(self(tokens, positions, mask)[0])


def positions_from_mask(attention_mask: Array) -> Array:
    """attention_mask: [B, T] (1 = token, 0 = padding) -> positions [B, T] int32 counting real tokens."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(attention_mask: Array) -> Array:
    """attention_mask: [B, T] -> [B, T, T] bool: query i sees key j iff j <= i and j is a real token."""
    t = attention_mask.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None] & attention_mask.astype(bool)[:, None, :]


def _init_boxed(config: ModelConfig, rng: Array) -> dict:
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1, 1), bool)
    return Transformer(config).init(rng, tokens, tokens, mask, method=Transformer.init_all)


def init_params(config: ModelConfig, rng: Array) -> dict:
    """Fresh params (normal(0.02) weights, unit norms) as a plain nested dict with a layer axis."""
    return nn.unbox(_init_boxed(config, rng))["params"]


def param_logical_axes(config: ModelConfig) -> dict:
    """The logical axis names of every param, e.g. ('layers', 'embed', 'heads', 'head_dim')."""
    abstract = jax.eval_shape(lambda: _init_boxed(config, jax.random.key(0)))
    specs = nn.get_partition_spec(abstract)["params"]
    return jax.tree.map(tuple, specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))


def param_shapes(config: ModelConfig) -> dict:
    """ShapeDtypeStructs of every param, without allocating."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def forward(params: dict, config: ModelConfig, tokens: Array, attention_mask: Array | None = None) -> Array:
    """Full causal forward for callers that do not manage caches.

    tokens: [B, T] int32; attention_mask: [B, T] (left or right padding) -> logits [B, T, V] f32.
    """
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, jnp.int32)
    model = Transformer(config)
    hidden, _ = model.apply(
        {"params": params}, tokens, positions_from_mask(attention_mask), causal_mask(attention_mask)
    )
    return model.apply({"params": params}, hidden, method=Transformer.logits)


def untie_head(params: dict, config: ModelConfig) -> tuple[dict, ModelConfig]:
    """For loops that apply the LM head many times (decoding): a tied head becomes an explicit
    [D, V] `lm_head`, transposed once here instead of on every call. Untied models pass through."""
    if not config.tie_word_embeddings:
        return params, config
    head = params["embed"]["embedding"].T
    return {**params, "lm_head": head}, config.replace(tie_word_embeddings=False)
