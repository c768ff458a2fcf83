"""PRIME: implicit process rewards from a PRM updated online (ALGORITHMS.md section 4).

The PRM is a causal LM; the trainer supplies its token log-probs and the reference's
(`logp_prm_BxL`, `logp_ref_BxL`, float32, same layout as the policy's). Batch conventions as in
`rlx.kernels.advantages` (group ids, padding rows with id < 0, outputs zero outside the mask).
"""

import jax
import jax.numpy as jnp

from rlx.kernels.advantages import (group_size, group_sum, last_token_onehot, masked_whiten,
                                    reverse_cumsum, valid_token_mask)

GRANULARITIES = ("token", "whole")


def implicit_q(logp_prm_BxL, logp_ref_BxL, mask_BxL):
    """q_t = log pi_phi(y_t) - log pi_ref(y_t), zero outside the mask."""
    m = jnp.asarray(mask_BxL, jnp.float32)
    return (jnp.asarray(logp_prm_BxL, jnp.float32) - jnp.asarray(logp_ref_BxL, jnp.float32)) * m


def implicit_token_rewards(logp_prm_BxL, logp_ref_BxL, mask_BxL, *, beta=0.05,
                           granularity="token"):
    """Process rewards r_t = beta q_t ("token"), or their sum placed on the last token ("whole").

    Note: PRIME's code (prime_dp_rm) leaves the final token's reward out in "token" mode;
    ALGORITHMS.md gives r_t = beta q_t on every token, which is what this does.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"unknown PRIME granularity {granularity!r}; choose one of {GRANULARITIES}")
    r = beta * implicit_q(logp_prm_BxL, logp_ref_BxL, mask_BxL)
    if granularity == "whole":
        r = jnp.sum(r, axis=1, keepdims=True) * last_token_onehot(mask_BxL)
    return r


def prm_bce_loss(logp_prm_BxL, logp_ref_BxL, mask_BxL, acc_B, *, beta=0.05, row_mask_B=None):
    """PRM loss BCE(sigmoid(beta sum_t q_t m_t), acc) as (sum over rows, number of rows).

    Written with softplus so that large |beta sum q| neither overflows nor loses the gradient
    (torch's BCE clamps log at -100 instead; the two agree wherever that clamp is inactive).
    """
    x_B = beta * jnp.sum(implicit_q(logp_prm_BxL, logp_ref_BxL, mask_BxL), axis=1)
    acc = jnp.asarray(acc_B, jnp.float32)
    bce_B = acc * jax.nn.softplus(-x_B) + (1.0 - acc) * jax.nn.softplus(x_B)
    w = jnp.ones_like(bce_B) if row_mask_B is None else jnp.asarray(row_mask_B, jnp.float32)
    return jnp.sum(bce_B * w), jnp.sum(w)


def batch_norm_rewards(rewards_BxL, mask_BxL):
    """r / (max over the batch of |reverse cumsum of r| + 1e-6)."""
    r = jnp.asarray(rewards_BxL, jnp.float32) * jnp.asarray(mask_BxL, jnp.float32)
    return r / (jnp.max(jnp.abs(reverse_cumsum(r))) + 1e-6)


def _rloo_tokens(r_BxL, m_BxL, group_ids_B):
    """PRIME's per-source RLOO: r n/(n-1) - sum_g(mu_j)/(n-1) on masked tokens, mu = row mean.

    A group of one keeps its rewards (no baseline exists); an empty row has mu = 0.
    """
    tokens_B = jnp.sum(m_BxL, axis=1)
    mu_B = jnp.sum(r_BxL * m_BxL, axis=1) / jnp.maximum(tokens_B, 1.0)
    n_B = group_size(group_ids_B)
    denom = jnp.maximum(n_B - 1.0, 1.0)
    scale = jnp.where(n_B > 1, n_B / denom, 1.0)
    baseline = jnp.where(n_B > 1, group_sum(mu_B, group_ids_B) / denom, 0.0)
    return (r_BxL * scale[:, None] - baseline[:, None]) * m_BxL


def prime_advantages(process_rewards_BxL, acc_B, mask_BxL, group_ids_B, *, process_coef=5.0,
                     outcome_coef=5.0):
    """RLOO on process and outcome rewards, weighted and summed, reverse cumsum, batch whitening.

    The outcome source is acc on each row's last valid token with a one-token mask, so its RLOO
    is the plain (n acc - sum acc)/(n-1). Groups need n >= 2 for a baseline; an empty row
    still counts in n but adds 0 to the baseline sums. Returns (adv_BxL, returns_BxL).
    """
    m = valid_token_mask(mask_BxL, group_ids_B)
    r = jnp.asarray(process_rewards_BxL, jnp.float32) * m
    last = last_token_onehot(m)
    outcome = jnp.asarray(acc_B, jnp.float32)[:, None] * last
    total = (process_coef * _rloo_tokens(r, m, group_ids_B)
             + outcome_coef * _rloo_tokens(outcome, last, group_ids_B))
    returns = reverse_cumsum(total * m)
    return masked_whiten(returns, m) * m, returns * m


def advantage_entry(*, mask_BxL, group_ids_B, token_rewards_BxL, scores_B, values_BxL=None,
                    process_coef=5.0, outcome_coef=5.0):
    """Registry form: token_rewards_BxL = implicit process rewards, scores_B = acc in {0, 1}."""
    del values_BxL
    return prime_advantages(token_rewards_BxL, scores_B, mask_BxL, group_ids_B,
                            process_coef=process_coef, outcome_coef=outcome_coef)


def accuracy_band_keep(acc_B, group_ids_B, *, low=0.2, high=0.8, truncated_B=None,
                       drop_truncated=False):
    """Online prompt filter: keep a group iff low <= mean acc <= high (inclusive).

    With `drop_truncated` (static) a group that has any truncated response is dropped too.
    Padding rows are never kept. Returns bool keep_B, constant within a group.
    """
    valid_B = jnp.asarray(group_ids_B) >= 0
    n_B = group_size(group_ids_B)
    mean_B = group_sum(jnp.asarray(acc_B, jnp.float32), group_ids_B) / jnp.maximum(n_B, 1.0)
    keep = valid_B & (mean_B >= low) & (mean_B <= high)
    if drop_truncated:
        if truncated_B is None:
            raise ValueError("drop_truncated=True needs truncated_B")
        any_trunc = group_sum(jnp.asarray(truncated_B, jnp.float32), group_ids_B) > 0
        keep = keep & ~any_trunc
    return keep
