"""Token sampling: greedy, temperature, top-k, top-p and min-p, with exact log-probs.

The truncations apply in a fixed order: temperature, then top-k, then top-p on what top-k
kept, then min-p. The log-prob returned with each sampled token is under that same
tempered, truncated and renormalised distribution, so a trainer that applies
`token_logprobs` (same config) to its own full-sequence logits reproduces it.
Greedy (temperature 0) is the one exception: a point mass has log-prob 0, so greedy
reports the untempered, untruncated log-softmax of the argmax token instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct


@dataclasses.dataclass(frozen=True)
class SamplingMode:
    """The static part of a sampling config: which code path is compiled."""

    greedy: bool
    top_k: int
    use_top_p: bool
    use_min_p: bool


@struct.dataclass
class SamplingValues:
    """The traced part: changing these never recompiles."""

    temperature: jax.Array
    top_p: jax.Array
    min_p: jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy; top_k 0 = off; top_p 1 = off; min_p 0 = off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 turns top-k off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 turns top-p off)")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p={self.min_p} must be in [0, 1) (0 turns min-p off)")

    @property
    def mode(self) -> SamplingMode:
        greedy = self.temperature == 0.0
        return SamplingMode(
            greedy=greedy,
            top_k=0 if greedy else self.top_k,
            use_top_p=not greedy and self.top_p < 1.0,
            use_min_p=not greedy and self.min_p > 0.0,
        )

    @property
    def truncates(self) -> bool:
        """Whether samples come from a truncated distribution (top-k, top-p or min-p)."""
        m = self.mode
        return bool(m.top_k or m.use_top_p or m.use_min_p)

    def values(self) -> SamplingValues:
        # A greedy config still carries a positive temperature so no path divides by 0.
        return SamplingValues(
            temperature=jnp.asarray(self.temperature or 1.0, jnp.float32),
            top_p=jnp.asarray(self.top_p, jnp.float32),
            min_p=jnp.asarray(self.min_p, jnp.float32),
        )


def truncated_logits(logits_NxV: jax.Array, mode: SamplingMode, values: SamplingValues) -> jax.Array:
    """Tempered logits with every token outside the truncated support set to -inf."""
    z_NxV = logits_NxV.astype(jnp.float32) / values.temperature
    if mode.greedy:
        return logits_NxV.astype(jnp.float32)
    neg_inf = jnp.finfo(jnp.float32).min
    vocab = z_NxV.shape[-1]
    if mode.top_k or mode.use_top_p:
        # Top-p needs the candidates sorted; top-k alone needs only the k-th value.
        k = min(mode.top_k, vocab) if mode.top_k else vocab
        sorted_NxK = jax.lax.top_k(z_NxV, k)[0]
        keep_NxK = jnp.ones(sorted_NxK.shape, bool)
        if mode.use_top_p:
            probs_NxK = jax.nn.softmax(sorted_NxK, axis=-1)
            mass_before_NxK = jnp.cumsum(probs_NxK, axis=-1) - probs_NxK
            # The first candidate is always kept, whatever top_p is.
            keep_NxK = mass_before_NxK < values.top_p
            keep_NxK = keep_NxK.at[..., 0].set(True)
        threshold_N = jnp.min(jnp.where(keep_NxK, sorted_NxK, jnp.inf), axis=-1)
        z_NxV = jnp.where(z_NxV >= threshold_N[..., None], z_NxV, neg_inf)
    if mode.use_min_p:
        # p_i >= min_p * p_max  <=>  z_i >= z_max + log(min_p); scale-free, so order-safe.
        z_max_N = jnp.max(z_NxV, axis=-1, keepdims=True)
        z_NxV = jnp.where(z_NxV >= z_max_N + jnp.log(values.min_p), z_NxV, neg_inf)
    return z_NxV


def sample(
    logits_NxV: jax.Array, keys_N: jax.Array, mode: SamplingMode, values: SamplingValues
) -> tuple[jax.Array, jax.Array]:
    """One token per row, and its log-prob under the distribution it was drawn from."""
    z_NxV = truncated_logits(logits_NxV, mode, values)
    if mode.greedy:
        tokens_N = jnp.argmax(z_NxV, axis=-1)
    else:
        # One key per row keeps each sequence's draws independent of batch composition.
        tokens_N = jax.vmap(jax.random.categorical)(keys_N, z_NxV)
    logprobs_NxV = jax.nn.log_softmax(z_NxV, axis=-1)
    logprobs_N = jnp.take_along_axis(logprobs_NxV, tokens_N[:, None], axis=-1)[:, 0]
    return tokens_N.astype(jnp.int32), logprobs_N


def token_logprobs(logits_BxTxV: jax.Array, tokens_BxT: jax.Array, config: SamplingConfig) -> jax.Array:
    """Trainer-side log-probs of given tokens under the sampler's distribution for `config`."""
    batch, length, vocab = logits_BxTxV.shape
    z = truncated_logits(logits_BxTxV.reshape(batch * length, vocab), config.mode, config.values())
    logprobs = jax.nn.log_softmax(z, axis=-1)
    picked = jnp.take_along_axis(logprobs, tokens_BxT.reshape(-1, 1), axis=-1)
    return picked.reshape(batch, length)
