"""The rlx Engine: prefill / insert / generate over decode slots, in JAX.

Its API is what rollouts need (`rlx.engine.driver`): `prefill_batch` (several prompts, n
samples each), `insert_rows`, `generate_steps`, `release_slots`, `update_params`. JetStream's
Engine API (one-prompt prefill, insert, one-step generate, `load_params`, `free_resource`)
is the adapter's, `rlx.engine.jetstream_adapter`, built on these.

One jitted function per hot path, each built once per engine: prefill (per prompt bucket),
insert, and generate (k steps of a `lax.fori_loop`, per attention bucket). The decode state
is donated to insert and generate; params are an argument, so `update_params` swaps
weights without recompiling. Each runs under `jax.set_mesh(engine.mesh)`, so the model's
logical-axis constraints (rlx.mesh.with_logical_constraint) act on its activations.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx import hostio
from rlx.engine import layout
from rlx.engine.sampling import SamplingConfig, SamplingValues, sample
from rlx.engine.state import DecodeState, EngineConfig, Prefix, ResultTokens, pick_bucket


def as_key(rng) -> jax.Array:
    """A typed PRNG key from a typed key, a raw uint32 key or an int seed."""
    if isinstance(rng, int):
        return jax.random.key(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


class Engine:
    """Serves one model on one mesh. Build once; `update_params` after each RL update."""

    def __init__(self, model: nnx.Module, config: EngineConfig = EngineConfig(), *, mesh=None):
        self.config = config
        self._graphdef, params = nnx.split(model)
        self._mesh = mesh if mesh is not None else layout.mesh_of(params)
        self._params = layout.place_params(params, self._mesh)
        self._param_shardings = jax.tree.map(lambda x: x.sharding, self._params)
        self._param_treedef = jax.tree.structure(self._params)
        self._cache_shape = jax.eval_shape(
            lambda: model.init_cache(config.max_concurrent_decodes, config.max_cache_len))
        self._state_shardings = None  # built on first init_decode_state (needs its treedef)
        # The cache is created in place, already sharded: never whole on one device.
        cache_shardings = jax.tree.map(lambda s: layout.cache_sharding(s, self._mesh), self._cache_shape)
        self._zero_cache = jax.jit(
            lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._cache_shape),
            out_shardings=cache_shardings)
        self._prefill_jit = jax.jit(self._prefill_impl, static_argnames=("num_samples", "mode"))
        self._insert_jit = jax.jit(self._insert_impl, donate_argnums=(1,))
        self._generate_jit = jax.jit(self._generate_impl, donate_argnums=(1,),
                                     static_argnames=("num_steps", "attend_len"))

    # ---- properties -----------------------------------------------------------------------

    @property
    def max_concurrent_decodes(self) -> int:
        return self.config.max_concurrent_decodes

    @property
    def max_prefill_length(self) -> int:
        return self.config.max_prefill_length

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self._mesh

    @property
    def params(self):
        return self._params

    # ---- params ---------------------------------------------------------------------------

    def update_params(self, params) -> None:
        """Swap in new weights (an `nnx.State` or a model of the same architecture).

        They are cast to the engine's dtypes and moved to its shardings, so nothing
        recompiles; when the actor shares the engine's mesh this moves no data, and on
        another mesh it is a `jax.device_put` to the engine's devices.
        """
        if isinstance(params, nnx.Module):
            params = nnx.state(params)
        if jax.tree.structure(params) != self._param_treedef:
            raise ValueError("update_params got params whose structure differs from the engine's "
                             "model; pass nnx.state(model) of the model the engine was built with")
        params = jax.tree.map(lambda x, ref: x.astype(ref.dtype) if x.dtype != ref.dtype else x,
                              params, self._params)
        self._params = hostio.transfer(params, self._param_shardings)

    # ---- prefill --------------------------------------------------------------------------

    def prefill_batch(self, params, prompts: Sequence[Sequence[int]], keys_P: jax.Array, *,
                      num_samples: int = 1, sampler: SamplingConfig | None = None,
                      existing_prefix: Prefix | None = None) -> Prefix:
        """Prefill P prompts at once, padded to the bucket of the longest (rollout's path)."""
        longest = max(len(p) for p in prompts)
        limit = self.config.max_prefill_length
        if longest > limit or longest == 0:
            raise ValueError(f"a prompt has {longest} tokens but the engine takes 1 to {limit} "
                             "(EngineConfig.max_prefill_length); shorten it or raise the limit")
        bucket = pick_bucket(self.config.prefill_buckets, longest)
        if existing_prefix is not None and existing_prefix.cache_len + bucket > self.config.max_cache_len:
            raise ValueError(f"existing prefix ({existing_prefix.cache_len} cache rows) plus a {bucket}-token "
                             f"bucket exceeds max_cache_len={self.config.max_cache_len}; raise it")
        tokens_PxT = np.zeros((len(prompts), bucket), np.int32)
        for i, p in enumerate(prompts):
            tokens_PxT[i, :len(p)] = p
        true_len_P = np.array([len(p) for p in prompts], np.int32)
        sampler = sampler or self.config.sampling
        with jax.set_mesh(self._mesh):
            return self._prefill_jit(self._params if params is None else params, tokens_PxT, true_len_P,
                                     keys_P, sampler.values(), existing_prefix,
                                     num_samples=num_samples, mode=sampler.mode)

    def _prefill_impl(self, params, tokens_PxT, true_len_P, keys_P, values: SamplingValues,
                      existing: Prefix | None, *, num_samples: int, mode) -> Prefix:
        model = nnx.merge(self._graphdef, params)
        num_prompts, bucket = tokens_PxT.shape
        if existing is None:
            cache = model.init_cache(num_prompts, bucket)
            offset_P = jnp.zeros((num_prompts,), jnp.int32)
        else:
            # New tokens continue the existing prompt: its cache grows by one bucket.
            cache = jax.tree.map(lambda x: jnp.concatenate(
                [x, jnp.zeros(x.shape[:2] + (bucket,) + x.shape[3:], x.dtype)], axis=2), existing.cache)
            offset_P = existing.true_length_P
        positions_PxT = offset_P[:, None] + jnp.arange(bucket, dtype=jnp.int32)[None, :]
        cache_len = jax.tree.leaves(cache)[0].shape[2]
        logits_PxTxV, cache = model.decode(tokens_PxT, positions_PxT, cache, attend_len=cache_len)
        last_PxV = jnp.take_along_axis(logits_PxTxV, (true_len_P - 1)[:, None, None], axis=1)[:, 0]
        keys_PxS = jax.vmap(lambda k: jax.random.split(k, num_samples))(keys_P)
        step_keys = jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, 0)))(keys_PxS)
        logits_NxV = jnp.repeat(last_PxV, num_samples, axis=0)
        tokens_N, logprobs_N = sample(logits_NxV, step_keys.reshape(-1), mode, values)
        shape = (num_prompts, num_samples)
        return Prefix(cache=cache, true_length_P=offset_P + true_len_P,
                      tokens_PxS=tokens_N.reshape(shape), logprobs_PxS=logprobs_N.reshape(shape),
                      keys_PxS=keys_PxS)

    # ---- insert ---------------------------------------------------------------------------

    def insert_rows(self, prefix: Prefix, decode_state: DecodeState, slots, rows, samples) -> DecodeState:
        """Slot slots[i] <- prompt rows[i], sample samples[i] of `prefix`.

        Index arrays are padded to max_concurrent_decodes with an out-of-range slot that the
        scatter drops, so one compiled insert serves any number of slots.
        """
        num_slots = self.config.max_concurrent_decodes
        if len(slots) > num_slots or any(not 0 <= s < num_slots for s in slots):
            raise ValueError(f"slots {list(slots)} must be distinct ints in [0, {num_slots})")
        pad = num_slots - len(slots)
        slots_R = np.asarray(list(slots) + [num_slots] * pad, np.int32)
        rows_R = np.asarray(list(rows) + [0] * pad, np.int32)
        samples_R = np.asarray(list(samples) + [0] * pad, np.int32)
        stripped = decode_state.replace(bounds=())
        with jax.set_mesh(self._mesh):
            new = self._insert_jit(prefix, stripped, slots_R, rows_R, samples_R)
        # Bound by the prefix's padded length, not its true length: then the attention buckets
        # a rollout walks through depend on the prompt bucket only, and batches of one bucket
        # never compile a new one.
        bounds = list(decode_state.bounds)
        for s in slots:
            bounds[s] = prefix.cache_len + 1
        return new.replace(bounds=tuple(bounds))

    def _insert_impl(self, prefix: Prefix, state: DecodeState, slots_R, rows_R, samples_R) -> DecodeState:
        def put(dst, src):
            return dst.at[:, slots_R, :src.shape[2]].set(src[:, rows_R], mode="drop")

        cache = jax.tree.map(put, state.cache, prefix.cache)
        tokens_R = prefix.tokens_PxS[rows_R, samples_R]
        pos_R = prefix.true_length_P[rows_R]
        done_R = self._finished(tokens_R, jnp.ones_like(pos_R), pos_R, state)
        return state.replace(
            cache=cache,
            tokens_B=state.tokens_B.at[slots_R].set(tokens_R, mode="drop"),
            pos_B=state.pos_B.at[slots_R].set(pos_R, mode="drop"),
            lengths_B=state.lengths_B.at[slots_R].set(1, mode="drop"),
            done_B=state.done_B.at[slots_R].set(done_R, mode="drop"),
            keys_B=state.keys_B.at[slots_R].set(prefix.keys_PxS[rows_R, samples_R], mode="drop"),
        )

    def _finished(self, tokens, lengths, pos, state: DecodeState):
        """EOS sampled, the token budget spent, or no cache row left to write the token into."""
        eos = jnp.isin(tokens, jnp.asarray(state.eos_ids, jnp.int32)) if state.eos_ids else False
        return eos | (lengths >= state.max_new_tokens) | (pos >= self.config.max_cache_len)

    def release_slots(self, decode_state: DecodeState, slots: Sequence[int]) -> DecodeState:
        """Tell the engine these slots are finished, so they stop widening decode attention."""
        bounds = list(decode_state.bounds)
        for s in slots:
            bounds[s] = 0
        return decode_state.replace(bounds=tuple(bounds))

    # ---- generate -------------------------------------------------------------------------

    def init_decode_state(self, *, sampling: SamplingConfig | None = None, eos_ids: Sequence[int] | None = None,
                          max_new_tokens: int | None = None) -> DecodeState:
        """Empty slots (all done) with a zeroed KV cache on the engine's mesh."""
        state = self._empty_state(sampling, eos_ids, max_new_tokens)
        stripped = state.replace(bounds=())
        if self._state_shardings is None:
            self._state_shardings = layout.decode_state_shardings(stripped, self._mesh)
        arrays = hostio.put(stripped, layout.like(self._state_shardings, stripped))
        return arrays.replace(bounds=state.bounds)

    def _empty_state(self, sampling: SamplingConfig | None, eos_ids, max_new_tokens) -> DecodeState:
        sampling = sampling or self.config.sampling
        eos = tuple(int(e) for e in (self.config.eos_ids if eos_ids is None else eos_ids))
        num_slots = self.config.max_concurrent_decodes
        budget = self.config.max_cache_len if max_new_tokens is None else max_new_tokens
        return DecodeState(
            cache=self._zero_cache(),
            tokens_B=jnp.zeros((num_slots,), jnp.int32),
            pos_B=jnp.zeros((num_slots,), jnp.int32),
            lengths_B=jnp.zeros((num_slots,), jnp.int32),
            done_B=jnp.ones((num_slots,), bool),
            keys_B=jax.random.split(jax.random.key(0), num_slots),
            sampling=sampling.values(),
            max_new_tokens=jnp.asarray(budget, jnp.int32),
            mode=sampling.mode, eos_ids=eos, bounds=(0,) * num_slots)

    def generate_steps(self, params, decode_state: DecodeState, num_steps: int,
                       sampler: SamplingConfig | None = None) -> tuple[DecodeState, ResultTokens]:
        """`num_steps` decode steps in one jitted loop; ResultTokens holds k tokens per slot."""
        if sampler is not None:
            decode_state = decode_state.replace(sampling=sampler.values(), mode=sampler.mode)
        need = max(decode_state.bounds) + num_steps - 1
        attend_len = pick_bucket(self.config.attend_buckets, min(need, self.config.max_cache_len))
        with jax.set_mesh(self._mesh):
            new, result = self._generate_jit(self._params if params is None else params,
                                             decode_state.replace(bounds=()),
                                             num_steps=num_steps, attend_len=attend_len)
        cap = self.config.max_cache_len
        bounds = tuple(min(b + num_steps, cap) if b else 0 for b in decode_state.bounds)
        return new.replace(bounds=bounds), result

    def _generate_impl(self, params, state: DecodeState, *, num_steps: int, attend_len: int):
        model = nnx.merge(self._graphdef, params)
        num_slots = state.tokens_B.shape[0]

        def step(i, carry):
            state, tokens_BxK, valid_BxK, logprobs_BxK = carry
            live_B = ~state.done_B
            # Finished slots write at position 0 of their own row, inside any attention bucket.
            pos_in_B = jnp.where(live_B, state.pos_B, 0)
            logits_Bx1xV, cache = model.decode(state.tokens_B[:, None], pos_in_B[:, None], state.cache,
                                               attend_len=attend_len)
            keys_B = jax.vmap(jax.random.fold_in)(state.keys_B, state.lengths_B)
            new_B, logprob_B = sample(logits_Bx1xV[:, 0], keys_B, state.mode, state.sampling)
            lengths_B = state.lengths_B + live_B
            pos_B = state.pos_B + live_B
            done_B = state.done_B | (live_B & self._finished(new_B, lengths_B, pos_B, state))
            state = state.replace(cache=cache, tokens_B=jnp.where(live_B, new_B, state.tokens_B),
                                  pos_B=pos_B, lengths_B=lengths_B, done_B=done_B)
            return (state, tokens_BxK.at[:, i].set(new_B), valid_BxK.at[:, i].set(live_B),
                    logprobs_BxK.at[:, i].set(jnp.where(live_B, logprob_B, 0.0)))

        carry = (state, jnp.zeros((num_slots, num_steps), jnp.int32),
                 jnp.zeros((num_slots, num_steps), bool), jnp.zeros((num_slots, num_steps), jnp.float32))
        state, tokens_BxK, valid_BxK, logprobs_BxK = jax.lax.fori_loop(0, num_steps, step, carry)
        state = jax.lax.with_sharding_constraint(state, layout.like(self._state_shardings, state))
        return state, ResultTokens.pack(tokens_BxK, valid_BxK, state.lengths_B, logprobs_BxK)

    # ---- ahead-of-time lowering (rlx.plan_compile) ------------------------------------------

    def lower_prefill(self, num_prompts: int, bucket: int, num_samples: int = 1,
                      sampler: SamplingConfig | None = None) -> jax.stages.Lowered:
        """The prefill program for `num_prompts` prompts padded to `bucket`, on abstract inputs:
        with an abstract model (`models.abstract_model`) nothing is allocated."""
        sampler = sampler or self.config.sampling
        keys_P = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), num_prompts))
        values = jax.eval_shape(sampler.values)  # no arrays: the mesh's devices may be compile-only
        with jax.set_mesh(self._mesh):
            return self._prefill_jit.lower(
                self._params, jax.ShapeDtypeStruct((num_prompts, bucket), jnp.int32),
                jax.ShapeDtypeStruct((num_prompts,), jnp.int32), keys_P, values, None,
                num_samples=num_samples, mode=sampler.mode)

    def lower_generate(self, num_steps: int, attend_len: int,
                       sampling: SamplingConfig | None = None) -> jax.stages.Lowered:
        """The generate program (`num_steps` decode steps reading `attend_len` cache rows) on an
        abstract decode state with the shardings `init_decode_state` gives the real one."""
        state = jax.eval_shape(lambda: self._empty_state(sampling, None, None).replace(bounds=()))
        if self._state_shardings is None:
            self._state_shardings = layout.decode_state_shardings(state, self._mesh)
        state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             state, layout.like(self._state_shardings, state))
        with jax.set_mesh(self._mesh):
            return self._generate_jit.lower(self._params, state, num_steps=num_steps, attend_len=attend_len)

