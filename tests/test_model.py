"""The Flax decoder against transformers' PyTorch models (eager attention, fp32)."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from caspo_jax.model import cache as kv
from caspo_jax.model import hf, qwen
from hf_models import VARIANTS, VOCAB, make_hf_model, torch_logits


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def loaded(request, tmp_path_factory):
    model = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param) / "model"
    model.save_pretrained(path)
    config, params = hf.load(path)
    return request.param, model, config, params


def test_variant_fields(loaded):
    variant, _, config, _ = loaded
    expected = {
        "qwen2": dict(qkv_bias=True, qk_norm=False, tie_word_embeddings=False),
        "qwen3": dict(qkv_bias=False, qk_norm=True, tie_word_embeddings=True, rope_theta=5e6),
        "llama": dict(qkv_bias=False, qk_norm=False, rope_theta=5e5),
    }[variant]
    for key, value in expected.items():
        assert getattr(config, key) == value, key
    if variant == "llama":
        assert config.rope_scaling_dict["rope_type"] == "llama3"


def test_logits_match_transformers(loaded):
    _, model, config, params = loaded
    tokens = np.random.RandomState(0).randint(0, VOCAB, (3, 40))
    ours = np.asarray(jax.jit(qwen.forward, static_argnums=1)(params, config, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, torch_logits(model, tokens), atol=1e-4, rtol=0)


def test_left_padded_rows_match_transformers_and_rows_alone(loaded):
    _, model, config, params = loaded
    rng = np.random.RandomState(1)
    tokens = rng.randint(3, VOCAB, (3, 24))
    mask = np.ones_like(tokens)
    mask[1, :5] = 0
    mask[2, :17] = 0
    ours = np.asarray(qwen.forward(params, config, jnp.asarray(tokens), jnp.asarray(mask)))
    real = mask[..., None].astype(bool)
    np.testing.assert_allclose(np.where(real, ours, 0), np.where(real, torch_logits(model, tokens, mask), 0), atol=1e-4)
    for row, pad in ((1, 5), (2, 17)):
        alone = np.asarray(qwen.forward(params, config, jnp.asarray(tokens[row : row + 1, pad:])))
        np.testing.assert_allclose(ours[row, pad:], alone[0], atol=1e-5)


def test_prefill_then_decode_equals_full_forward(loaded):
    _, _, config, params = loaded
    rng = np.random.RandomState(2)
    tokens = rng.randint(3, VOCAB, (2, 20))
    mask = np.ones_like(tokens)
    mask[1, :6] = 0  # a left-padded row
    full = np.asarray(qwen.forward(params, config, jnp.asarray(tokens), jnp.asarray(mask)))
    prompt = 8
    cache = kv.init_cache(config, batch=2, max_length=32)
    hidden, cache = jax.jit(kv.extend, static_argnums=1)(
        params, config, cache, jnp.asarray(tokens[:, :prompt]), jnp.asarray(mask[:, :prompt])
    )
    steps = [np.asarray(kv.logits(params, config, hidden))]
    step = jax.jit(kv.decode_step, static_argnums=1, donate_argnums=2)
    for i in range(prompt, tokens.shape[1]):
        logits, cache = step(params, config, cache, jnp.asarray(tokens[:, i]))
        steps.append(np.asarray(logits)[:, None])
    decoded = np.concatenate(steps, axis=1)
    real = mask[..., None].astype(bool)
    np.testing.assert_allclose(np.where(real, decoded, 0), np.where(real, full, 0), atol=1e-5)
    assert int(cache.end) == tokens.shape[1]
    np.testing.assert_array_equal(np.asarray(cache.next_positions), mask.sum(1))


def test_decode_loop_step_equals_full_forward(loaded):
    """The decode loop's own step (per-layer cache, prepared weights) against the full forward, on a
    left-padded batch where one row stops early (its later slots are written but marked invalid)."""
    _, _, config, params = loaded
    rng = np.random.RandomState(4)
    tokens = rng.randint(3, VOCAB, (3, 20))
    mask = np.ones_like(tokens)
    mask[1, :6] = 0
    full = np.asarray(qwen.forward(params, config, jnp.asarray(tokens), jnp.asarray(mask)))
    prompt, stop = 8, 14
    cache = kv.init_cache(config, batch=3, max_length=32)
    _, cache = kv.extend(params, config, cache, jnp.asarray(tokens[:, :prompt]), jnp.asarray(mask[:, :prompt]))
    layered = kv.split_layers(cache)
    assert jax.tree.all(jax.tree.map(np.array_equal, kv.stack_layers(layered), cache))
    index = np.array([2, 0, 0])  # CaT's compaction gathers (and repeats) rows of the split cache
    picked = kv.gather_layer_rows(layered, jnp.asarray(index))
    for got, before in zip(picked.keys + picked.values, layered.keys + layered.values):
        np.testing.assert_array_equal(got, np.asarray(before)[index])
    np.testing.assert_array_equal(picked.valid, np.asarray(cache.valid)[index])
    head_params, head_config = qwen.untie_head(params, config)
    layers = kv.decode_layers(head_params, head_config)
    step = jax.jit(kv.decode_layers_step, static_argnums=2, donate_argnums=3)
    for i in range(prompt, tokens.shape[1]):
        live = np.array([True, True, i < stop])
        hidden, layered = step(head_params, layers, head_config, layered, jnp.asarray(tokens[:, i]), jnp.asarray(live))
        logits = np.asarray(kv.logits(head_params, head_config, hidden))
        np.testing.assert_allclose(logits[live], full[live, i], atol=1e-5, err_msg=f"token {i}")
    cache = kv.stack_layers(layered)
    assert int(cache.end) == tokens.shape[1]
    np.testing.assert_array_equal(np.asarray(cache.next_positions), [20, 14, stop])


def test_bf16_compute_stays_close(loaded):
    _, _, config, params = loaded
    tokens = jnp.asarray(np.random.RandomState(3).randint(0, VOCAB, (2, 16)))
    ref = np.asarray(qwen.forward(params, config, tokens))
    bf16 = config.replace(dtype="bfloat16")
    logits = qwen.forward(params, bf16, tokens)
    assert logits.dtype == jnp.float32  # logits are fp32 whatever the compute dtype
    assert np.abs(np.asarray(logits) - ref).max() < 0.05


def test_param_annotations_cover_every_param(loaded):
    _, _, config, params = loaded
    axes = qwen.param_logical_axes(config)
    shapes = jax.tree.map(lambda x: x.shape, params)
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    flat_shapes = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(flat_axes) == len(flat_shapes)
    for names, shape in zip(flat_axes, flat_shapes):
        assert len(names) == len(shape) and all(isinstance(n, str) for n in names)
