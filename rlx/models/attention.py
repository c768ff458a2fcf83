"""Grouped-query attention core and the masks of the two paths (full sequence, KV cache)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# A finite "minus infinity": a query row with no visible key (a padding token) then gets a
# uniform softmax instead of NaNs, and NaNs never reach the gradients of real tokens.
_MASKED = -1e30


def full_sequence_mask(attention_mask_BxT: jax.Array | None, batch: int, seq: int) -> jax.Array:
    """[B, T, T] bool: query i sees key j iff j <= i and key j is a real token.

    Causality is by index, so left padding, right padding and explicit positions all work.
    """
    idx = jnp.arange(seq)
    causal_TxT = idx[:, None] >= idx[None, :]
    if attention_mask_BxT is None:
        return jnp.broadcast_to(causal_TxT, (batch, seq, seq))
    return causal_TxT[None] & attention_mask_BxT.astype(bool)[:, None, :]


def cache_mask(positions_BxT: jax.Array, cache_len: int) -> jax.Array:
    """[B, T, S] bool: a token at position p sees cache entries j <= p (filled contiguously from 0)."""
    return jnp.arange(cache_len)[None, None, :] <= positions_BxT[:, :, None]


def attend(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array, mask_BxTxS: jax.Array) -> jax.Array:
    """Softmax attention with H query heads sharing K key/value heads; softmax in float32."""
    b, t, h, d = q_BxTxHxD.shape
    kv = k_BxSxKxD.shape[2]
    q_BxTxKxGxD = q_BxTxHxD.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxD.dtype)
    out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxD)
    return out_BxTxKxGxD.reshape(b, t, h, d)
