"""PURE, EMPO and CAMPO kernels vs the float64 reference (ALGORITHMS.md sections 5-7)."""

import functools
import math

import jax
import numpy as np
import pytest

from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels import campo as C
from rlx.kernels import empo as E
from rlx.kernels import pure as PU
from tests import reference_numpy as ref

TOL = dict(rtol=1e-5, atol=1e-5)

# --------------------------------------------------------------------------- PURE


def test_softmin_worked_numbers():
    pr = np.array([[0.9, -0.2, 0.5]], np.float32)
    w = np.asarray(PU.softmin_weights(pr, np.ones((1, 3)), temperature=0.1))[0]
    np.testing.assert_allclose(w, [1.7e-5, 0.99907, 9.1e-4], rtol=2e-2)
    np.testing.assert_allclose(w, ref.softmin_weights(pr[0], 0.1), rtol=1e-5, atol=1e-9)
    r = PU.min_form_step_rewards(pr, np.ones((1, 3)), temperature=0.1)
    assert float(r.sum()) == pytest.approx(-0.19934, abs=1e-5)


def test_softmin_ignores_missing_steps_and_empty_rows():
    pr = np.array([[0.9, -0.2, 0.5, -1.0], [0.3, 0.0, 0.0, 0.0]], np.float32)
    valid = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], np.float32)
    w = np.asarray(jax.jit(PU.softmin_weights)(pr, valid))
    np.testing.assert_allclose(w[0, :3], ref.softmin_weights(pr[0, :3], 0.1), rtol=1e-5, atol=1e-9)
    assert w[0, 3] == 0 and np.all(w[1] == 0)
    unweighted = PU.min_form_step_rewards(pr, valid, weighted=False)
    np.testing.assert_allclose(np.asarray(unweighted), pr * valid)


def test_step_scores_from_logits():
    logits = np.array([[[0.0, 0.0], [0.0, 2.0]]], np.float32)
    p1 = 1 / (1 + math.exp(-2))
    np.testing.assert_allclose(np.asarray(PU.step_scores_from_logits(logits)),
                               [[0.0, 2 * p1 - 1]], rtol=1e-6)


def test_step_ends_and_scatter():
    step_ids = np.array([[0, 0, 0, 1, 1, 2, -1, -1], [0, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]], np.float32)
    ends = np.asarray(jax.jit(functools.partial(PU.step_ends_from_step_ids, num_steps=4))(
        step_ids, mask))
    np.testing.assert_array_equal(ends, [[2, 4, 5, -1], [0, 4, -1, -1]])
    tok, end_mask = PU.scatter_step_rewards(np.array([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 9.0, 9.0]]),
                                            ends, 8)
    np.testing.assert_allclose(np.asarray(tok),
                               [[0, 0, 1, 0, 2, 3, 0, 0], [4, 0, 0, 0, 5, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(end_mask), np.asarray(tok) != 0)


def pure_batch(seed, B=9, L=12, K=4):
    rng = np.random.default_rng(seed)
    g = np.array([1, 5, 1, 5, 1, -1, 5, 8, 8][:B], np.int32)
    lengths = rng.integers(K + 1, L + 1, size=B)
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
    ends = np.full((B, K), -1, np.int32)
    for b in range(B):
        k = rng.integers(1, K + 1)
        cut = np.sort(rng.choice(np.arange(lengths[b] - 1), size=k - 1, replace=False))
        ends[b, :k] = np.append(cut, lengths[b] - 1)  # the last step ends at EOS
    pr = rng.uniform(-1, 1, size=(B, K)).astype(np.float32)
    vr = -(rng.random(B) > 0.5).astype(np.float32)
    return pr, ends, vr, mask, g


@pytest.mark.parametrize("zero_step_ends,with_vr,use_jit,baseline", [
    (False, True, False, "step"), (False, True, True, "step"), (True, True, True, "step"),
    (False, False, True, "step"), (False, True, False, "token"), (True, False, True, "token")])
def test_pure_advantages_match_reference(zero_step_ends, with_vr, use_jit, baseline):
    pr, ends, vr, mask, g = pure_batch(0)
    B, K = pr.shape
    step_r = np.asarray(PU.min_form_step_rewards(pr, ends >= 0))
    tok, end_mask = PU.scatter_step_rewards(step_r, ends, mask.shape[1])
    fn = functools.partial(PU.pure_advantages, vr_coef=1.0, zero_step_ends=zero_step_ends,
                           baseline=baseline)
    fn = jax.jit(fn) if use_jit else fn
    adv, ret = fn(tok, end_mask, mask, g, verifiable_B=vr if with_vr else None)
    rewards = [[ref.softmin_weights(pr[b][ends[b] >= 0], 0.1)[k] * pr[b][k]
                for k in range(K) if ends[b, k] >= 0] for b in range(B)]
    positions = [[int(e) for e in ends[b] if e >= 0] for b in range(B)]
    adv_ref, ret_ref = ref.pure_advantages(rewards, positions, vr if with_vr else None, mask, g,
                                           zero_step_ends=zero_step_ends, baseline=baseline)
    np.testing.assert_allclose(np.asarray(ret), ret_ref, **TOL)
    np.testing.assert_allclose(np.asarray(adv), adv_ref, **TOL)
    adv2, _ = ADVANTAGE_FNS["pure"](token_rewards_BxL=tok, step_end_mask_BxL=end_mask,
                                    scores_B=vr if with_vr else None, mask_BxL=mask,
                                    group_ids_B=g, zero_step_ends=zero_step_ends, baseline=baseline)
    np.testing.assert_allclose(np.asarray(adv2), np.asarray(adv), **TOL)


# --------------------------------------------------------------------------- EMPO


def test_cluster_answers_greedy():
    assert E.cluster_answers(["4", "2", "4", "", "x", "2", ""], str.__eq__) == [0, 1, 0, 2, 3, 1, 4]
    # Equivalence is checked against the first member only (greedy, non-transitive judges).
    near = lambda a, b: abs(int(a) - int(b)) <= 1
    assert E.cluster_answers(["1", "2", "3", "0"], near) == [0, 0, 1, 0]


def test_empo_worked_group():
    answers = ["a", "a", "a", "b", "b", "c", ""]
    ids = E.cluster_answers(answers, str.__eq__)
    r, h = jax.jit(E.empo_rewards)(np.array(ids), np.zeros(7, np.int32),
                                   np.array([a == "" for a in answers]))
    np.testing.assert_allclose(np.asarray(r), [3 / 7] * 3 + [2 / 7] * 2 + [1 / 7, 0.0], rtol=1e-6)
    expected_h = -(3 / 7 * math.log(3 / 7) + 2 / 7 * math.log(2 / 7) + 2 / 7 * math.log(1 / 7))
    np.testing.assert_allclose(np.asarray(h), expected_h, rtol=1e-6)


def test_empo_all_distinct_or_single_gets_zero():
    ids = np.array([0, 1, 2, 3, 0, 0], np.int32)
    g = np.array([0, 0, 0, 0, 1, 2], np.int32)
    rewards = jax.jit(E.empo_rewards)
    r, h = rewards(ids, g, np.zeros(6, bool))
    np.testing.assert_array_equal(np.asarray(r), np.zeros(6))
    np.testing.assert_allclose(np.asarray(h)[:4], math.log(4), rtol=1e-6)
    # Empty answers never cluster together, even with the same id.
    r, _ = rewards(np.zeros(3, np.int32), np.zeros(3, np.int32), np.ones(3, bool))
    np.testing.assert_array_equal(np.asarray(r), np.zeros(3))


@pytest.mark.parametrize("seed", [0, 1])
def test_empo_random_vs_reference(seed):
    rng = np.random.default_rng(seed)
    B = 28
    g = rng.permutation(np.repeat(np.arange(4), 7)).astype(np.int32)
    g[3] = -1
    answers = [rng.choice(["1", "2", "3", "", "5"], p=[0.4, 0.2, 0.2, 0.1, 0.1]) for _ in range(B)]
    ids = np.zeros(B, np.int32)
    for grp in set(g.tolist()) - {-1}:
        rows = np.nonzero(g == grp)[0]
        ids[rows] = E.cluster_answers([answers[i] for i in rows], str.__eq__)
    empty = np.array([a == "" for a in answers])
    r, h = jax.jit(E.empo_rewards)(ids, g, empty)
    r_ref, h_ref = ref.empo(answers, g)
    np.testing.assert_allclose(np.asarray(r), r_ref, **TOL)
    np.testing.assert_allclose(np.asarray(h), h_ref, **TOL)
    mask = np.ones((B, 3), np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(E.empo_advantages)(r, mask, g)),
                               ref.grpo(r_ref, mask, g, eps=1e-4), **TOL)
    np.testing.assert_allclose(np.asarray(jax.jit(E.entropy_from_rewards)(r, g)), h_ref, **TOL)
    keep = np.asarray(E.entropy_band_keep(h, g, low=0.5, high=1.2))
    np.testing.assert_array_equal(keep, (g >= 0) & (h_ref >= 0.5) & (h_ref <= 1.2))


# --------------------------------------------------------------------------- CAMPO


@pytest.mark.parametrize("tokens,expected", [
    ([1, 2, 3, 1, 2, 3], 1.0),
    ([5, 6, 7, 7, 7, 7], 4 / 6),
    ([1, 2, 3, 4], 0.0),
    ([9, 1, 2, 1, 2, 1, 2, 1, 2], 8 / 9),
    ([], 0.0),
    ([3], 0.0),
])
def test_trailing_loop_fraction_cases(tokens, expected):
    assert C.trailing_loop_fraction(tokens) == pytest.approx(expected)
    assert ref.find_infinite_loop_start(tokens) == pytest.approx(expected)


def test_trailing_loop_fraction_random_vs_reference():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        toks = rng.integers(0, int(rng.integers(1, 4)), size=n).tolist()
        if rng.random() < 0.5:
            period = rng.integers(0, 3, size=int(rng.integers(1, 6))).tolist()
            toks = toks + period * int(rng.integers(1, 5))
        assert C.trailing_loop_fraction(toks) == ref.find_infinite_loop_start(toks), toks


def test_repetition_penalty_forms():
    s = np.array([1.0, 1.0, 0.0, 0.0])
    f = np.array([0.5, 0.0, 0.25, 1.0])
    trunc = np.array([True, True, False, True])
    np.testing.assert_allclose(np.asarray(C.repetition_penalized_scores(s, f, trunc)),
                               [0.5, 1.0, -0.25, -1.0])
    code = jax.jit(functools.partial(C.repetition_penalized_scores, form="code"))(s, f, trunc)
    np.testing.assert_allclose(np.asarray(code), [0.9, 1.0, 0.0, -0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="penalty form"):
        C.repetition_penalized_scores(s, f, trunc, form="both")
    np.testing.assert_allclose(np.asarray(C.zero_overlength(np.array([1.0, 1.0]),
                                                            np.array([True, False]))), [0.0, 1.0])


def test_dynamic_sampling_keep():
    g = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, -1], np.int32)
    correct = np.array([1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1], bool)
    keep = jax.jit(C.dynamic_sampling_keep)(correct, g)
    np.testing.assert_array_equal(np.asarray(keep), [1, 1, 1] + [0] * 8)


def test_length_schedules():
    kw = dict(max_lengths=(16384, 32768), boundaries=(500,))
    assert [C.max_length_at_step(s, **kw) for s in (0, 499, 500, 10**6)] == \
        [16384, 16384, 32768, 32768]
    with pytest.raises(ValueError, match="boundaries"):
        C.max_length_at_step(0, max_lengths=(1, 2, 3), boundaries=(5,))
    state = C.LengthStage()
    lengths = [1000, 2000, 4000] + [4010] * 3 + [5000] + [5000] * 10
    stages = []
    for x in lengths:
        state = C.advance_length_stage(state, x, num_stages=2, patience=3)
        stages.append(state.stage)
    assert stages[:6] == [0] * 5 + [1]  # 4010 is < 1% growth: 3 flat steps -> next stage
    assert stages[-1] == 1  # never past the last stage


def test_pure_token_baseline_worked_example():
    # A group of 3 one-step responses, step rewards (1, 0, 0.5) on their last tokens, lengths
    # (10, 100, 50): row 3's baseline is the others' reward per token, 1 / 110, times its step's
    # length as PURE counts it (49), so its return at t = 0 is 0.5 - 49 / 110 (not -2.0, the
    # leave-one-out mean of per-row ratios on every token).
    lengths, L = [10, 100, 50], 100
    mask = (np.arange(L)[None, :] < np.array(lengths)[:, None]).astype(np.float32)
    rewards = [1.0, 0.0, 0.5]
    tok = np.zeros((3, L), np.float32)
    ends = np.zeros((3, L), np.float32)
    for b, (n, r) in enumerate(zip(lengths, rewards)):
        tok[b, n - 1], ends[b, n - 1] = r, 1.0
    _, ret = PU.pure_advantages(tok, ends, mask, np.zeros(3, np.int32), baseline="token")
    assert float(ret[2, 0]) == pytest.approx(0.5 - 49 / 110, abs=1e-6)
    _, ref_ret = ref.pure_advantages([[r] for r in rewards], [[n - 1] for n in lengths], None, mask,
                                     np.zeros(3, np.int32), baseline="token")
    np.testing.assert_allclose(np.asarray(ret), ref_ret, atol=1e-6)


def test_pure_zero_step_ends_whitening_worked_example():
    # Two 2-token rows, returns 1 and 3 on the first tokens, step ends (second tokens) zeroed:
    # PURE's normalisation leaves the step ends out of the count and the mean and gives them 0,
    # [[-0.447, 0], [0.447, 0]] -- not [[0, -0.707], [1.414, -0.707]], which whitening every
    # response token (the zeros included) would give.
    returns = np.array([[1.0, 0.0], [3.0, 0.0]], np.float32)
    mask = np.ones((2, 2), np.float32)
    ends = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    adv = np.asarray(PU.pure_whiten(returns, mask, ends))
    np.testing.assert_allclose(adv, [[-1 / np.sqrt(5), 0.0], [1 / np.sqrt(5), 0.0]], atol=1e-6)
    np.testing.assert_allclose(adv, ref.pure_whiten(returns, mask, ends), atol=1e-6)
    # Through the estimator: step rewards 1 and 3 on the last tokens, one row per group.
    adv2, _ = PU.pure_advantages(returns[:, ::-1].copy(), ends, mask, np.array([0, 1], np.int32),
                                 zero_step_ends=True)
    np.testing.assert_allclose(np.asarray(adv2), adv, atol=1e-6)
    # Without zeroing: population variance over every response token, as PURE's code.
    plain = np.asarray(PU.pure_whiten(returns, mask))
    np.testing.assert_allclose(plain, (returns - 1.0) / np.sqrt(1.5), atol=1e-6)
