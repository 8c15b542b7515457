"""caspo_jax.train.losses against closed-form numpy formulas written from the papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caspo_jax.train import losses as L

B = 7


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    logps = [-(rng.random(B) * 40 + 5) for _ in range(4)]  # pi_c, pi_r, ref_c, ref_r
    tokens_c, tokens_r = rng.integers(3, 30, B), rng.integers(3, 30, B)
    return [np.asarray(x, np.float32) for x in logps], tokens_c, tokens_r


def reference_loss(pi_c, pi_r, ref_c, ref_r, beta, loss_type, eps=0.0):
    """DPO (Rafailov 2023 eq. 7), cDPO (Mitchell 2023), robust DPO (Chowdhury 2024 eq. 8),
    IPO (Azar 2023 eq. 17), hinge (SLiC / RSO), in float64."""
    h = (np.float64(pi_c) - ref_c) - (np.float64(pi_r) - ref_r)
    if loss_type == "sigmoid":  # expected BCE against a soft label 1 - eps
        return -((1 - eps) * np.log(1 / (1 + np.exp(-beta * h))) + eps * np.log(1 / (1 + np.exp(beta * h))))
    if loss_type == "robust":  # unbiased estimator under flip rate eps
        return ((1 - eps) * -np_log_sigmoid(beta * h) - eps * -np_log_sigmoid(-beta * h)) / (1 - 2 * eps)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return np.maximum(0.0, 1 - beta * h)


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.1), ("hinge", 0.0)])
def test_losses_match_formulas(loss_type, eps):
    (pi_c, pi_r, ref_c, ref_r), _, _ = batch()
    out = L.dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1, loss_type=loss_type, label_smoothing=eps)
    np.testing.assert_allclose(out.losses, reference_loss(pi_c, pi_r, ref_c, ref_r, 0.1, loss_type, eps), rtol=1e-5)
    np.testing.assert_allclose(out.chosen_rewards, 0.1 * (pi_c.astype(np.float64) - ref_c), rtol=1e-5)
    np.testing.assert_allclose(out.rejected_rewards, 0.1 * (pi_r.astype(np.float64) - ref_r), rtol=1e-5)
    assert out.losses.shape == (B,) and out.losses.dtype == jnp.float32 and out.nll is None


def test_ipo_averages_log_probs_over_tokens():
    (pi_c, pi_r, ref_c, ref_r), n_c, n_r = batch(1)
    out = L.dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5, loss_type="ipo", chosen_tokens=n_c, rejected_tokens=n_r)
    expected = reference_loss(pi_c / n_c, pi_r / n_r, ref_c / n_c, ref_r / n_r, 0.5, "ipo")
    np.testing.assert_allclose(out.losses, expected, rtol=1e-5)
    # rewards and logged log-probs stay summed over tokens, as TRL 1.16 logs them
    np.testing.assert_allclose(out.chosen_logps, pi_c, rtol=1e-6)
    np.testing.assert_allclose(out.chosen_rewards, 0.5 * (pi_c - ref_c), rtol=1e-5)
    raw = L.dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5, loss_type="ipo", length_normalize=False)
    np.testing.assert_allclose(raw.losses, reference_loss(pi_c, pi_r, ref_c, ref_r, 0.5, "ipo"), rtol=1e-5)
    normalised_sigmoid = L.dpo_loss(
        pi_c, pi_r, ref_c, ref_r, chosen_tokens=n_c, rejected_tokens=n_r, length_normalize=True
    )
    expected = reference_loss(pi_c / n_c, pi_r / n_r, ref_c / n_c, ref_r / n_r, 0.1, "sigmoid")
    np.testing.assert_allclose(normalised_sigmoid.losses, expected, rtol=1e-5)


def test_label_smoothing_zero_is_plain_dpo_and_robust_agrees():
    (pi_c, pi_r, ref_c, ref_r), _, _ = batch(2)
    plain = -np_log_sigmoid(0.1 * ((pi_c.astype(np.float64) - ref_c) - (pi_r - ref_r)))
    for loss_type in ("sigmoid", "robust"):
        out = L.dpo_loss(pi_c, pi_r, ref_c, ref_r, loss_type=loss_type, label_smoothing=0.0)
        np.testing.assert_allclose(out.losses, plain, rtol=1e-5)


def test_rpo_adds_mean_token_nll_on_chosen():
    (pi_c, pi_r, ref_c, ref_r), n_c, _ = batch(3)
    base = L.dpo_loss(pi_c, pi_r, ref_c, ref_r)
    out = L.dpo_loss(pi_c, pi_r, ref_c, ref_r, rpo_alpha=0.7, chosen_tokens=n_c)
    np.testing.assert_allclose(out.nll, -pi_c / n_c, rtol=1e-6)
    np.testing.assert_allclose(out.losses, base.losses + 0.7 * (-pi_c / n_c), rtol=1e-5)
    np.testing.assert_allclose(out.chosen_rewards, base.chosen_rewards)  # rewards ignore the NLL


def test_weights_and_metrics():
    (pi_c, pi_r, ref_c, ref_r), n_c, _ = batch(4)
    out = L.dpo_loss(pi_c, pi_r, ref_c, ref_r, rpo_alpha=1.0, chosen_tokens=n_c)
    plain = L.dpo_metrics(out)
    ones = L.dpo_metrics(out, jnp.ones(B))
    assert set(plain) == {
        "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
        "logps/chosen", "logps/rejected", "loss", "nll_loss",
    }  # fmt: skip
    for name in plain:
        np.testing.assert_allclose(ones[name], plain[name], rtol=1e-6)
    rc, rr = np.asarray(out.chosen_rewards), np.asarray(out.rejected_rewards)
    np.testing.assert_allclose(plain["rewards/accuracies"], np.mean(rc > rr))
    np.testing.assert_allclose(plain["rewards/margins"], np.mean(rc - rr), rtol=1e-5)
    np.testing.assert_allclose(plain["logps/chosen"], np.mean(pi_c), rtol=1e-6)
    np.testing.assert_allclose(plain["loss"], np.mean(np.asarray(out.losses)), rtol=1e-6)

    w = np.random.default_rng(5).random(B).astype(np.float32)
    weighted = L.dpo_metrics(out, jnp.asarray(w))
    np.testing.assert_allclose(weighted["loss"], np.sum(w * out.losses) / np.sum(w), rtol=1e-5)
    np.testing.assert_allclose(weighted["rewards/accuracies"], np.sum(w * (rc > rr)) / np.sum(w), rtol=1e-5)
    np.testing.assert_allclose(L.weighted_mean(out.losses, jnp.zeros(B)), 0.0)
    assert np.all(np.isfinite(jax.grad(lambda v: L.weighted_mean(v, jnp.zeros(B)))(out.losses)))


def test_gradient_sign():
    (pi_c, pi_r, ref_c, ref_r), _, _ = batch(6)

    def objective(chosen, rejected):
        return L.weighted_mean(L.dpo_loss(chosen, rejected, ref_c, ref_r).losses)

    grad_c, grad_r = jax.grad(objective, argnums=(0, 1))(jnp.asarray(pi_c), jnp.asarray(pi_r))
    assert np.all(grad_c < 0) and np.all(grad_r > 0)  # raising chosen / lowering rejected lowers the loss
    assert objective(pi_c + 1.0, pi_r) < objective(pi_c, pi_r)


def test_jit_with_static_options():
    (pi_c, pi_r, ref_c, ref_r), n_c, n_r = batch(7)
    fn = jax.jit(L.dpo_loss, static_argnames=("beta", "loss_type", "label_smoothing", "rpo_alpha", "length_normalize"))
    kwargs = dict(beta=0.3, loss_type="ipo", chosen_tokens=n_c, rejected_tokens=n_r, rpo_alpha=1.0)
    eager = L.dpo_loss(pi_c, pi_r, ref_c, ref_r, **kwargs)
    np.testing.assert_allclose(fn(pi_c, pi_r, ref_c, ref_r, **kwargs).losses, eager.losses, rtol=1e-6)
    metrics = jax.jit(L.dpo_metrics)(L.dpo_loss(pi_c, pi_r, ref_c, ref_r), jnp.ones(B))
    assert metrics["loss"].shape == () and "nll_loss" not in metrics


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(loss_type="kto"), "sigmoid, robust, ipo, hinge"),
        (dict(beta=0.0), "beta"),
        (dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing applies"),
        (dict(loss_type="robust", label_smoothing=0.5), r"\[0, 0.5\)"),
        (dict(loss_type="ipo"), "chosen_tokens and rejected_tokens"),
        (dict(rpo_alpha=1.0), "rpo_alpha > 0 needs chosen_tokens"),
        (dict(rpo_alpha=-1.0), "rpo_alpha must be"),
    ],
)
def test_bad_options_raise(kwargs, message):
    (pi_c, pi_r, ref_c, ref_r), _, _ = batch()
    with pytest.raises(ValueError, match=message):
        L.dpo_loss(pi_c, pi_r, ref_c, ref_r, **kwargs)
