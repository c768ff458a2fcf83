"""Advantage estimators vs the float64 reference (ALGORITHMS.md section 1)."""

import functools

import jax
import numpy as np
import pytest

from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels import advantages as A
from tests import reference_numpy as ref

TOL = dict(rtol=1e-5, atol=1e-5)


def ragged_batch(seed, B=13, L=9, holes=False):
    """Non-contiguous, unequal groups with arbitrary ids, a padding row, an empty row."""
    rng = np.random.default_rng(seed)
    group_ids = np.array([7, 3, 7, 1000, 3, 7, -1, 3, 1000, 42, 7, 3, 1000][:B], np.int32)
    lengths = rng.integers(1, L + 1, size=B)
    lengths[4] = 0  # empty response inside a real group
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
    if holes:  # masked-out tool observations in the middle of a response
        mask[:, 2] = 0.0
        mask[0, 2:4] = 0.0
    scores = rng.integers(0, 2, size=B).astype(np.float32) + rng.normal(size=B).astype(
        np.float32) * 0.3
    return scores, mask, group_ids, rng


# --------------------------------------------------------------------------- worked numbers


def test_grpo_worked_numbers():
    m = np.ones((4, 3), np.float32)
    g = np.zeros(4, np.int32)
    a = np.asarray(A.grpo(np.array([1, 0, 0, 1.0]), m, g))
    np.testing.assert_allclose(a[:, 0], [0.8660, -0.8660, -0.8660, 0.8660], atol=1e-4)
    a = np.asarray(A.grpo(np.array([1, 0, 0, 0.0]), m, g))
    np.testing.assert_allclose(a[:, 0], [1.499997, -0.499999, -0.499999, -0.499999], atol=1e-6)
    np.testing.assert_allclose(a, a[:, :1] * m)


def test_rloo_worked_numbers():
    a = A.rloo(np.array([1, 0, 0, 1.0]), np.ones((4, 2)), np.zeros(4, np.int32))
    np.testing.assert_allclose(np.asarray(a)[:, 0], [0.6667, -0.6667, -0.6667, 0.6667], atol=1e-4)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "empo"])
def test_all_equal_group_is_exactly_zero(name):
    s = np.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 1 / 3, 1 / 3], np.float32)
    g = np.array([0, 0, 0, 1, 1, 1, 2, 2], np.int32)
    adv, _ = ADVANTAGE_FNS[name](scores_B=s, mask_BxL=np.ones((8, 5)), group_ids_B=g)
    assert np.all(np.asarray(adv) == 0.0)


def test_group_of_one():
    s = np.array([2.0, 1.0, 0.0, -3.0], np.float32)
    g = np.array([0, 1, 1, 2], np.int32)
    m = np.ones((4, 2), np.float32)
    grpo = np.asarray(A.grpo(s, m, g))[:, 0]
    np.testing.assert_allclose(grpo[[0, 3]], [2 / (1 + 1e-6), -3 / (1 + 1e-6)], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(A.rloo(s, m, g))[[0, 3], 0], [2.0, -3.0])
    np.testing.assert_allclose(np.asarray(A.dr_grpo(s, m, g))[[0, 3], 0], [2.0, -3.0])


def test_padding_row_score_does_not_leak_into_groups():
    s, m, g, _ = ragged_batch(1)
    s2 = s.copy()
    s2[6] = 1e6
    np.testing.assert_array_equal(np.asarray(A.grpo(s, m, g)), np.asarray(A.grpo(s2, m, g)))
    np.testing.assert_array_equal(np.asarray(A.reinforce_pp_baseline(s, m, g)),
                                  np.asarray(A.reinforce_pp_baseline(s2, m, g)))


# --------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("seed,use_jit", [(0, False), (0, True), (1, True), (2, True)])
def test_outcome_estimators_match_reference(seed, use_jit):
    s, m, g, _ = ragged_batch(seed)
    wrap = jax.jit if use_jit else (lambda f: f)
    cases = {
        A.grpo: ref.grpo(s, m, g),
        A.dr_grpo: ref.grpo(s, m, g, norm_by_std=False),
        A.rloo: ref.rloo(s, m, g),
        A.reinforce_pp_baseline: ref.reinforce_pp_baseline(s, m, g),
        A.w_reinforce: ref.w_reinforce(s, m, g, 0.1, "weighted"),
        A.psr: ref.w_reinforce(s, m, g, mode="psr"),
        A.nsr: ref.w_reinforce(s, m, g, mode="nsr"),
    }
    for fn, expected in cases.items():
        np.testing.assert_allclose(np.asarray(wrap(fn)(s, m, g)), expected, **TOL,
                                   err_msg=fn.__name__)


def test_w_reinforce_values():
    s = np.array([1.0, 0.0, 1.0], np.float32)
    m = np.ones((3, 2), np.float32)
    g = np.zeros(3, np.int32)
    np.testing.assert_allclose(np.asarray(A.w_reinforce(s, m, g, lam=0.1))[:, 0], [0.1, -1, 0.1])
    np.testing.assert_allclose(np.asarray(A.psr(s, m, g))[:, 0], [1, 0, 1])
    np.testing.assert_allclose(np.asarray(A.nsr(s, m, g))[:, 0], [0, -1, 0])


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("holes", [False, True])
def test_reinforce_pp_matches_reference(holes, use_jit):
    _, m, g, rng = ragged_batch(3, holes=holes)
    r = rng.normal(size=m.shape).astype(np.float32)
    fn = functools.partial(A.reinforce_pp, gamma=0.9)
    adv, ret = (jax.jit(fn) if use_jit else fn)(r, m, g)
    adv_ref, ret_ref = ref.reinforce_pp(r, m, g, 0.9)
    np.testing.assert_allclose(np.asarray(ret), ret_ref, **TOL)
    np.testing.assert_allclose(np.asarray(adv), adv_ref, **TOL)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("whiten", [False, True])
def test_gae_matches_reference_with_mask_holes(whiten, use_jit):
    _, m, g, rng = ragged_batch(4, holes=True)
    g = np.zeros_like(g)
    r = rng.normal(size=m.shape).astype(np.float32)
    v = rng.normal(size=m.shape).astype(np.float32)
    fn = functools.partial(A.gae, gamma=0.95, lam=0.9, whiten=whiten)
    adv, ret = (jax.jit(fn) if use_jit else fn)(r, v, m, g)
    adv_ref, ret_ref = ref.gae(r, v, m, 0.95, 0.9, whiten=whiten)
    np.testing.assert_allclose(np.asarray(adv), adv_ref, **TOL)
    np.testing.assert_allclose(np.asarray(ret), ret_ref, **TOL)


def test_gae_single_step_by_hand():
    # One token, V=0.5, r=1: delta = 1 - 0.5; returns = A + V = 1.
    adv, ret = A.gae(np.array([[1.0, 0.0]]), np.array([[0.5, 9.0]]), np.array([[1.0, 0.0]]),
                     gamma=1.0, lam=1.0, whiten=False)
    np.testing.assert_allclose(np.asarray(adv), [[0.5, 0.0]])
    np.testing.assert_allclose(np.asarray(ret), [[1.0, 0.0]])


# --------------------------------------------------------------------------- whitening


def test_masked_whiten_matches_reference():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    m = (rng.random((4, 6)) > 0.4).astype(np.float32)
    np.testing.assert_allclose(np.asarray(A.masked_whiten(x, m)) * m, ref.masked_whiten(x, m) * m,
                               **TOL)


def test_masked_whiten_degenerate():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    one = np.zeros((2, 3), np.float32)
    one[0, 1] = 1.0
    with pytest.raises(ValueError, match="more than one"):
        A.masked_whiten(x, one)
    with pytest.raises(ValueError):
        A.masked_whiten(x, np.zeros((2, 3)))
    for mask in (one, np.zeros((2, 3), np.float32)):
        out = np.asarray(jax.jit(A.masked_whiten)(x, mask))
        assert np.all(out == 0.0)


def test_masked_mean():
    x = np.array([[1.0, 2.0, 100.0]])
    np.testing.assert_allclose(float(A.masked_mean(x, np.array([[1, 1, 0]]))), 1.5, rtol=1e-6)


# --------------------------------------------------------------------------- registry


def test_registry_uniform_convention_under_jit_and_padding():
    s, m, g, rng = ragged_batch(6)
    tok = s[:, None] * np.asarray(A.last_token_onehot(m))
    v = rng.normal(size=m.shape).astype(np.float32)
    step_end = np.asarray(A.last_token_onehot(m))
    extras = {"pure": dict(step_end_mask_BxL=step_end, scores_B=-(s > 0.5).astype(np.float32)),
              "prime": dict(scores_B=(s > 0.5).astype(np.float32))}
    for name, fn in ADVANTAGE_FNS.items():
        kw = dict(mask_BxL=m, group_ids_B=g, token_rewards_BxL=tok, values_BxL=v)
        kw.update(extras.get(name, {}))
        # Eager paths are compared with the reference elsewhere; here everything goes through jit.
        for x in jax.jit(lambda kw, fn=fn: fn(**kw))(kw):
            assert x.shape == m.shape, name
            # Padding row 6, empty row 4 and every masked token get exactly 0.
            x = np.asarray(x)
            assert np.all(x[6] == 0) and np.all(x[4] == 0) and np.all(x[m == 0] == 0), name
            assert np.all(np.isfinite(x)), name


def test_registry_scores_equal_token_rewards_form():
    s, m, g, _ = ragged_batch(7)
    s[m.sum(1) == 0] = 0.0  # an empty row has nowhere to put its token reward
    tok = s[:, None] * np.asarray(A.last_token_onehot(m))
    for name in ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"):
        a1, _ = ADVANTAGE_FNS[name](scores_B=s, mask_BxL=m, group_ids_B=g)
        a2, _ = ADVANTAGE_FNS[name](token_rewards_BxL=tok, mask_BxL=m, group_ids_B=g)
        np.testing.assert_allclose(np.asarray(a1), np.asarray(a2), **TOL, err_msg=name)


def test_registry_rejects_unknown_hyper_and_missing_inputs():
    m = np.ones((2, 2))
    g = np.zeros(2, np.int32)
    with pytest.raises(TypeError):
        ADVANTAGE_FNS["grpo"](scores_B=np.ones(2), mask_BxL=m, group_ids_B=g, epslion=1e-4)
    with pytest.raises(ValueError, match="scores_B"):
        ADVANTAGE_FNS["rloo"](mask_BxL=m, group_ids_B=g)


def test_group_ids_need_not_be_contiguous_or_small():
    s, m, g, _ = ragged_batch(8)
    remap = {7: 0, 3: 1, 1000: 2, 42: 3, -1: -1}
    g2 = np.array([remap[int(x)] for x in g], np.int32)
    np.testing.assert_allclose(np.asarray(A.grpo(s, m, g)), np.asarray(A.grpo(s, m, g2)))
    perm = np.random.default_rng(0).permutation(len(s))
    np.testing.assert_allclose(np.asarray(A.rloo(s[perm], m[perm], g[perm])),
                               np.asarray(A.rloo(s, m, g))[perm], **TOL)


def test_reinforce_pp_return_carries_across_a_masked_span():
    # ALGORITHMS.md section 1: a tool's output (masked) between two turns passes the return on.
    _, ret = A.reinforce_pp(np.array([[0.0, 0.0, 1.0]], np.float32), np.array([[1, 0, 1]], np.float32),
                            np.zeros(1, np.int32), gamma=1.0)
    np.testing.assert_allclose(np.asarray(ret), [[1.0, 0.0, 1.0]])
    _, ret = A.reinforce_pp(np.array([[0.0, 7.0, 0.0, 1.0]], np.float32), np.array([[1, 0, 0, 1]], np.float32),
                            np.zeros(1, np.int32), gamma=0.5)
    np.testing.assert_allclose(np.asarray(ret), [[0.125, 0.0, 0.0, 1.0]])  # masked reward 7 adds nothing
