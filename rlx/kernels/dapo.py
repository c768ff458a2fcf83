"""DAPO's soft overlong punishment (Yu et al. 2025, eq. 13; verl's `overlong_buffer`).

A response of |y| tokens under a maximum of L_max with a buffer of L_cache tokens gets

    R_length = 0                                   if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                  if |y| > L_max

added to its reward, times `factor` (verl's overlong_penalty_factor, 1 in DAPO): a linear
ramp from 0 to -1 over the last L_cache tokens, so a response that will be cut off is
discouraged before the cut.
"""

import jax.numpy as jnp


def soft_overlong_penalty(lengths_B, *, max_len: int, buffer: int, factor: float = 1.0):
    """The penalty per response (<= 0), float32 [B]."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"the overlong buffer ({buffer}) must be in 1..max_len ({max_len})")
    y = jnp.asarray(lengths_B, jnp.float32)
    start = max_len - buffer
    ramp = (start - y) / buffer
    penalty = jnp.where(y <= start, 0.0, jnp.where(y <= max_len, ramp, -1.0))
    return factor * penalty
