"""Grouped-query attention core and the masks of the two paths (full sequence, KV cache)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.mesh import current_platform

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


def _cudnn_fits(dtype, head_dim: int) -> bool:
    """cuDNN flash attention takes 16-bit inputs and head_dim a multiple of 8, at most 128."""
    return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128


def resolve_attention(name: str, dtype, head_dim: int) -> str:
    """`auto` -> splash on TPU, cudnn on GPU when the shapes fit, else xla; checks an explicit choice."""
    backend = current_platform()  # the mesh's: a TPU slice compiled on a CPU host picks splash
    if name == "auto":
        if backend == "tpu":
            return "splash"
        return "cudnn" if backend == "gpu" and _cudnn_fits(dtype, head_dim) else "xla"
    if name == "cudnn" and (backend != "gpu" or not _cudnn_fits(dtype, head_dim)):
        raise ValueError(f"model.attention=cudnn needs a GPU, a 16-bit model.dtype and head_dim a multiple of 8 "
                         f"up to 128; got backend {backend}, dtype {jnp.dtype(dtype).name}, head_dim {head_dim}. "
                         f"Set model.attention=auto (or xla)")
    return name


def sequence_attention(impl: str, attention_mask_BxT: jax.Array | None, batch: int, seq: int):
    """`attend_fn(q, k, v)` over the full sequence (causal by index, padding-aware) for `impl`.

    xla and cudnn take the boolean [B, 1, T, T] mask (cuDNN turns it into a bias: T^2 per row,
    not per head, and no float32 scores); splash takes segment ids (see rlx.models.splash).
    Padding query rows never produce NaN: their outputs are unused, but must stay finite.
    """
    if impl == "splash":
        from rlx.models.splash import splash_attention

        interpret = current_platform() != "tpu"  # Pallas interpret mode: tests on CPU
        return lambda q, k, v: splash_attention(q, k, v, attention_mask_BxT, interpret=interpret)
    if impl not in ("xla", "cudnn"):
        raise ValueError(f"model.attention={impl!r} is not one of auto, xla, cudnn, splash")
    mask = None
    if attention_mask_BxT is not None:
        mask = full_sequence_mask(attention_mask_BxT, batch, seq)[:, None]
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=impl)
