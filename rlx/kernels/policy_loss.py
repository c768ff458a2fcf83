"""Policy-gradient loss, KL regularisers, entropy and log-probs (ALGORITHMS.md section 2).

Per-token functions return BxL arrays; aggregate them with `rlx.kernels.aggregation` so that
micro-batching is exact. Logits math is float32 whatever the input dtype.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


class PolicyLossOut(NamedTuple):
    """Per-token PPO loss and diagnostics; indicator fields are float32 in {0, 1}.

    clip_high: A > 0 and rho > 1 + eps_high (upper clip active); clip_low: A < 0 and
    rho < 1 - eps_low; their sum is verl's `pg_clipfrac` indicator. dual_clip: A < 0 and the
    dual-clip bound -c A was taken (verl's `pg_clipfrac_lower`). log_ratio is the clamped
    logp - logp_old (its negation, aggregated, is verl's `ppo_kl`).
    """

    loss_BxL: jax.Array
    ratio_BxL: jax.Array
    log_ratio_BxL: jax.Array
    clip_high_BxL: jax.Array
    clip_low_BxL: jax.Array
    dual_clip_BxL: jax.Array


def log_ratio(logp_BxL, old_logp_BxL):
    """clamp(logp - logp_old, -20, 20): keeps exp() finite after a large policy move."""
    return jnp.clip(logp_BxL - old_logp_BxL, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def ppo_clip_loss(logp_BxL, old_logp_BxL, adv_BxL, *, eps_low=0.2, eps_high=0.2,
                  dual_clip_c=3.0):
    """PPO clipped surrogate with asymmetric clip (DAPO clip-higher) and dual clip for A < 0.

    l = max(-A rho, -A clip(rho, 1-eps_low, 1+eps_high)); for A < 0, l = min(l, -c A).
    `dual_clip_c=None` disables the dual clip (must then be static under jit).
    """
    logp = jnp.asarray(logp_BxL, jnp.float32)
    adv = jnp.asarray(adv_BxL, jnp.float32)
    lr = log_ratio(logp, jnp.asarray(old_logp_BxL, jnp.float32))
    ratio = jnp.exp(lr)
    loss1 = -adv * ratio
    loss2 = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    clipped = jnp.maximum(loss1, loss2)
    clip_any = loss2 > loss1
    clip_high = (clip_any & (adv > 0)).astype(jnp.float32)
    clip_low = (clip_any & (adv < 0)).astype(jnp.float32)
    if dual_clip_c is None:
        loss = clipped
        dual = jnp.zeros_like(clipped)
    else:
        loss3 = -adv * dual_clip_c
        loss = jnp.where(adv < 0, jnp.minimum(clipped, loss3), clipped)
        dual = ((clipped > loss3) & (adv < 0)).astype(jnp.float32)
    return PolicyLossOut(loss, ratio, lr, clip_high, clip_low, dual)


_KL_ALIASES = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
KL_TYPES = tuple(_KL_ALIASES)


def kl_penalty(logp_BxL, ref_logp_BxL, kind="k3"):
    """Per-token KL estimate to the reference: k1 = lp - rlp; k2 = (lp - rlp)^2 / 2;
    k3 = e^d - d - 1 with d = clamp(rlp - lp, -20, 20), clamped to [-10, 10].

    `kind` also accepts verl's names "kl", "mse", "low_var_kl".
    """
    if kind not in _KL_ALIASES:
        raise ValueError(f"unknown KL kind {kind!r}; choose one of {sorted(_KL_ALIASES)}")
    kind = _KL_ALIASES[kind]
    lp = jnp.asarray(logp_BxL, jnp.float32)
    rlp = jnp.asarray(ref_logp_BxL, jnp.float32)
    if kind == "k1":
        return lp - rlp
    if kind == "k2":
        return 0.5 * jnp.square(lp - rlp)
    d = jnp.clip(rlp - lp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.clip(jnp.exp(d) - d - 1.0, -K3_CLAMP, K3_CLAMP)


def adaptive_kl_update(kl_coef, current_kl, n_steps, *, target, horizon):
    """One step of the PPO adaptive KL controller (Ziegler et al.; verl AdaptiveKLController).

    coef *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon.
    """
    err = jnp.clip(current_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + err * n_steps / horizon)


def _scaled_logits(logits_BxLxV, temperature):
    return jnp.asarray(logits_BxLxV, jnp.float32) / temperature


def entropy_from_logits(logits_BxLxV, temperature=1.0):
    """H = logsumexp(z) - sum softmax(z) z on z = logits / temperature; returns BxL."""
    z = _scaled_logits(logits_BxLxV, temperature)
    lse = jax.nn.logsumexp(z, axis=-1)
    p = jax.nn.softmax(z, axis=-1)
    return lse - jnp.sum(p * z, axis=-1)


def token_logprobs(logits_BxLxV, tokens_BxL, temperature=1.0):
    """log softmax(logits / temperature) at the sampled tokens; returns BxL float32.

    Gathers before normalising so the BxLxV log-softmax is never materialised.
    """
    z = _scaled_logits(logits_BxLxV, temperature)
    picked = jnp.take_along_axis(z, jnp.asarray(tokens_BxL)[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)
