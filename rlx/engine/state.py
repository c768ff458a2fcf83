"""Engine data: config, prefix, decode state and JetStream's packed `ResultTokens`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlx.engine.sampling import SamplingConfig, SamplingMode, SamplingValues


def pow2_buckets(lo: int, hi: int) -> tuple[int, ...]:
    """Powers of two from `lo` below `hi`, then `hi` itself."""
    out, b = [], lo
    while b < hi:
        out.append(b)
        b *= 2
    return tuple(out) + (hi,)


def pick_bucket(buckets: tuple[int, ...], n: int) -> int:
    """The smallest bucket >= n; the caller checks n against the largest."""
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Sizes of the engine. Every shape the engine compiles for derives from these.

    max_concurrent_decodes: decode slots (batch of one generate step).
    max_prefill_length: longest prompt; prompts pad up to one of `prefill_buckets`.
    max_cache_len: KV-cache length per slot: prompt bucket + new tokens must fit.
    steps_per_sync: generate steps per jitted call between host syncs in `rollout`.
    attend_buckets: static attention lengths; decode reads only the smallest bucket that
      covers every slot's position, so short sequences do not pay for the whole cache.
    """

    max_concurrent_decodes: int = 64
    max_prefill_length: int = 128
    max_cache_len: int = 256
    steps_per_sync: int = 8
    prefill_buckets: tuple[int, ...] = ()
    attend_buckets: tuple[int, ...] = ()
    sampling: SamplingConfig = SamplingConfig()
    eos_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_prefill_length > self.max_cache_len:
            raise ValueError(
                f"max_prefill_length={self.max_prefill_length} exceeds max_cache_len="
                f"{self.max_cache_len}; raise max_cache_len")
        if not self.prefill_buckets:
            object.__setattr__(self, "prefill_buckets",
                               pow2_buckets(min(16, self.max_prefill_length), self.max_prefill_length))
        if not self.attend_buckets:
            object.__setattr__(self, "attend_buckets",
                               pow2_buckets(min(128, self.max_cache_len), self.max_cache_len))
        for name, buckets, top in (("prefill_buckets", self.prefill_buckets, self.max_prefill_length),
                                   ("attend_buckets", self.attend_buckets, self.max_cache_len)):
            if list(buckets) != sorted(buckets) or buckets[-1] != top:
                raise ValueError(f"{name}={buckets} must be ascending and end at {top}")


@struct.dataclass
class SlotData:
    """One slot's view of a `ResultTokens`."""

    tokens: Any
    valid: Any
    lengths: Any
    log_prob: Any = None


@struct.dataclass
class ResultTokens:
    """JetStream's packed result: tokens, validity and lengths in one int32 array.

    data: [slots, 2k + 1] = k tokens | k valid flags | generated length so far.
    log_prob: [slots, k] float32, the sampler's log-prob of each token.
    """

    data: Any
    tokens_idx: tuple[int, int] = struct.field(pytree_node=False)
    valid_idx: tuple[int, int] = struct.field(pytree_node=False)
    length_idx: tuple[int, int] = struct.field(pytree_node=False)
    samples_per_slot: int = struct.field(pytree_node=False)
    log_prob: Any = None

    @classmethod
    def pack(cls, tokens_NxK, valid_NxK, lengths_N, logprobs_NxK, samples_per_slot=1) -> "ResultTokens":
        k = tokens_NxK.shape[1]
        data = jnp.concatenate(
            [tokens_NxK.astype(jnp.int32), valid_NxK.astype(jnp.int32), lengths_N[:, None].astype(jnp.int32)],
            axis=1)
        return cls(data=data, tokens_idx=(0, k), valid_idx=(k, 2 * k), length_idx=(2 * k, 2 * k + 1),
                   samples_per_slot=samples_per_slot, log_prob=logprobs_NxK)

    @property
    def tokens(self):
        return self.data[:, self.tokens_idx[0]:self.tokens_idx[1]]

    @property
    def valid(self):
        return self.data[:, self.valid_idx[0]:self.valid_idx[1]]

    @property
    def lengths(self):
        return self.data[:, self.length_idx[0]]

    def copy_to_host_async(self) -> None:
        for x in (self.data, self.log_prob):
            if isinstance(x, jax.Array):
                x.copy_to_host_async()

    def convert_to_numpy(self) -> "ResultTokens":
        return self.replace(data=np.asarray(self.data),
                            log_prob=None if self.log_prob is None else np.asarray(self.log_prob))

    def get_result_at_slot(self, slot: int) -> SlotData:
        return self.get_result_at_slots(slice(slot * self.samples_per_slot,
                                              (slot + 1) * self.samples_per_slot))

    def get_result_at_slots(self, slots) -> SlotData:
        return SlotData(
            tokens=self.data[slots, self.tokens_idx[0]:self.tokens_idx[1]],
            valid=self.data[slots, self.valid_idx[0]:self.valid_idx[1]],
            lengths=self.data[slots, self.length_idx[0]],
            log_prob=None if self.log_prob is None else self.log_prob[slots],
        )


@struct.dataclass
class Prefix:
    """A prefill result for P prompts with S first-token samples each (P = 1 via the API).

    cache: the model's KV cache with batch P and length = the prompt's bucket.
    keys_PxS: the per-sample PRNG keys that later decode steps fold the step into.
    """

    cache: Any
    true_length_P: jax.Array
    tokens_PxS: jax.Array
    logprobs_PxS: jax.Array
    keys_PxS: jax.Array

    @property
    def num_samples(self) -> int:
        return self.tokens_PxS.shape[1]

    @property
    def cache_len(self) -> int:
        return jax.tree.leaves(self.cache)[0].shape[2]


@struct.dataclass
class DecodeState:
    """Everything one generate step transforms, for B slots.

    tokens_B is each slot's last token, to be written at position pos_B by the next step.
    mode and eos_ids are static (part of the jit cache key); bounds is a host-side upper
    bound on pos_B + 1 per slot that picks the static attention length, and is stripped
    before anything is jitted so it never causes a retrace.
    """

    cache: Any
    tokens_B: jax.Array
    pos_B: jax.Array
    lengths_B: jax.Array
    done_B: jax.Array
    keys_B: jax.Array
    sampling: SamplingValues
    max_new_tokens: jax.Array
    mode: SamplingMode = struct.field(pytree_node=False)
    eos_ids: tuple[int, ...] = struct.field(pytree_node=False, default=())
    bounds: tuple[int, ...] = struct.field(pytree_node=False, default=())
