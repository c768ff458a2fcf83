"""Full-sequence attention with the Pallas splash kernel (TPU): the [T, T] scores never exist.

Causality is the kernel's static causal mask (by index, as `full_sequence_mask`); padding is
mapped to segment ids (real tokens 1, padding 0), so a real query sees exactly the real keys
at or before it. A padding query sees the padding keys at or before it -- itself at least --
so its softmax is never empty and nothing is NaN; its output is unused (masked downstream).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from rlx.mesh import current_mesh, logical_to_spec

# The kernel tiles queries and keys in blocks of a multiple of 128 (the TPU lane width).
_BLOCKS = (512, 256, 128)


def _block(seq: int) -> int:
    for block in _BLOCKS:
        if seq % block == 0:
            return block
    raise ValueError(f"splash attention needs the sequence length to be a multiple of 128, got {seq}; "
                     f"pad prompts / responses to a multiple of 128 (data.max_prompt_len, "
                     f"engine.max_new_tokens) or set model.attention=xla")


@functools.lru_cache(maxsize=None)
def _kernel(seq: int, groups: int, interpret: bool):
    block = _block(seq)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=min(block, 512),
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((seq, seq))] * groups)
    # MQA kernel per KV head: its `groups` query heads share one K and V (GQA).
    return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _attend_local(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_BxT, interpret: bool):
    b, t, h, d = q_BxTxHxD.shape
    kv = k_BxSxKxD.shape[2]
    kernel = _kernel(t, h // kv, interpret)
    q_BxKxGxTxD = (q_BxTxHxD * jnp.asarray(d**-0.5, q_BxTxHxD.dtype)).reshape(b, t, kv, h // kv, d)
    q_BxKxGxTxD = q_BxKxGxTxD.transpose(0, 2, 3, 1, 4)
    k_BxKxSxD, v_BxKxSxD = k_BxSxKxD.transpose(0, 2, 1, 3), v_BxSxKxD.transpose(0, 2, 1, 3)
    per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
    per_row = jax.vmap(per_head, in_axes=(0, 0, 0, 0))
    out_BxKxGxTxD = per_row(q_BxKxGxTxD, k_BxKxSxD, v_BxKxSxD, splash.SegmentIds(q=segment_BxT, kv=segment_BxT))
    return out_BxKxGxTxD.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def splash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, attention_mask_BxT, *, interpret: bool = False):
    """Causal, padding-aware GQA attention; `interpret` runs the kernel in Pallas interpret mode
    (any backend, slow: for tests). Under a mesh it runs per shard over the batch and heads axes."""
    b, t = q_BxTxHxD.shape[:2]
    if attention_mask_BxT is None:
        segment_BxT = jnp.ones((b, t), jnp.int32)
    else:
        segment_BxT = attention_mask_BxT.astype(jnp.int32)
    attend = functools.partial(_attend_local, interpret=interpret)
    mesh = current_mesh()
    if mesh is None:
        return attend(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_BxT)
    kv_spec = logical_to_spec(("batch", None, "kv_heads", None), k_BxSxKxD.shape, mesh)
    q_spec = logical_to_spec(("batch", None, "heads", None), q_BxTxHxD.shape, mesh)
    if q_spec[2] != kv_spec[2]:
        # Query heads may be split only as their KV heads are, or a shard's groups would mix.
        q_spec = logical_to_spec(("batch", None, None, None), q_BxTxHxD.shape, mesh)
        kv_spec = logical_to_spec(("batch", None, None, None), k_BxSxKxD.shape, mesh)
    row_spec = logical_to_spec(("batch", None), segment_BxT.shape, mesh)
    sharded = jax.shard_map(attend, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, row_spec), out_specs=q_spec,
                            check_vma=False)
    return sharded(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_BxT)
