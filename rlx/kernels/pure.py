"""PURE: min-form credit assignment with a process reward model (ALGORITHMS.md section 6).

The host splits each response into steps (at "\\n\\n" and EOS) and gives either
`step_end_BxK` (int32 position of each step's last token, -1 for a missing step; K static) or a
per-token `step_ids_BxL` (-1 where a token is in no step) that `step_ends_from_step_ids` turns
into step ends. Step k's reward lands on its last token (the separator or EOS), as in PURE.

Flow: PR_BxK -> min_form_step_rewards -> scatter_step_rewards -> pure_advantages.
"""

import jax
import jax.numpy as jnp

from rlx.kernels.advantages import (group_size, group_sum, last_token_onehot, reverse_cumsum,
                                    valid_token_mask)

BASELINES = ("step", "token")


def step_scores_from_logits(prm_logits_BxKx2):
    """PR = p(positive) - p(negative) from a two-class PRM head, in [-1, 1]."""
    p = jax.nn.softmax(jnp.asarray(prm_logits_BxKx2, jnp.float32), axis=-1)
    return p[..., 1] - p[..., 0]


def softmin_weights(step_scores_BxK, step_mask_BxK, *, temperature=0.1):
    """w_k = softmax_k(-PR_k / T) over the valid steps; 0 on missing steps (and empty rows)."""
    valid = jnp.asarray(step_mask_BxK) > 0
    z = jnp.where(valid, -jnp.asarray(step_scores_BxK, jnp.float32) / temperature, -jnp.inf)
    zmax = jnp.max(z, axis=-1, keepdims=True)
    zmax = jnp.where(jnp.isfinite(zmax), zmax, 0.0)
    e = jnp.where(valid, jnp.exp(z - zmax), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)


def min_form_step_rewards(step_scores_BxK, step_mask_BxK, *, temperature=0.1, weighted=True):
    """r_k = w_k PR_k, so sum_k r_k ~ min_k PR_k; `weighted=False` gives r_k = PR_k (sum form)."""
    pr = jnp.asarray(step_scores_BxK, jnp.float32) * (jnp.asarray(step_mask_BxK) > 0)
    if not weighted:
        return pr
    return softmin_weights(pr, step_mask_BxK, temperature=temperature) * pr


def step_ends_from_step_ids(step_ids_BxL, mask_BxL, *, num_steps):
    """step_end_BxK: the last unmasked position carrying step id k, -1 if step k is absent."""
    ids = jnp.asarray(step_ids_BxL, jnp.int32)
    keep = (ids >= 0) & (jnp.asarray(mask_BxL) > 0)
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)

    def row(ids_L, keep_L, pos_L):
        # Out-of-range segment ids are dropped by segment_max, so skipped tokens go to num_steps.
        seg = jnp.where(keep_L, ids_L, num_steps)
        return jax.ops.segment_max(jnp.where(keep_L, pos_L, -1), seg, num_segments=num_steps)

    ends = jax.vmap(row)(ids, keep, pos)
    return jnp.where(ends >= 0, ends, -1).astype(jnp.int32)


def scatter_step_rewards(step_rewards_BxK, step_end_BxK, length):
    """Place each step's reward on its last token.

    Returns (token_rewards_BxL, step_end_mask_BxL).
    """
    ends = jnp.asarray(step_end_BxK, jnp.int32)
    valid = ends >= 0
    safe = jnp.where(valid, ends, 0)
    rows = jnp.arange(ends.shape[0])[:, None]
    r = jnp.where(valid, jnp.asarray(step_rewards_BxK, jnp.float32), 0.0)
    zeros = jnp.zeros((ends.shape[0], length), jnp.float32)
    token_r = zeros.at[rows, safe].add(r)
    hits = zeros.at[rows, safe].add(valid.astype(jnp.float32))
    return token_r, (hits > 0).astype(jnp.float32)


def step_token_counts(ends_BxL, mask_BxL):
    """On each step-end token e_k, its step's length as PURE's code counts it: e_k - e_{k-1}
    with e_0 = 0, so the first step counts one token fewer than it holds (the worked example of
    `pure_advantages`' token baseline depends on it)."""
    seen = jnp.cumsum(jnp.asarray(mask_BxL, jnp.float32), axis=1)
    at_ends = seen * ends_BxL
    before = jax.lax.cummax(at_ends, axis=1)
    before = jnp.concatenate([jnp.zeros_like(before[:, :1]), before[:, :-1]], axis=1)
    return (seen - before - (before == 0)) * ends_BxL


def _rloo_center(x_B, group_ids_B):
    """x_i - mean_{j != i, j in g} x_j; a group of one keeps x."""
    n_B = group_size(group_ids_B)
    others = (group_sum(x_B, group_ids_B) - x_B) / jnp.maximum(n_B - 1.0, 1.0)
    return x_B - jnp.where(n_B > 1, others, 0.0)


def pure_advantages(token_rewards_BxL, step_end_mask_BxL, mask_BxL, group_ids_B, *,
                    verifiable_B=None, vr_coef=1.0, zero_step_ends=False, baseline="step"):
    """PURE's RLOO, verifiable reward at EOS, returns, global whitening.

    "step" baseline, for row i with S_i steps and step rewards r_ik (on step-end tokens):
    avg_i = sum_k r_ik / S_i; r_ik -= (sum_{j in g} avg_j - avg_i) / (n - 1). "token" baseline
    (PURE's code): the others' reward per token, b_i = sum_{j != i} o_j / sum_{j != i} L_j with
    o_j = sum_k r_jk and L_j row j's valid tokens, times step k's length e_k - e_{k-1} (e_0 = 0),
    is subtracted at step k's end (`baseline` is static). Worked: a group of 3 one-step rows,
    o = (1, 0, 0.5), L = (10, 100, 50): row 3's return at t = 0 is 0.5 - 49 / 110 = 0.0545. VR_i in {-1, 0} is RLOO-centred the same way
    and added, times vr_coef, on the last valid token. returns = reverse cumsum; advantages =
    `pure_whiten` of the returns over the batch. `zero_step_ends` (static; PURE's default) zeroes
    the returns on step-end tokens, which then carry no loss. Returns (adv, returns).
    """
    m = valid_token_mask(mask_BxL, group_ids_B)
    ends = jnp.asarray(step_end_mask_BxL, jnp.float32) * m
    r = jnp.asarray(token_rewards_BxL, jnp.float32) * ends
    if baseline not in BASELINES:
        raise ValueError(f"pure baseline {baseline!r} is not one of {BASELINES}")
    n_B = group_size(group_ids_B)
    if baseline == "step":
        avg_B = jnp.sum(r, axis=1) / jnp.maximum(jnp.sum(ends, axis=1), 1.0)
        baseline_B = jnp.where(
            n_B > 1, (group_sum(avg_B, group_ids_B) - avg_B) / jnp.maximum(n_B - 1.0, 1.0), 0.0)
        total = r - baseline_B[:, None] * ends
    else:
        o_B, len_B = jnp.sum(r, axis=1), jnp.sum(m, axis=1)
        other_o = group_sum(o_B, group_ids_B) - o_B
        other_len = group_sum(len_B, group_ids_B) - len_B
        per_token_B = jnp.where((n_B > 1) & (other_len > 0), other_o / jnp.maximum(other_len, 1.0), 0.0)
        total = r - per_token_B[:, None] * step_token_counts(ends, m)
    if verifiable_B is not None:
        vr = _rloo_center(jnp.asarray(verifiable_B, jnp.float32), group_ids_B)
        total = total + vr_coef * vr[:, None] * last_token_onehot(m)
    returns = reverse_cumsum(total * m)
    if zero_step_ends:
        returns = returns * (1.0 - ends)
    return pure_whiten(returns, m, ends if zero_step_ends else None), returns * m


def pure_whiten(x_BxL, mask_BxL, step_end_mask_BxL=None):
    """Batch whitening as PURE's replay buffer normalises advantages.

    Population variance (no Bessel correction, unlike `masked_whiten`), rsqrt(max(var, 1e-8)).
    With `step_end_mask_BxL` (zero_step_ends) the step-end tokens, whose returns were zeroed, are
    left out of the count N and the mean, but their squared deviation (0 - mu)^2 stays in the
    variance's sum -- PURE's code sums it over every response token -- and they come out 0:

        N = sum(m (1 - e)); mu = sum(x m (1 - e)) / N; var = sum((x - mu)^2 m) / N.

    Worked: two 2-token rows whose first tokens hold 1 and 3 and whose step ends (second tokens)
    were zeroed: mu = 2, var = (1 + 4 + 1 + 4) / 2 = 5, advantages [[-0.447, 0], [0.447, 0]].
    PURE's code recognises those tokens by an advantage of exactly 0, which also drops padding
    (and any token whose return happens to be 0) from N; rlx uses the step-end mask itself, so
    the scale does not depend on how the batch is padded. Zero where N = 0.
    """
    m = jnp.asarray(mask_BxL, jnp.float32)
    x = jnp.asarray(x_BxL, jnp.float32)
    counted = m if step_end_mask_BxL is None else m * (1.0 - jnp.asarray(step_end_mask_BxL, jnp.float32))
    n = jnp.sum(counted)
    mu = jnp.sum(x * counted) / jnp.maximum(n, 1.0)
    var = jnp.sum(jnp.square(x - mu) * m) / jnp.maximum(n, 1.0)
    out = (x - mu) * jax.lax.rsqrt(jnp.maximum(var, 1e-8)) * counted
    return jnp.where(n > 0, out, 0.0)


def advantage_entry(*, mask_BxL, group_ids_B, token_rewards_BxL, step_end_mask_BxL,
                    scores_B=None, values_BxL=None, vr_coef=1.0, zero_step_ends=False,
                    baseline="step"):
    """Registry form: token_rewards_BxL = min-form step rewards on step-end tokens (from
    scatter_step_rewards), step_end_mask_BxL alongside, scores_B = verifiable reward in {-1, 0}
    (None: no verifiable reward)."""
    del values_BxL
    return pure_advantages(token_rewards_BxL, step_end_mask_BxL, mask_BxL, group_ids_B,
                           verifiable_B=scores_B, vr_coef=vr_coef, zero_step_ends=zero_step_ends,
                           baseline=baseline)
