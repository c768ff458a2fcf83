"""Loss aggregation (ALGORITHMS.md section 3), exact under gradient accumulation.

Each mode maps (loss_BxL, mask_BxL) to `(unnormalised_sum, denominator)`; the aggregated loss
is sum / denominator. The update differentiates the micro-batch sums and divides by the
*global* (mini-batch) denominator, so the result does not depend on how the mini-batch is split.

Denominators:
- token-mean: sum(m), the number of loss tokens.
- seq-mean-token-mean: the number of non-empty sequences; the sum is of per-sequence means.
- seq-mean-token-sum: the number of non-empty sequences; the sum is of per-sequence sums.
- seq-mean-token-sum-norm (Dr.GRPO): the mean over non-empty sequences of the token sum, divided
  by L_max, the configured maximum response length (`max_len`, required): sum(l m) / (n_seq
  L_max), as the Dr.GRPO code and verl 0.9 compute it. Dividing by L_max alone would make the
  loss, and what gradient clipping sees, grow with the number of sequences.

The uniform way for a trainer: D = global_denominator(mode, mini_batch_mask, max_len=...) once,
then each micro-batch contributes AGGREGATIONS[mode](loss, mask, max_len=...)[0] / D.
"""

import jax.numpy as jnp


def _lm(loss_BxL, mask_BxL):
    m = jnp.asarray(mask_BxL, jnp.float32)
    return jnp.asarray(loss_BxL, jnp.float32) * m, m


def token_mean(loss_BxL, mask_BxL, *, max_len=None):
    """(sum(l m), sum(m))."""
    del max_len
    lm, m = _lm(loss_BxL, mask_BxL)
    return jnp.sum(lm), jnp.sum(m)


def seq_mean_token_mean(loss_BxL, mask_BxL, *, max_len=None):
    """(sum over non-empty rows of sum_t l m / sum_t m, number of non-empty rows)."""
    del max_len
    lm, m = _lm(loss_BxL, mask_BxL)
    tokens_B = jnp.sum(m, axis=1)
    nonempty_B = tokens_B > 0
    per_seq = jnp.sum(lm, axis=1) / jnp.where(nonempty_B, tokens_B, 1.0)
    return jnp.sum(jnp.where(nonempty_B, per_seq, 0.0)), jnp.sum(nonempty_B.astype(jnp.float32))


def seq_mean_token_sum(loss_BxL, mask_BxL, *, max_len=None):
    """(sum(l m), number of non-empty rows)."""
    del max_len
    lm, m = _lm(loss_BxL, mask_BxL)
    return jnp.sum(lm), jnp.sum((jnp.sum(m, axis=1) > 0).astype(jnp.float32))


def seq_mean_token_sum_norm(loss_BxL, mask_BxL, *, max_len):
    """(sum(l m), number of non-empty rows x max_len): Dr.GRPO's normaliser."""
    if max_len is None:
        raise ValueError("seq-mean-token-sum-norm needs max_len, the configured maximum "
                         "response length (a constant, not the padded length of this batch)")
    lm, m = _lm(loss_BxL, mask_BxL)
    rows = jnp.sum((jnp.sum(m, axis=1) > 0).astype(jnp.float32))
    return jnp.sum(lm), rows * jnp.asarray(max_len, jnp.float32)


AGGREGATIONS = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}

DENOMINATOR_IS_COUNT = {
    "token-mean": True,
    "seq-mean-token-mean": True,
    "seq-mean-token-sum": True,
    "seq-mean-token-sum-norm": True,
}


def _check(mode):
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {sorted(AGGREGATIONS)}")


def global_denominator(mode, mask_BxL, *, max_len=None):
    """The denominator for a whole mini-batch, floored at 1 so an all-masked batch gives 0 loss."""
    _check(mode)
    _, denom = AGGREGATIONS[mode](jnp.zeros(jnp.shape(mask_BxL), jnp.float32), mask_BxL,
                                  max_len=max_len)
    return jnp.maximum(denom, 1.0)


def aggregate(mode, loss_BxL, mask_BxL, *, max_len=None):
    """The aggregated scalar for one batch held at once: sum / max(denominator, 1)."""
    _check(mode)
    total, denom = AGGREGATIONS[mode](loss_BxL, mask_BxL, max_len=max_len)
    return total / jnp.maximum(denom, 1.0)
