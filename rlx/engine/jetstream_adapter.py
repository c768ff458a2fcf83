"""Serve an rlx `Engine` with JetStream's own Driver and gRPC server (google-jetstream 0.2.2).

    pip install 'rlx[jetstream]'
    server = serve(engine, tokenizer, port=9000); server.wait_for_termination()

The only rlx module that imports jetstream (and through it TensorFlow). JetStream 0.2.2's
Engine API predates first-token results: its `prefill` returns only a prefix, and its Driver
streams nothing but `generate` results. So the served engine emits each slot's tokens one
step late -- a step returns the token fed into that step, which right after `insert` is the
token sampled at prefill -- and no token is lost or duplicated.
"""

from __future__ import annotations

from typing import Any

import grpc
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jetstream.core import orchestrator, server_lib
from jetstream.engine import engine_api, token_utils, tokenizer_api, tokenizer_pb2

from rlx.engine.engine import Engine, as_key
from rlx.engine.state import DecodeState

# google-jetstream 0.2.2's Driver frees prefixes with `jax.tree_map`, which JAX has removed.
if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map


class TokenizerAdapter(tokenizer_api.Tokenizer):
    """JetStream's tokenizer interface over any tokenizer with `encode(str)` and `decode(ids)`.

    bos_id / eos_id / pad_id come from the wrapped tokenizer's attributes when it has them;
    eos falls back to the engine's first EOS id and pad to 0.
    """

    def __init__(self, tokenizer, eos_ids: tuple[int, ...] = ()):
        self.tokenizer = tokenizer
        self._bos = getattr(tokenizer, "bos_id", None)
        eos = getattr(tokenizer, "eos_id", None)
        self._eos = eos if eos is not None else (eos_ids[0] if eos_ids else -1)
        self._pad = getattr(tokenizer, "pad_id", None) or 0
        self._stop = {int(e) for e in eos_ids} | ({self._eos} if self._eos >= 0 else set())

    def encode(self, s: str, is_bos: bool = True, max_prefill_length: int | None = None,
               jax_padding: bool = True, **kwargs):
        ids = np.asarray(self.tokenizer.encode(s), np.int32)
        return token_utils.pad_tokens(ids, self.bos_id, self.pad_id,
                                      is_bos=is_bos and self._bos is not None,
                                      max_prefill_length=max_prefill_length, jax_padding=jax_padding)

    def decode(self, token_ids: list[int], **kwargs) -> str:
        return self.tokenizer.decode(list(token_ids))

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def bos_id(self) -> int:
        return self._bos if self._bos is not None else self._pad

    @property
    def stop_tokens(self) -> set[int]:
        # EOS only: JetStream's default also stops on pad, which a model may legally sample.
        return self._stop


@struct.dataclass
class ServingState:
    """The rlx decode state plus, per slot, whether its last token is still to be emitted."""

    inner: DecodeState
    pending_B: jax.Array


@jax.jit
def _emit(tokens_B, lengths_B, done_B, pending_B):
    data = jnp.stack([tokens_B, pending_B.astype(jnp.int32), lengths_B], axis=1).astype(jnp.int32)
    # A live slot samples a new token in the coming step; it is emitted by the step after.
    return data, ~done_B


@jax.jit
def _mark_pending(pending_B, slot):
    return pending_B.at[slot].set(True)


class JetStreamEngine(engine_api.Engine):
    """An rlx Engine behind JetStream 0.2.2's `engine_api.Engine` (interleaved serving): the
    one-prompt prefill, one-slot insert and one-step generate of that API, over the Engine's
    batched `prefill_batch`, `insert_rows` and `generate_steps`."""

    def __init__(self, engine: Engine, tokenizer):
        self.engine = engine
        self.tokenizer = tokenizer
        self._rng = jax.random.key(0)

    def prefill(self, *, params, existing_prefix=None, padded_tokens, true_length: int, rng=None):
        tokens = np.asarray(padded_tokens)
        if tokens.ndim != 1:
            raise ValueError(f"padded_tokens must be 1-D, got shape {tokens.shape}")
        if rng is None:
            self._rng, rng = jax.random.split(self._rng)
        return self.engine.prefill_batch(params, [tokens[:true_length].tolist()], as_key(rng)[None],
                                         existing_prefix=existing_prefix)

    def insert(self, prefix, decode_state: ServingState, slot: int) -> ServingState:
        inner = self.engine.insert_rows(prefix, decode_state.inner, [slot], [0], [0])
        return ServingState(inner=inner, pending_B=_mark_pending(decode_state.pending_B, slot))

    def free_resource(self, slot: int) -> None:
        """Nothing to free: slots own fixed cache rows (JetStream's hook for paged caches)."""
        return None

    def generate(self, params, decode_state: ServingState):
        inner = decode_state.inner
        data, pending_B = _emit(inner.tokens_B, inner.lengths_B, inner.done_B, decode_state.pending_B)
        inner, _ = self.engine.generate_steps(params, inner, 1)
        result = engine_api.ResultTokens(data=data, tokens_idx=(0, 1), valid_idx=(1, 2),
                                         length_idx=(2, 3), samples_per_slot=1)
        return ServingState(inner=inner, pending_B=pending_B), result

    def init_decode_state(self, *args, **kwargs) -> ServingState:
        inner = self.engine.init_decode_state()
        return ServingState(inner=inner, pending_B=jnp.zeros_like(inner.done_B))

    def load_params(self, *args, **kwargs):
        return self.engine.params

    def get_prefix_destination_sharding(self) -> Any:
        return None  # prefixes stay where prefill made them: prefill and decode share one mesh

    def get_tokenizer(self) -> tokenizer_pb2.TokenizerParameters:
        return tokenizer_pb2.TokenizerParameters(path="rlx")

    def build_tokenizer(self, metadata) -> TokenizerAdapter:
        return TokenizerAdapter(self.tokenizer, self.engine.config.eos_ids)

    @property
    def max_concurrent_decodes(self) -> int:
        return self.engine.max_concurrent_decodes

    @property
    def samples_per_slot(self) -> int:
        return 1

    @property
    def max_prefill_length(self) -> int:
        return self.engine.max_prefill_length

    @property
    def mesh(self):
        return self.engine.mesh

    @property
    def colocated_cpus(self):
        return None


def serve(engine: Engine, tokenizer, port: int, *, threads: int | None = None):
    """Start JetStream's gRPC server on `engine`; returns it (call `.wait_for_termination()`).

    JetStream pads prompts to powers of two from 16, so the engine's max_prefill_length must
    be one of them.
    """
    limit = engine.max_prefill_length
    if limit < 16 or limit & (limit - 1):
        raise ValueError(f"max_prefill_length={limit} must be a power of two >= 16 for JetStream's "
                         "prompt padding; rebuild the engine with e.g. 128")
    served = JetStreamEngine(engine, tokenizer)
    params = served.load_params()
    driver = orchestrator.Driver(prefill_engines=[served], generate_engines=[served],
                                 prefill_params=[params], generate_params=[params],
                                 interleaved_mode=True)
    threads = threads or max(engine.max_concurrent_decodes, 64)
    server = server_lib.JetStreamServer(driver, threads, port, grpc.insecure_server_credentials())
    server.start()
    return server
