"""Advantage estimators (ALGORITHMS.md section 1) and the group/whitening helpers they share.

Layout: B responses padded to L tokens, `mask_BxL` in {0,1}; `group_ids_B` (int32) names each
row's prompt group. Groups need not be contiguous or equal-sized and ids may be any non-negative
int32 values (they are densified with a sized `jnp.unique`, so segment counts stay static at B);
rows with `group_id < 0` are padding: they are left out of every statistic (group and batch) and
get advantage 0. Every output is zero outside `mask_BxL` and on padding rows.

All functions are jittable; Python-level options (`whiten`, `norm_by_std`) must be static.

Registry calling convention (`ESTIMATORS` here, `rlx.kernels.ADVANTAGE_FNS` for all of them):

    adv_BxL, returns_BxL = fn(*, mask_BxL, group_ids_B, scores_B=None, token_rewards_BxL=None,
                              values_BxL=None, **hyper)

Outcome estimators use `scores_B`, or `sum_t token_rewards_BxL * mask` when it is None.
The token-level estimator (`reinforce_pp`) uses `token_rewards_BxL`, or places `scores_B` on
each row's last valid token when it is None. `gae` is a kernel, not a registered estimator: it
needs a critic's values, and rlx has no critic role yet. Inputs an estimator does not use are ignored, so the
trainer may pass everything it has; unknown hyper-parameter names raise TypeError.
For outcome estimators `returns_BxL` is the advantage itself (as in verl).
"""

import jax
import jax.numpy as jnp

WHITEN_EPS = 1e-8


# --------------------------------------------------------------------------- helpers


def masked_mean(x, mask, axis=None):
    """sum(x m) / (sum(m) + 1e-8), as in ALGORITHMS.md."""
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(x * mask, axis=axis) / (jnp.sum(mask, axis=axis) + WHITEN_EPS)


def masked_whiten(x_BxL, mask_BxL):
    """(x - mu) * rsqrt(var + 1e-8) with masked mean mu and Bessel-corrected masked variance.

    N = sum(mask) <= 1 has no variance: called eagerly on concrete arrays that is a ValueError;
    under a trace (jit/vmap) the result is all zeros (no learning signal, never NaN).
    The output is not masked; callers multiply by their mask.
    """
    mask = jnp.asarray(mask_BxL, jnp.float32)
    x = jnp.asarray(x_BxL, jnp.float32)
    n = jnp.sum(mask)
    if not isinstance(n, jax.core.Tracer) and float(n) <= 1:
        raise ValueError(
            f"masked_whiten needs more than one unmasked element, got sum(mask)={float(n)}; "
            "whiten over a larger batch or use an estimator without batch whitening")
    mu = jnp.sum(x * mask) / (n + WHITEN_EPS)
    var = jnp.sum(jnp.square(x - mu) * mask) / (n + WHITEN_EPS)
    var = var * n / jnp.maximum(n - 1.0, 1.0)
    out = (x - mu) * jax.lax.rsqrt(var + WHITEN_EPS)
    return jnp.where(n > 1, out, 0.0)


def group_segments(group_ids_B):
    """Dense segment ids in [0, B) for arbitrary group ids, and the valid-row flags."""
    gid = jnp.asarray(group_ids_B, jnp.int32)
    valid_B = gid >= 0
    # All padding rows share id -1; their weight is zero so the shared segment is harmless.
    keyed = jnp.where(valid_B, gid, -1)
    _, seg_B = jnp.unique(keyed, size=gid.shape[0], fill_value=jnp.iinfo(jnp.int32).max,
                          return_inverse=True)
    return seg_B.reshape(gid.shape), valid_B


def group_sum(x_B, group_ids_B):
    """Per row, the sum of x over the valid rows of its group (0 on padding rows)."""
    seg_B, valid_B = group_segments(group_ids_B)
    x_B = jnp.where(valid_B, x_B, 0)
    tot = jax.ops.segment_sum(x_B, seg_B, num_segments=x_B.shape[0])
    return jnp.where(valid_B, tot[seg_B], 0)


def group_size(group_ids_B):
    """Per row, the number of valid rows in its group (0 on padding rows)."""
    return group_sum(jnp.ones(jnp.shape(group_ids_B), jnp.float32), group_ids_B)


def _group_all_equal(x_B, group_ids_B):
    seg_B, valid_B = group_segments(group_ids_B)
    nb = x_B.shape[0]
    hi = jax.ops.segment_max(jnp.where(valid_B, x_B, -jnp.inf), seg_B, num_segments=nb)
    lo = jax.ops.segment_min(jnp.where(valid_B, x_B, jnp.inf), seg_B, num_segments=nb)
    return hi[seg_B] == lo[seg_B]


def _group_centered(s_B, group_ids_B):
    """(s - mean_g, n_g, all_equal_g); a group of one has mean 0 (verl's convention)."""
    n_B = group_size(group_ids_B)
    mean_B = group_sum(s_B, group_ids_B) / jnp.maximum(n_B, 1.0)
    mean_B = jnp.where(n_B > 1, mean_B, 0.0)
    return s_B - mean_B, n_B, _group_all_equal(s_B, group_ids_B)


def valid_token_mask(mask_BxL, group_ids_B):
    """The float32 token mask with padding rows (group id < 0) zeroed."""
    valid_B = jnp.asarray(group_ids_B) >= 0
    return jnp.asarray(mask_BxL, jnp.float32) * valid_B[:, None]


def _broadcast(a_B, mask_BxL, group_ids_B):
    return a_B[:, None] * valid_token_mask(mask_BxL, group_ids_B)


def last_token_onehot(mask_BxL):
    """1.0 at each row's last unmasked position (all zeros for an empty row)."""
    mask = jnp.asarray(mask_BxL) > 0
    length = mask.shape[1]
    last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    onehot = jnp.arange(length)[None, :] == last[:, None]
    return (onehot & jnp.any(mask, axis=1, keepdims=True)).astype(jnp.float32)


def reverse_cumsum(x_BxL):
    """return_t = sum_{t' >= t} x_t' (gamma = 1)."""
    return jax.lax.cumsum(x_BxL, axis=1, reverse=True)


def discounted_returns(rewards_BxL, mask_BxL, gamma):
    """G_t = r_t m_t + gamma G_{t+1} over the whole row, zero where masked.

    A masked span inside a response (a tool's output) adds no reward but passes the return
    through, so earlier turns still see the final reward: mask [1,0,1], rewards [0,0,1],
    gamma 1 -> [1, 0, 1].
    """
    r = jnp.asarray(rewards_BxL, jnp.float32)
    m = jnp.asarray(mask_BxL, jnp.float32)

    def step(running, rm):
        r_t, m_t = rm
        g = r_t * m_t + gamma * running
        return g, g * m_t

    _, g_LxB = jax.lax.scan(step, jnp.zeros(r.shape[0], r.dtype), (r.T, m.T), reverse=True)
    return g_LxB.T


# --------------------------------------------------------------------------- outcome estimators


def grpo(scores_B, mask_BxL, group_ids_B, *, epsilon=1e-6, norm_by_std=True):
    """(s - mean_g) / (std_g + eps) with unbiased std.

    All-equal group -> exactly 0; group of one -> s / (1 + eps) (mean 0, std 1, as verl).
    """
    s = jnp.asarray(scores_B, jnp.float32)
    centered, n_B, equal = _group_centered(s, group_ids_B)
    if norm_by_std:
        var = group_sum(jnp.square(centered), group_ids_B) / jnp.maximum(n_B - 1.0, 1.0)
        std = jnp.where(n_B > 1, jnp.sqrt(var), 1.0)
        a = centered / (std + epsilon)
    else:
        a = centered
    # Float rounding can leave 1e-8 residues in an all-equal group; the spec wants exact zeros.
    a = jnp.where(equal & (n_B > 1), 0.0, a)
    return _broadcast(a, mask_BxL, group_ids_B)


def dr_grpo(scores_B, mask_BxL, group_ids_B):
    """s - mean_g (no std). Pair with seq-mean-token-sum-norm aggregation and no KL."""
    return grpo(scores_B, mask_BxL, group_ids_B, norm_by_std=False)


def rloo(scores_B, mask_BxL, group_ids_B):
    """s_i - mean_{j != i} s_j = n/(n-1) (s_i - mean_g); n = 1 -> s."""
    s = jnp.asarray(scores_B, jnp.float32)
    centered, n_B, equal = _group_centered(s, group_ids_B)
    a = jnp.where(n_B > 1, centered * n_B / jnp.maximum(n_B - 1.0, 1.0), s)
    a = jnp.where(equal & (n_B > 1), 0.0, a)
    return _broadcast(a, mask_BxL, group_ids_B)


def reinforce_pp_baseline(scores_B, mask_BxL, group_ids_B):
    """(s - mean_g) tiled over the response, then whitened over the whole batch."""
    s = jnp.asarray(scores_B, jnp.float32)
    centered, n_B, equal = _group_centered(s, group_ids_B)
    centered = jnp.where(equal & (n_B > 1), 0.0, centered)
    m = valid_token_mask(mask_BxL, group_ids_B)
    return masked_whiten(centered[:, None] * m, m) * m


def w_reinforce(scores_B, mask_BxL, group_ids_B, *, lam=0.1):
    """Binary reward (correct iff s > 0): A = +lam if correct, -1 if not."""
    correct = jnp.asarray(scores_B) > 0
    return _broadcast(jnp.where(correct, lam, -1.0), mask_BxL, group_ids_B)


def psr(scores_B, mask_BxL, group_ids_B):
    """Positive-sample reinforcement: +1 for correct, 0 for incorrect."""
    return _broadcast(jnp.where(jnp.asarray(scores_B) > 0, 1.0, 0.0), mask_BxL, group_ids_B)


def nsr(scores_B, mask_BxL, group_ids_B):
    """Negative-sample reinforcement: -1 for incorrect, 0 for correct."""
    return _broadcast(jnp.where(jnp.asarray(scores_B) > 0, 0.0, -1.0), mask_BxL, group_ids_B)


# --------------------------------------------------------------------------- token-level estimators


def reinforce_pp(token_rewards_BxL, mask_BxL, group_ids_B, *, gamma=1.0):
    """REINFORCE++: discounted returns (carried across masked spans), whitened over the batch.

    Returns (adv_BxL, returns_BxL).
    """
    m = valid_token_mask(mask_BxL, group_ids_B)
    returns = discounted_returns(token_rewards_BxL, m, gamma)
    return masked_whiten(returns, m) * m, returns * m


def gae(token_rewards_BxL, values_BxL, mask_BxL, group_ids_B=None, *, gamma=1.0, lam=1.0,
        whiten=True):
    """GAE as one reverse scan; masked positions carry V_next and A_next through unchanged.

    Returns (adv_BxL, returns_BxL) with returns = raw advantage + V. `whiten` (verl's default)
    whitens the advantage over the batch.
    """
    if group_ids_B is None:
        group_ids_B = jnp.zeros(jnp.shape(mask_BxL)[0], jnp.int32)
    m = valid_token_mask(mask_BxL, group_ids_B)
    r = jnp.asarray(token_rewards_BxL, jnp.float32)
    v = jnp.asarray(values_BxL, jnp.float32)

    def step(carry, rvm):
        next_v, next_a = carry
        r_t, v_t, m_t = rvm
        a_t = r_t + gamma * next_v - v_t + gamma * lam * next_a
        next_v = v_t * m_t + (1.0 - m_t) * next_v
        next_a = a_t * m_t + (1.0 - m_t) * next_a
        return (next_v, next_a), next_a

    zeros = jnp.zeros(r.shape[0], jnp.float32)
    _, adv_LxB = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)
    adv = adv_LxB.T
    returns = (adv + v) * m
    if whiten:
        adv = masked_whiten(adv, m)
    return adv * m, returns


# --------------------------------------------------------------------------- registry


def scores_from_inputs(scores_B, token_rewards_BxL, mask_BxL):
    """Outcome scores: scores_B if given, else sum_t r_t m_t."""
    if scores_B is not None:
        return jnp.asarray(scores_B, jnp.float32)
    if token_rewards_BxL is None:
        raise ValueError("pass scores_B or token_rewards_BxL to an outcome advantage estimator")
    return jnp.sum(jnp.asarray(token_rewards_BxL, jnp.float32) * mask_BxL, axis=1)


def token_rewards_from_inputs(scores_B, token_rewards_BxL, mask_BxL):
    """Token rewards: token_rewards_BxL if given, else scores_B on each row's last valid token."""
    if token_rewards_BxL is not None:
        return jnp.asarray(token_rewards_BxL, jnp.float32)
    if scores_B is None:
        raise ValueError("pass token_rewards_BxL or scores_B to a token-level advantage estimator")
    return jnp.asarray(scores_B, jnp.float32)[:, None] * last_token_onehot(mask_BxL)


def _outcome_entry(fn, **defaults):
    def entry(*, mask_BxL, group_ids_B, scores_B=None, token_rewards_BxL=None, values_BxL=None,
              **hyper):
        del values_BxL
        s = scores_from_inputs(scores_B, token_rewards_BxL, mask_BxL)
        adv = fn(s, mask_BxL, group_ids_B, **{**defaults, **hyper})
        return adv, adv

    entry.__name__ = fn.__name__
    entry.__doc__ = fn.__doc__
    return entry


def _reinforce_pp_entry(*, mask_BxL, group_ids_B, scores_B=None, token_rewards_BxL=None,
                        values_BxL=None, gamma=1.0):
    del values_BxL
    r = token_rewards_from_inputs(scores_B, token_rewards_BxL, mask_BxL)
    return reinforce_pp(r, mask_BxL, group_ids_B, gamma=gamma)


ESTIMATORS = {
    "grpo": _outcome_entry(grpo),
    "dr_grpo": _outcome_entry(dr_grpo),
    "rloo": _outcome_entry(rloo),
    "reinforce_pp": _reinforce_pp_entry,
    "reinforce_pp_baseline": _outcome_entry(reinforce_pp_baseline),
    "w_reinforce": _outcome_entry(w_reinforce),
    "psr": _outcome_entry(psr),
    "nsr": _outcome_entry(nsr),
    # EMPO's advantage is GRPO on semantic-cluster rewards with std epsilon 1e-4 (section 5).
    "empo": _outcome_entry(grpo, epsilon=1e-4),
}
