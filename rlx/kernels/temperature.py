"""Rollout temperature control (ALGORITHMS.md section 9, AceReason-Nemotron 1.1).

Measure the mean token entropy of softmax(z / T) on the policy's own rollouts and move T so
that it stays near a target (0.3). Both functions are jittable.
"""

import jax.numpy as jnp

from rlx.kernels.advantages import masked_mean
from rlx.kernels.policy_loss import entropy_from_logits


def mean_token_entropy(logits_BxLxV, mask_BxL, temperature=1.0):
    """Masked mean over tokens of H(softmax(logits / T)); float32."""
    return masked_mean(entropy_from_logits(logits_BxLxV, temperature), mask_BxL)


def temperature_step(temperature, entropy, *, target=0.3, rate=0.1, min_temperature=0.1,
                     max_temperature=2.0):
    """Proportional update in log space on the relative entropy error, then clipped:

    T' = clip(T exp(rate (target - H) / target), min_temperature, max_temperature).

    Entropy rises monotonically with T, so too little entropy raises T and too much lowers it;
    working in log T keeps T positive and makes the step size scale-free. Near the target the
    loop gain is about rate * dlog H / dlog T, and entropy can be steep in T: on the quickstart
    model rate 0.5 overshoots into a two-step oscillation and 0.1 settles (docs/experiments.md).
    """
    err = (target - entropy) / target
    return jnp.clip(temperature * jnp.exp(rate * err), min_temperature, max_temperature)
