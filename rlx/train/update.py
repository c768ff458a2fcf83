"""The policy update: one jitted loss + grad + optimizer step over a mini-batch.

The mini-batch is split into micro-batches that a `lax.scan` walks, summing gradients of
(unnormalised loss sum / global denominator), so the update equals the one computed on the
whole mini-batch at once whatever the micro-batch size (ALGORITHMS.md section 3).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx.kernels.aggregation import AGGREGATIONS, global_denominator
from rlx.kernels.policy_loss import kl_penalty, ppo_clip_loss
from rlx.train.logprobs import response_token_stats


@dataclass(frozen=True)
class LossSpec:
    """Static loss settings (hashable: part of the compiled program's identity). The rollout
    temperature is not one of them: it is a traced argument of `train_step`, so moving it does
    not recompile."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    agg: str = "token-mean"
    max_len: int = 1
    kl_type: str = "k3"
    use_kl: bool = False
    entropy_coef: float = 0.0
    micro_batches: int = 1

    def __post_init__(self):
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"algo.loss_agg='{self.agg}' is not one of {', '.join(AGGREGATIONS)}")


def score_logprobs(graphdef, params, batch: dict, temperature: float) -> jax.Array:
    """Log-probs of the response tokens under `params` at the rollout temperature."""
    return response_token_stats(nnx.merge(graphdef, params), batch, temperature, entropy=False)[0]


@functools.partial(jax.jit, static_argnums=(0,))
def score(graphdef, params, batch: dict, temperature) -> jax.Array:
    return score_logprobs(graphdef, params, batch, temperature)


@functools.partial(jax.jit, static_argnums=(0,))
def score_with_entropy(graphdef, params, batch: dict, temperature):
    """(log-probs BxR, mean token entropy of softmax(z / T) over the response mask).

    The entropy is the one temperature control steers (ALGORITHMS.md section 9): the sampling
    distribution before top-k / top-p truncation, on the policy's own rollouts.
    """
    logp_BxR, entropy_BxR = response_token_stats(nnx.merge(graphdef, params), batch, temperature)
    m = batch["response_mask"].astype(jnp.float32)
    return logp_BxR, jnp.sum(entropy_BxR * m) / jnp.maximum(m.sum(), 1.0)


def _micro_loss(params, graphdef, spec: LossSpec, mb: dict, denom, kl_coef, temperature):
    logp_BxR, entropy_BxR = response_token_stats(nnx.merge(graphdef, params), mb, temperature,
                                                 entropy_grad=bool(spec.entropy_coef))
    mask_BxR = mb["response_mask"]
    pg = ppo_clip_loss(logp_BxR, mb["old_logp"], mb["adv"], eps_low=spec.eps_low,
                       eps_high=spec.eps_high, dual_clip_c=spec.dual_clip)
    loss_BxR = pg.loss_BxL
    agg = AGGREGATIONS[spec.agg]
    stats = {}
    if spec.use_kl:
        kl_BxR = kl_penalty(logp_BxR, mb["ref_logp"], spec.kl_type)
        loss_BxR = loss_BxR + kl_coef * kl_BxR
        stats["kl"] = agg(kl_BxR, mask_BxR, max_len=spec.max_len)[0]
    if spec.entropy_coef:
        loss_BxR = loss_BxR - spec.entropy_coef * entropy_BxR
    total, _ = agg(loss_BxR, mask_BxR, max_len=spec.max_len)
    m = mask_BxR.astype(jnp.float32)
    stats.update({
        "pg_loss": agg(pg.loss_BxL, mask_BxR, max_len=spec.max_len)[0],
        "entropy": agg(entropy_BxR, mask_BxR, max_len=spec.max_len)[0],
        # Token-level diagnostics, summed here and divided by the token count outside.
        "clip_frac_tokens": jnp.sum((pg.clip_high_BxL + pg.clip_low_BxL) * m),
        "clip_high_tokens": jnp.sum(pg.clip_high_BxL * m),
        "dual_clip_tokens": jnp.sum(pg.dual_clip_BxL * m),
        "approx_kl_tokens": jnp.sum(-pg.log_ratio_BxL * m),
    })
    return total / denom, jax.tree.map(jax.lax.stop_gradient, stats)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3, 4))
def train_step(graphdef, optimizer: optax.GradientTransformation, spec: LossSpec, params,
               opt_state, minibatch: dict, kl_coef, temperature):
    """One optimizer step on a mini-batch; returns (params, opt_state, metrics).

    `temperature` (traced) must be the rollout's sampling temperature.
    """
    denom = global_denominator(spec.agg, minibatch["response_mask"], max_len=spec.max_len)
    tokens = jnp.maximum(minibatch["response_mask"].sum().astype(jnp.float32), 1.0)
    micro = jax.tree.map(lambda x: x.reshape(spec.micro_batches, -1, *x.shape[1:]), minibatch)
    grad_fn = jax.value_and_grad(_micro_loss, has_aux=True)

    def body(carry, mb):
        grads, loss, stats = carry
        (l, s), g = grad_fn(params, graphdef, spec, mb, denom, kl_coef, temperature)
        return (jax.tree.map(jnp.add, grads, g), loss + l, jax.tree.map(jnp.add, stats, s)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    _, stats0 = jax.eval_shape(lambda: _micro_loss(params, graphdef, spec,
                                                   jax.tree.map(lambda x: x[0], micro), denom, kl_coef,
                                                   temperature))
    stats0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats0)
    (grads, loss, stats), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), stats0), micro)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"actor/loss": loss, "actor/grad_norm": optax.global_norm(grads)}
    for key, value in stats.items():
        if key.endswith("_tokens"):
            metrics[f"actor/{key[:-len('_tokens')]}"] = value / tokens
        else:
            metrics[f"actor/{key}"] = value / denom
    return params, opt_state, metrics


def score_rows(fn, graphdef, params, device: dict, temperature, mesh, rows_per_call: int, mask_BxR):
    """`fn` (`score` or `score_with_entropy`) over the batch's rows `rows_per_call` at a time, so
    a long-context step's scoring holds one micro-batch's activations, as its update does.

    Returns, on the host, what `fn` returns for the whole batch: log-probs [B, R], and for
    `score_with_entropy` the mean entropy over the response tokens (`mask_BxR`, host).
    """
    from rlx import hostio

    rows = len(mask_BxR)
    if rows_per_call >= rows:
        return hostio.get(fn(graphdef, params, device, temperature))
    chunks = [np.arange(start, min(start + rows_per_call, rows)) for start in range(0, rows, rows_per_call)]
    outs = [hostio.get(fn(graphdef, params, hostio.take_rows(device, idx, mesh), temperature)) for idx in chunks]
    if not isinstance(outs[0], tuple):
        return np.concatenate(outs)
    tokens = [float(np.sum(mask_BxR[idx])) for idx in chunks]
    entropy = sum(float(h) * n for (_, h), n in zip(outs, tokens)) / max(sum(tokens), 1.0)
    return np.concatenate([logp for logp, _ in outs]), entropy
