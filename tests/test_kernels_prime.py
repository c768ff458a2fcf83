"""PRIME kernels vs the float64 reference (ALGORITHMS.md section 4)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels import prime as PR
from tests import reference_numpy as ref

TOL = dict(rtol=1e-5, atol=1e-5)


def prime_batch(seed, B=11, L=8):
    rng = np.random.default_rng(seed)
    group_ids = np.array([4, 9, 4, 9, 4, -1, 9, 2, 2, 4, 2][:B], np.int32)
    lengths = rng.integers(1, L + 1, size=B)
    lengths[3] = 0
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
    lp_prm = rng.normal(-2, 1, size=(B, L)).astype(np.float32)
    lp_ref = (lp_prm + rng.normal(0, 2, size=(B, L))).astype(np.float32)
    acc = rng.integers(0, 2, size=B).astype(np.float32)
    acc[3] = 1.0  # the empty row must not leak its label into the group baseline
    return lp_prm, lp_ref, mask, group_ids, acc


@pytest.mark.parametrize("granularity", ["token", "whole"])
def test_implicit_rewards_match_reference(granularity):
    lp_prm, lp_ref, mask, _, _ = prime_batch(0)
    fn = jax.jit(functools.partial(PR.implicit_token_rewards, beta=0.05, granularity=granularity))
    np.testing.assert_allclose(np.asarray(fn(lp_prm, lp_ref, mask)),
                               ref.prime_rewards(lp_prm, lp_ref, mask, 0.05, granularity), **TOL)


def test_implicit_rewards_by_hand():
    r = PR.implicit_token_rewards(np.array([[-1.0, -2.0, 5.0]]), np.array([[-3.0, -1.0, 0.0]]),
                                  np.array([[1.0, 1.0, 0.0]]), beta=0.05)
    np.testing.assert_allclose(np.asarray(r), [[0.1, -0.05, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="granularity"):
        PR.implicit_token_rewards(r, r, r, granularity="step")


def test_prm_bce_loss_matches_reference_and_is_differentiable():
    lp_prm, lp_ref, mask, _, acc = prime_batch(1)
    total, count = jax.jit(PR.prm_bce_loss)(lp_prm, lp_ref, mask, acc)
    ref_total, ref_count = ref.prime_bce(lp_prm, lp_ref, mask, acc, 0.05)
    assert float(total) == pytest.approx(ref_total, rel=1e-5)
    assert float(count) == ref_count
    g = jax.grad(lambda x: PR.prm_bce_loss(x, lp_ref, mask, acc)[0])(jnp.asarray(lp_prm))
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[mask == 0] == 0)
    # Saturated logits stay finite (softplus form).
    t, _ = PR.prm_bce_loss(np.full((1, 2), 1e4), np.zeros((1, 2)), np.ones((1, 2)), np.zeros(1))
    assert float(t) == pytest.approx(0.05 * 2e4, rel=1e-6)
    t, c = PR.prm_bce_loss(lp_prm, lp_ref, mask, acc, row_mask_B=(np.arange(11) != 5))
    assert float(c) == 10.0


def test_batch_norm_rewards():
    lp_prm, lp_ref, mask, _, _ = prime_batch(2)
    r = ref.prime_rewards(lp_prm, lp_ref, mask, 0.05)
    np.testing.assert_allclose(np.asarray(PR.batch_norm_rewards(r.astype(np.float32), mask)),
                               ref.prime_batch_norm(r, mask), **TOL)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("seed", [3, 4])
def test_prime_advantages_match_reference(seed, use_jit):
    lp_prm, lp_ref, mask, g, acc = prime_batch(seed)
    r = ref.prime_rewards(lp_prm, lp_ref, mask, 0.05).astype(np.float32)
    fn = jax.jit(PR.prime_advantages) if use_jit else PR.prime_advantages
    adv, ret = fn(r, acc, mask, g)
    adv_ref, ret_ref = ref.prime_advantages(r, acc, mask, g, 5.0, 5.0)
    np.testing.assert_allclose(np.asarray(ret), ret_ref, **TOL)
    np.testing.assert_allclose(np.asarray(adv), adv_ref, **TOL)
    assert np.all(np.asarray(adv)[5] == 0)  # padding row
    adv2, _ = ADVANTAGE_FNS["prime"](token_rewards_BxL=r, scores_B=acc, mask_BxL=mask,
                                     group_ids_B=g)
    np.testing.assert_allclose(np.asarray(adv2), np.asarray(adv), **TOL)


def test_prime_advantages_by_hand():
    # Two one-token responses in one group, outcome only: RLOO gives +-1 (x5), returns equal the
    # rewards, and whitening two values [a, -a] gives +-1/sqrt(2) (Bessel-corrected variance).
    adv, ret = PR.prime_advantages(np.zeros((2, 2)), np.array([1.0, 0.0]),
                                   np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0, 0]))
    np.testing.assert_allclose(np.asarray(ret), [[5.0, 0.0], [-5.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(adv), [[2 ** -0.5, 0.0], [-(2 ** -0.5), 0.0]], rtol=1e-5)
    # Process source: rewards [1, 3] and [2] -> mu = [2, 2]; r' = 2 r - 4 on valid tokens.
    r = np.array([[1.0, 3.0], [2.0, 0.0]])
    m = np.array([[1.0, 1.0], [1.0, 0.0]])
    _, ret = PR.prime_advantages(r, np.zeros(2), m, np.array([0, 0]), process_coef=1.0,
                                 outcome_coef=0.0)
    np.testing.assert_allclose(np.asarray(ret), [[-2.0 + 2.0, 2.0], [0.0, 0.0]], atol=1e-6)


def test_accuracy_band_keep():
    g = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, -1], np.int32)
    acc = np.array([1, 0, 0, 0, 0,  # 0.2: kept (inclusive)
                    1, 1, 1, 1, 0,  # 0.8: kept (inclusive)
                    0, 0, 0, 0,  # 0.0: dropped
                    1, 1,  # 1.0: dropped
                    1], np.float32)
    keep = np.asarray(jax.jit(PR.accuracy_band_keep)(acc, g))
    np.testing.assert_array_equal(keep, ref.accuracy_band(acc, g, 0.2, 0.8))
    np.testing.assert_array_equal(keep, [1] * 10 + [0] * 7)
    trunc = np.zeros(17, bool)
    trunc[7] = True
    keep = PR.accuracy_band_keep(acc, g, truncated_B=trunc, drop_truncated=True)
    np.testing.assert_array_equal(np.asarray(keep), [1] * 5 + [0] * 12)
    np.testing.assert_array_equal(
        np.asarray(keep), ref.accuracy_band(acc, g, 0.2, 0.8, trunc, drop_truncated=True))
    with pytest.raises(ValueError, match="truncated_B"):
        PR.accuracy_band_keep(acc, g, drop_truncated=True)


def test_accuracy_band_random_vs_reference():
    rng = np.random.default_rng(5)
    g = rng.integers(-1, 6, size=40).astype(np.int32)
    acc = rng.integers(0, 2, size=40).astype(np.float32)
    keep = PR.accuracy_band_keep(acc, g, low=0.25, high=0.75)
    np.testing.assert_array_equal(np.asarray(keep), ref.accuracy_band(acc, g, 0.25, 0.75))
