"""caspo_jax.infer.confidence against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caspo_jax.infer import confidence as conf


def np_signals(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Reference signals straight from the definitions, in float64."""
    x = np.asarray(logits, np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    p = np.exp(logp)
    entropy = -np.sum(p * np.where(p > 0, logp, 0.0), -1)
    top = -np.sort(-logp, -1)[..., : min(k, x.shape[-1])]
    return {
        "logp": logp,
        "entropy": entropy,
        "entropy_conf": 1.0 - entropy / np.log(x.shape[-1]),
        "neg_entropy": -entropy,
        "max_prob": p.max(-1),
        "topk_logprob": -top.mean(-1),
    }


def random_logits(shape, scale=3.0, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("k", [1, 5, 20, 64, 1000])
def test_signals_match_numpy(k):
    logits = random_logits((3, 4, 64))
    tokens = np.random.default_rng(1).integers(0, 64, (3, 4))
    ref = np_signals(logits, k)
    got = conf.token_signals(jnp.asarray(logits), jnp.asarray(tokens), k=k)
    np.testing.assert_allclose(got.entropy, ref["entropy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.entropy_conf, ref["entropy_conf"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.max_prob, ref["max_prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.topk_conf, ref["topk_logprob"], rtol=1e-5, atol=1e-5)
    picked = np.take_along_axis(ref["logp"], tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(got.token_logprob, picked, rtol=1e-5, atol=1e-5)
    for field in got:
        assert field.dtype == jnp.float32 and field.shape == (3, 4)
    for kind in conf.CONFIDENCE_KINDS:
        got_kind = conf.token_confidence(jnp.asarray(logits), kind, k)
        np.testing.assert_allclose(got_kind, ref[kind], rtol=1e-5, atol=1e-5)


def test_bf16_input_computes_in_fp32():
    logits = jnp.asarray(random_logits((2, 5, 128), scale=5.0)).astype(jnp.bfloat16)
    ref = np_signals(np.asarray(logits.astype(jnp.float32)), 20)
    got = conf.token_signals(logits)
    assert got.entropy.dtype == jnp.float32 and got.token_logprob is None
    np.testing.assert_allclose(got.entropy, ref["entropy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.topk_conf, ref["topk_logprob"], rtol=1e-5, atol=1e-5)


def test_uniform_and_peaked_extremes():
    vocab = 1000
    uniform = conf.token_signals(jnp.zeros((2, vocab), jnp.bfloat16))
    np.testing.assert_allclose(uniform.entropy_conf, 0.0, atol=1e-6)
    np.testing.assert_allclose(uniform.entropy, np.log(vocab), rtol=1e-6)
    np.testing.assert_allclose(uniform.max_prob, 1.0 / vocab, rtol=1e-5)
    np.testing.assert_allclose(uniform.topk_conf, np.log(vocab), rtol=1e-5)  # DeepConf's minimum

    peaked = jnp.zeros((2, vocab)).at[:, 7].set(60.0)
    got = conf.token_signals(peaked)
    np.testing.assert_allclose(got.entropy_conf, 1.0, atol=1e-6)
    np.testing.assert_allclose(got.max_prob, 1.0, atol=1e-6)
    assert np.all(got.topk_conf > 55.0)  # runners-up sit ~60 nats down: very confident
    flat = conf.token_confidence(jnp.zeros((2, vocab)), "neg_entropy")
    assert np.all(conf.token_confidence(peaked, "neg_entropy") > flat)


def test_masked_logits_are_finite():
    logits = random_logits((4, 32))
    logits[:, 10:] = -np.inf
    got = conf.token_signals(jnp.asarray(logits), k=4)
    ref = np_signals(logits, 4)
    np.testing.assert_allclose(got.entropy, ref["entropy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.entropy_conf, 1.0 - ref["entropy"] / np.log(32), rtol=1e-5)
    np.testing.assert_allclose(got.topk_conf, ref["topk_logprob"], rtol=1e-5, atol=1e-5)


def test_jit_and_errors():
    logits = jnp.asarray(random_logits((2, 3, 50)))
    fn = jax.jit(conf.token_confidence, static_argnames=("kind", "k"))
    np.testing.assert_allclose(fn(logits, kind="topk_logprob", k=8), conf.token_confidence(logits, "topk_logprob", 8))
    jitted = jax.jit(conf.token_signals)(logits, jnp.zeros((2, 3), jnp.int32))
    np.testing.assert_allclose(jitted.entropy, conf.token_signals(logits).entropy, rtol=1e-6)
    with pytest.raises(ValueError, match="entropy_conf, neg_entropy, max_prob, topk_logprob"):
        conf.token_confidence(logits, "perplexity")
    with pytest.raises(ValueError, match="mean, min"):
        conf.span_aggregate(logits[..., 0], logits[..., 0] > 0, "median")
    with pytest.raises(ValueError, match="mean, min, product"):
        conf.path_update(conf.path_init((2,)), jnp.ones(2), "max")
    with pytest.raises(ValueError, match="at least 2"):
        conf.token_confidence(jnp.zeros((3, 1)))


def test_span_aggregation_matches_loops():
    rng = np.random.default_rng(2)
    values = rng.random((3, 5, 9)).astype(np.float32)
    mask = rng.random((3, 5, 9)) < 0.4
    mask[0, 0] = False  # an empty span
    mean = np.asarray(jax.jit(conf.span_mean)(values, mask, 0.5))
    low = np.asarray(conf.span_aggregate(values, mask, "min", empty=-1.0))
    for i in np.ndindex(3, 5):
        picked = values[i][mask[i]]
        assert mean[i] == pytest.approx(picked.mean() if picked.size else 0.5, rel=1e-6)
        assert low[i] == pytest.approx(picked.min() if picked.size else -1.0)
    assert mean[0, 0] == 0.5 and low[0, 0] == -1.0
    assert conf.span_aggregate(values, mask)[0, 0] == 0.0  # the documented default


def np_path(steps: np.ndarray, kind: str) -> float:
    if steps.size == 0:
        return 0.0
    return {"mean": np.mean, "min": np.min, "product": np.prod}[kind](steps.astype(np.float64))


@pytest.mark.parametrize("kind", conf.PATH_AGGREGATIONS)
def test_path_aggregation_incremental_and_whole(kind):
    rng = np.random.default_rng(3)
    steps = rng.random((4, 6)).astype(np.float32)
    mask = rng.random((4, 6)) < 0.7
    mask[1] = False  # a path with no steps
    update = jax.jit(conf.path_update, static_argnames="kind")
    state = conf.path_init((4,))
    for s in range(6):  # a decoder's per-step update, finished paths frozen by `active`
        state = update(state, steps[:, s], kind=kind, active=mask[:, s])
    whole = conf.path_confidence(jnp.asarray(steps), jnp.asarray(mask), kind)
    for b in range(4):
        expected = np_path(steps[b][mask[b]], kind)
        assert state.value[b] == pytest.approx(expected, rel=1e-5)
        assert whole[b] == pytest.approx(expected, rel=1e-5)
        assert state.count[b] == mask[b].sum()


def test_named_path_updates_without_active():
    state = conf.path_init()
    for fn, expected in [(conf.path_running_mean, 0.5), (conf.path_min, 0.2), (conf.path_product, 0.16)]:
        s = state
        for v in (0.8, 0.2):
            s = fn(s, jnp.float32(v))
        assert float(s.value) == pytest.approx(expected, rel=1e-6) and int(s.count) == 2
