"""Policy loss, KL, entropy, log-probs, aggregation and temperature control (sections 2, 3, 9)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.kernels import AGGREGATIONS
from rlx.kernels import aggregation as AG
from rlx.kernels import policy_loss as P
from rlx.kernels import temperature as T
from tests import reference_numpy as ref

TOL = dict(rtol=1e-5, atol=1e-5)


def loss_batch(seed, B=6, L=7):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 1.0, size=(B, L)).astype(np.float32)
    logp = (old + rng.normal(0.0, 0.4, size=(B, L))).astype(np.float32)
    adv = rng.normal(size=(B, L)).astype(np.float32)
    adv[0, 0] = 0.0
    lengths = rng.integers(0, L + 1, size=B)
    lengths[0] = L
    lengths[1] = 0
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
    return logp, old, adv, mask, rng


# --------------------------------------------------------------------------- PPO


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("eps_low,eps_high,c",
                         [(0.2, 0.2, 3.0), (0.2, 0.28, 3.0), (0.2, 0.28, None)])
def test_ppo_clip_matches_reference(eps_low, eps_high, c, use_jit):
    logp, old, adv, _, _ = loss_batch(0)
    fn = functools.partial(P.ppo_clip_loss, eps_low=eps_low, eps_high=eps_high, dual_clip_c=c)
    out = (jax.jit(fn) if use_jit else fn)(logp, old, adv)
    loss, ratio, high, low, dual = ref.ppo_clip(logp, old, adv, eps_low, eps_high, c)
    np.testing.assert_allclose(np.asarray(out.loss_BxL), loss, **TOL)
    np.testing.assert_allclose(np.asarray(out.ratio_BxL), ratio, **TOL)
    np.testing.assert_array_equal(np.asarray(out.clip_high_BxL), high)
    np.testing.assert_array_equal(np.asarray(out.clip_low_BxL), low)
    np.testing.assert_array_equal(np.asarray(out.dual_clip_BxL), dual)
    assert high.sum() > 0 and low.sum() > 0


def test_ppo_clip_by_hand():
    lp = np.log(np.array([[1.5, 0.5, 10.0, 1.1]], np.float32))
    adv = np.array([[2.0, -1.0, -1.0, 1.0]], np.float32)
    out = P.ppo_clip_loss(lp, np.zeros_like(lp), adv, eps_low=0.2, eps_high=0.28)
    # A>0, rho=1.5 -> clipped at 1.28; A<0, rho=0.5 -> max(0.5, 0.8) = 0.8;
    # A<0, rho=10 -> min(10, 3) dual clip; A>0 inside the band -> -rho.
    np.testing.assert_allclose(np.asarray(out.loss_BxL), [[-2.56, 0.8, 3.0, -1.1]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.clip_high_BxL), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(out.clip_low_BxL), [[0, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(out.dual_clip_BxL), [[0, 0, 1, 0]])


def test_ratio_clamp():
    out = P.ppo_clip_loss(np.array([[50.0, -50.0]]), np.zeros((1, 2)), np.array([[0.0, 0.0]]))
    np.testing.assert_allclose(np.asarray(out.ratio_BxL), [[math.exp(20), math.exp(-20)]],
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.log_ratio_BxL), [[20.0, -20.0]])


def test_ppo_gradient_is_zero_where_clipped():
    lp = jnp.log(jnp.array([[1.5, 1.1]]))
    adv = jnp.array([[1.0, 1.0]])

    def total(x):
        return P.ppo_clip_loss(x, jnp.zeros_like(x), adv, eps_high=0.28).loss_BxL.sum()

    g = jax.grad(total)(lp)
    np.testing.assert_allclose(np.asarray(g), [[0.0, -1.1]], rtol=1e-6)


# --------------------------------------------------------------------------- KL


def test_kl_worked_numbers():
    lp, rlp = np.array([-1.0]), np.array([-1.5])
    np.testing.assert_allclose(np.asarray(P.kl_penalty(lp, rlp, "k1")), [0.5])
    np.testing.assert_allclose(np.asarray(P.kl_penalty(lp, rlp, "k2")), [0.125])
    np.testing.assert_allclose(np.asarray(P.kl_penalty(lp, rlp, "k3")), [0.1065307], atol=1e-7)
    np.testing.assert_allclose(np.asarray(P.kl_penalty(lp, rlp, "low_var_kl")), [0.1065307],
                               atol=1e-7)


def test_kl_random_and_k3_clamp():
    logp, old, _, _, _ = loss_batch(1)
    for kind in ("k1", "k2", "k3"):
        np.testing.assert_allclose(np.asarray(P.kl_penalty(logp, old, kind)),
                                   ref.kl(logp, old, kind), **TOL)
    big = np.asarray(P.kl_penalty(np.array([-40.0, 0.0, 0.0]), np.array([0.0, -40.0, -5.0]), "k3"))
    # d = 40 -> 20: e^20 - 21 -> clamp 10; d = -40 -> -20: ~19 -> clamp 10; d = -5: e^-5 + 4.
    np.testing.assert_allclose(big, [10.0, 10.0, math.exp(-5) + 4.0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown KL"):
        P.kl_penalty(logp, old, "k4")


def test_adaptive_kl_update():
    for coef, cur, n, target, horizon in [(0.1, 0.2, 256, 0.1, 10000), (0.1, 0.05, 64, 0.1, 1000),
                                          (0.02, 0.011, 128, 0.01, 500)]:
        got = float(jax.jit(functools.partial(P.adaptive_kl_update, target=target,
                                              horizon=horizon))(coef, cur, n))
        assert got == pytest.approx(ref.adaptive_kl(coef, cur, n, target, horizon), rel=1e-6)
    assert float(P.adaptive_kl_update(0.1, 0.2, 256, target=0.1, horizon=10000)) == \
        pytest.approx(0.1 * 1.00512, rel=1e-6)


# --------------------------------------------------------------------------- entropy / logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_entropy_and_logprobs_match_reference(temperature):
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(3, 4, 11)) * 3).astype(np.float32)
    tokens = rng.integers(0, 11, size=(3, 4))
    np.testing.assert_allclose(np.asarray(P.entropy_from_logits(logits, temperature)),
                               ref.entropy(logits, temperature), **TOL)
    lp = jax.jit(P.token_logprobs)(logits, tokens, temperature)
    np.testing.assert_allclose(np.asarray(lp), ref.token_logprobs(logits, tokens, temperature),
                               **TOL)
    assert lp.dtype == jnp.float32


def test_entropy_bf16_logits_and_uniform():
    logits = jnp.zeros((1, 2, 8), jnp.bfloat16)
    h = P.entropy_from_logits(logits)
    assert h.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(h), math.log(8), rtol=1e-6)


# --------------------------------------------------------------------------- aggregation


MODES = sorted(AGGREGATIONS)


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_matches_reference(mode):
    _, _, loss, mask, _ = loss_batch(3)
    got = float(AG.aggregate(mode, loss, mask, max_len=16))
    assert got == pytest.approx(ref.aggregate(mode, loss, mask, max_len=16), rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_accumulation_is_exact(mode):
    rng = np.random.default_rng(4)
    B, L = 12, 9
    loss = rng.normal(size=(B, L)).astype(np.float32)
    lengths = rng.integers(0, L + 1, size=B)
    lengths[[2, 7]] = 0
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
    expected = ref.aggregate(mode, loss, mask, max_len=32)
    fn = jax.jit(functools.partial(AGGREGATIONS[mode], max_len=32))
    d_global = float(AG.global_denominator(mode, mask, max_len=32))
    for splits in ([4, 8], [1, 2, 3, 11], [6]):
        parts = [fn(l, m) for l, m in zip(np.split(loss, splits), np.split(mask, splits))]
        total = sum(float(s) for s, _ in parts)
        assert total / d_global == pytest.approx(expected, rel=1e-5)
        if AG.DENOMINATOR_IS_COUNT[mode]:
            assert sum(float(d) for _, d in parts) == pytest.approx(d_global)
    # Gradients accumulate the same way: d/dl of (sum_k s_k) / D equals the full-batch gradient.
    g_full = jax.grad(lambda l: AG.aggregate(mode, l, mask, max_len=32))(loss)
    g_parts = [jax.grad(lambda l, m=m: fn(l, m)[0] / d_global)(l)
               for l, m in zip(np.split(loss, [5]), np.split(mask, [5]))]
    np.testing.assert_allclose(np.concatenate(g_parts), np.asarray(g_full), **TOL)


def test_aggregation_denominators_and_empty_batch():
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
    loss = np.ones((3, 3), np.float32)
    assert [float(AGGREGATIONS[k](loss, mask, max_len=8)[1]) for k in MODES] == \
        [2.0, 2.0, 16.0, 3.0]  # seq-mean-token-mean, seq-mean-token-sum, -norm (2 rows x 8), token-mean
    zero = np.zeros((2, 3), np.float32)
    for mode in MODES:
        assert float(AG.aggregate(mode, loss[:2], zero, max_len=8)) == 0.0
    with pytest.raises(ValueError, match="max_len"):
        AGGREGATIONS["seq-mean-token-sum-norm"](loss, mask, max_len=None)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        AG.aggregate("token_mean", loss, mask)


# --------------------------------------------------------------------------- temperature


def test_mean_token_entropy_matches_reference():
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(2, 5, 13)) * 4).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], np.float32)
    for t in (0.7, 1.0, 1.3):
        got = float(jax.jit(T.mean_token_entropy)(logits, mask, t))
        assert got == pytest.approx(ref.mean_entropy(logits, mask, t), rel=1e-5)


def test_temperature_step_moves_toward_target_and_respects_bounds():
    assert float(T.temperature_step(1.0, 0.15, rate=0.5)) == pytest.approx(math.exp(0.5 * 0.5), rel=1e-6)
    assert float(T.temperature_step(1.0, 0.6, rate=0.5)) == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert float(T.temperature_step(1.0, 0.3)) == pytest.approx(1.0)
    assert float(T.temperature_step(1.9, 0.0)) == pytest.approx(2.0)
    assert float(T.temperature_step(0.11, 5.0)) == pytest.approx(0.1)


def test_temperature_controller_converges_on_fixed_logits():
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(4, 8, 32)) * 5).astype(np.float32)
    mask = np.ones((4, 8), np.float32)

    @jax.jit
    def run(t0):
        def body(t, _):
            h = T.mean_token_entropy(logits, mask, t)
            return T.temperature_step(t, h, target=0.3, rate=0.5), h
        return jax.lax.scan(body, t0, None, length=60)

    t_final, _ = run(jnp.float32(1.0))
    assert float(T.mean_token_entropy(logits, mask, t_final)) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("adv, bound", [(-1.0, "high"), (2.0, "low")])
def test_ppo_gradient_passes_whole_on_a_clip_bound(adv, bound):
    # The ratio lands exactly on 1 + eps_high with A < 0 (or 1 - eps_low with A > 0): both
    # branches are equal there and the loss is smooth towards the unclipped side, so the
    # gradient is the unclipped one, -A rho -- not 0.75 of it from a split tie.
    lr = np.float32(0.15 if bound == "high" else -0.15)
    ratio = float(np.exp(np.float32(lr)))
    eps = {"eps_high": ratio - 1.0, "eps_low": 0.2} if bound == "high" else {"eps_low": 1.0 - ratio, "eps_high": 0.2}
    old = np.zeros((1, 1), np.float32)

    def loss(logp):
        return P.ppo_clip_loss(logp, old, np.full((1, 1), adv, np.float32), dual_clip_c=None, **eps).loss_BxL.sum()

    grad = float(jax.grad(loss)(np.full((1, 1), lr, np.float32))[0, 0])
    assert grad == pytest.approx(-adv * ratio, rel=1e-6)


def test_dr_grpo_normaliser_is_sequences_times_max_len():
    # ALGORITHMS.md section 3: mean over non-empty sequences of the token sum, / L_max.
    loss = np.array([[1.0, 2.0, 0.0], [5.0, 5.0, 5.0], [3.0, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
    assert float(AG.aggregate("seq-mean-token-sum-norm", loss, mask, max_len=4)) == pytest.approx(6.0 / (2 * 4))
