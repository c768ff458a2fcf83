"""Decoder-only transformer for the Llama 3.x and Qwen2.x families (Flax NNX).

Per-layer parameters are stacked on a leading `layers` axis and the layers run under one
`lax.scan`, so compile time does not grow with depth. Two paths share the layer math:
`__call__` / `hidden_states` over a full sequence (training, scoring) and `decode` over a KV
cache (the engine's prefill and generate).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from rlx.mesh import with_logical_constraint
from rlx.models.attention import attend, cache_mask, resolve_attention, sequence_attention
from rlx.models.config import ModelConfig
from rlx.models.rope import apply_rope, inverse_frequencies, rope_cos_sin

KV_CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
_ACT = ("batch", "seq", "embed")
_INIT_STD = 0.02

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@struct.dataclass
class KVCache:
    """Keys and values of every layer: [n_layers, batch, max_len, n_kv_heads, head_dim]."""

    k: jax.Array
    v: jax.Array


def layer_param_specs(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Per-layer parameter name -> (shape, logical axes), without the leading `layers` axis."""
    d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
    specs = {
        "attn_norm": ((d,), ("embed",)),
        "wq": ((d, h, hd), ("embed", "heads", "head_dim")),
        "wk": ((d, kv, hd), ("embed", "kv_heads", "head_dim")),
        "wv": ((d, kv, hd), ("embed", "kv_heads", "head_dim")),
        "wo": ((h, hd, d), ("heads", "head_dim", "embed")),
        "mlp_norm": ((d,), ("embed",)),
        "w_gate": ((d, f), ("embed", "mlp")),
        "w_up": ((d, f), ("embed", "mlp")),
        "w_down": ((f, d), ("mlp", "embed")),
    }
    if cfg.qkv_bias:
        specs["bq"] = ((h, hd), ("heads", "head_dim"))
        specs["bk"] = ((kv, hd), ("kv_heads", "head_dim"))
        specs["bv"] = ((kv, hd), ("kv_heads", "head_dim"))
    return specs


def _init_value(name: str, shape: tuple[int, ...], dtype, rngs: nnx.Rngs) -> jax.Array:
    if name.endswith("norm"):
        return jnp.ones(shape, dtype)
    if name.startswith("b"):
        return jnp.zeros(shape, dtype)
    return nnx.initializers.normal(_INIT_STD)(rngs.params(), shape, dtype)


class DecoderLayers(nnx.Module):
    """All decoder layers' parameters, each stacked on a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.param_dtype)
        for name, (shape, axes) in layer_param_specs(cfg).items():
            full_shape = (cfg.n_layers, *shape)
            param = nnx.Param(_init_value(name, full_shape, dtype, rngs), logical_axes=("layers", *axes))
            setattr(self, name, param)
        self._names = tuple(layer_param_specs(cfg))

    def stacked(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in self._names}


@functools.lru_cache(maxsize=None)
def _inv_freq(cfg: ModelConfig) -> np.ndarray:
    return inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm with the statistics in float32, as the HF reference computes it."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * y.astype(x.dtype)


def dense(x: jax.Array, w: jax.Array, n_in: int = 1, out_dtype=None) -> jax.Array:
    """Contract the last `n_in` axes of x with the first `n_in` of w, as one 2-D matmul.

    Tokens and heads are flattened so every matmul (and both of its gradients) contracts a
    single axis: XLA:CPU sends only those to its fast GEMM, and on accelerators the reshapes
    are free.
    """
    in_size = math.prod(w.shape[:n_in])
    lead, out = x.shape[: x.ndim - n_in], w.shape[n_in:]
    y = jnp.dot(x.reshape(-1, in_size), w.reshape(in_size, -1), preferred_element_type=out_dtype)
    return y.reshape(*lead, *out)


def _qkv(cfg: ModelConfig, p: dict, h_BxTxD: jax.Array, cos: jax.Array, sin: jax.Array):
    q, k, v = dense(h_BxTxD, p["wq"]), dense(h_BxTxD, p["wk"]), dense(h_BxTxD, p["wv"])
    if cfg.qkv_bias:
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    q = with_logical_constraint(apply_rope(q, cos, sin), ("batch", "seq", "heads", "head_dim"))
    k = with_logical_constraint(apply_rope(k, cos, sin), ("batch", "seq", "kv_heads", "head_dim"))
    v = with_logical_constraint(v, ("batch", "seq", "kv_heads", "head_dim"))
    return q, k, v


def _mlp(cfg: ModelConfig, p: dict, x_BxTxD: jax.Array) -> jax.Array:
    h = rms_norm(x_BxTxD, p["mlp_norm"], cfg.rms_eps)
    act_BxTxF = jax.nn.silu(dense(h, p["w_gate"])) * dense(h, p["w_up"])
    act_BxTxF = with_logical_constraint(act_BxTxF, ("batch", "seq", "mlp"))
    return x_BxTxD + dense(act_BxTxF, p["w_down"])


def _layer(cfg: ModelConfig, p: dict, x_BxTxD: jax.Array, cos, sin, attend_fn: Callable) -> jax.Array:
    """One pre-norm decoder layer; `attend_fn(q, k, v)` supplies the attention (with or without cache)."""
    p = {name: w.astype(cfg.dtype) for name, w in p.items()}
    q, k, v = _qkv(cfg, p, rms_norm(x_BxTxD, p["attn_norm"], cfg.rms_eps), cos, sin)
    out_BxTxHxK = attend_fn(q, k, v)
    x_BxTxD = x_BxTxD + dense(out_BxTxHxK, p["wo"], n_in=2)
    x_BxTxD = _mlp(cfg, p, x_BxTxD)
    return with_logical_constraint(x_BxTxD, _ACT)


def _over_layers(body: Callable, carry: Any, xs: Any, scan: bool) -> Any:
    """Run `carry = body(carry, xs[i])` over the layer axis: one lax.scan, or unrolled."""
    if scan:
        return jax.lax.scan(lambda c, x: (body(c, x), None), carry, xs)[0]
    n_layers = jax.tree.leaves(xs)[0].shape[0]
    for i in range(n_layers):
        carry = body(carry, jax.tree.map(lambda a: a[i], xs))
    return carry


def default_positions(attention_mask_BxT: jax.Array | None, batch: int, seq: int) -> jax.Array:
    """cumsum(mask) - 1 clipped at 0 (left padding starts real tokens at 0), or arange(T)."""
    if attention_mask_BxT is None:
        return jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    return jnp.maximum(jnp.cumsum(attention_mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def unembed(hidden_BxTxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
    """Hidden states -> float32 logits [B, T, V] (also applied one sequence chunk at a time)."""
    logits_BxTxV = dense(hidden_BxTxD, w_DxV, out_dtype=jnp.float32)
    return with_logical_constraint(logits_BxTxV, ("batch", "seq", "vocab"))


class Transformer(nnx.Module):
    """Llama / Qwen2 decoder. Parameters are `nnx.Param`s tagged with `logical_axes` metadata."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.param_dtype)
        v, d = config.vocab_size, config.d_model
        init = nnx.initializers.normal(_INIT_STD)
        self.embed = nnx.Param(init(rngs.params(), (v, d), dtype), logical_axes=("vocab", "embed"))
        self.layers = DecoderLayers(config, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones((d,), dtype), logical_axes=("embed",))
        if not config.tie_embeddings:
            self.lm_head = nnx.Param(init(rngs.params(), (d, v), dtype), logical_axes=("embed", "vocab"))

    # -- shared pieces ----------------------------------------------------------------------

    def _embed(self, input_ids_BxT: jax.Array) -> jax.Array:
        x = jnp.take(self.embed[...], input_ids_BxT, axis=0).astype(self.config.dtype)
        return with_logical_constraint(x, _ACT)

    def _final_norm(self, x_BxTxD: jax.Array) -> jax.Array:
        return rms_norm(x_BxTxD, self.final_norm[...].astype(self.config.dtype), self.config.rms_eps)

    def unembed_weight(self) -> jax.Array:
        """The LM head [D, V] in the compute dtype (the embedding's transpose when tied)."""
        dtype = self.config.dtype
        if self.config.tie_embeddings:
            return self.embed[...].astype(dtype).T
        return self.lm_head[...].astype(dtype)

    def unembed(self, hidden_BxTxD: jax.Array) -> jax.Array:
        """Final-norm hidden states -> float32 logits [B, T, V]."""
        return unembed(hidden_BxTxD, self.unembed_weight())

    # -- full-sequence path -----------------------------------------------------------------

    def hidden_states(
        self,
        input_ids_BxT: jax.Array,
        positions_BxT: jax.Array | None = None,
        attention_mask_BxT: jax.Array | None = None,
    ) -> jax.Array:
        """Final-norm hidden states [B, T, D] in the compute dtype (for value / reward heads)."""
        cfg = self.config
        batch, seq = input_ids_BxT.shape
        if positions_BxT is None:
            positions_BxT = default_positions(attention_mask_BxT, batch, seq)
        cos, sin = rope_cos_sin(positions_BxT, _inv_freq(cfg), cfg.dtype)
        attend_fn = sequence_attention(resolve_attention(cfg.attention, cfg.dtype, cfg.head_dim),
                                       attention_mask_BxT, batch, seq)

        def body(x, p):
            return _layer(cfg, p, x, cos, sin, attend_fn)

        if cfg.remat != "none":
            # prevent_cse only matters outside a scan; inside one it just blocks optimisations.
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        x = _over_layers(body, self._embed(input_ids_BxT), self.layers.stacked(), cfg.scan_layers)
        return self._final_norm(x)

    def __call__(
        self,
        input_ids_BxT: jax.Array,
        positions_BxT: jax.Array | None = None,
        attention_mask_BxT: jax.Array | None = None,
    ) -> jax.Array:
        """Float32 logits [B, T, V]; causal and padding-aware (mask 1 = real token)."""
        return self.unembed(self.hidden_states(input_ids_BxT, positions_BxT, attention_mask_BxT))

    # -- KV-cache path ----------------------------------------------------------------------

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache [n_layers, batch, max_len, n_kv_heads, head_dim] in the compute dtype."""
        cfg = self.config
        shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
        zeros = with_logical_constraint(jnp.zeros(shape, cfg.dtype), KV_CACHE_AXES)
        return KVCache(k=zeros, v=zeros)

    def decode(
        self,
        input_ids_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: KVCache,
        *,
        attend_len: int | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Run T new tokens against the cache; returns float32 logits [B, T, V] and the new cache.

        Token (b, t) writes its K/V at cache[:, b, positions[b, t]] and attends to entries
        j <= positions[b, t]; entries are assumed filled contiguously from 0. Positions outside
        [0, max_len) are not written (use that for padding tokens). `attend_len` (static) reads
        only the first attend_len entries; it must exceed every position in this call.
        """
        cfg = self.config
        n_layers, batch, max_len = cache.k.shape[:3]
        read_len = max_len if attend_len is None else int(attend_len)
        if not 0 < read_len <= max_len:
            raise ValueError(f"attend_len={attend_len} must be in [1, {max_len}] (the cache length)")
        positions_BxT = positions_BxT.astype(jnp.int32)
        cos, sin = rope_cos_sin(positions_BxT, _inv_freq(cfg), cfg.dtype)
        mask_BxTxS = cache_mask(positions_BxT, read_len)
        # Out-of-range positions are sent to index max_len, which mode="drop" discards.
        write_BxT = jnp.where((positions_BxT < 0) | (positions_BxT >= max_len), max_len, positions_BxT)
        batch_Bx1 = jnp.arange(batch)[:, None]
        kv_shape = (1, batch, read_len, cfg.n_kv_heads, cfg.head_dim)

        def body(carry, xs):
            x, k_cache, v_cache = carry
            p, layer = xs
            written = {}

            def attend_cached(q, k, v):
                # The whole cache rides in the scan carry, so the scatter updates it in place.
                k_all = k_cache.at[layer, batch_Bx1, write_BxT].set(k.astype(k_cache.dtype), mode="drop")
                v_all = v_cache.at[layer, batch_Bx1, write_BxT].set(v.astype(v_cache.dtype), mode="drop")
                written.update(k=k_all, v=v_all)
                start = (layer, 0, 0, 0, 0)
                k_read = jax.lax.dynamic_slice(k_all, start, kv_shape)[0]
                v_read = jax.lax.dynamic_slice(v_all, start, kv_shape)[0]
                return attend(q, k_read, v_read, mask_BxTxS)

            x = _layer(cfg, p, x, cos, sin, attend_cached)
            return x, written["k"], written["v"]

        xs = (self.layers.stacked(), jnp.arange(n_layers))
        carry = (self._embed(input_ids_BxT), cache.k, cache.v)
        x, k_cache, v_cache = _over_layers(body, carry, xs, cfg.scan_layers)
        return self.unembed(self._final_norm(x)), KVCache(k=k_cache, v=v_cache)
