"""The rollout driver: continuous batching over the Engine, returning fixed-shape `Rollouts`.

Each prompt is prefilled once (several prompts per prefill call) and its n samples are
inserted into free slots; every `steps_per_sync` decode steps the host reads the new tokens,
applies stop strings, frees finished slots and refills them straight away.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from rlx import hostio
from rlx.engine import layout
from rlx.engine.engine import Engine
from rlx.engine.sampling import SamplingConfig
from rlx.engine.state import EngineConfig, pick_bucket, pow2_buckets
from rlx.engine.stops import Stop, StopChecker


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """N = len(prompts) * n rows, prompt-major: row i is sample i % n of prompt i // n.

    prompt_ids / prompt_mask: [N, P] LEFT-padded with 0 (P = the engine's prefill bucket of the
      longest prompt), so prompt_ids ++ response_ids is each sequence without gaps.
    response_ids / response_mask / logprobs: [N, max_new_tokens] right-padded; the EOS token
      and a stop string's tokens are part of the response; logprobs are the sampler's (0 on
      padding).
    group_ids: [N] the prompt's index. finish_reason: [N] "eos", "stop" or "length".
    """

    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    response_ids: np.ndarray
    response_mask: np.ndarray
    logprobs: np.ndarray
    group_ids: np.ndarray
    finish_reason: np.ndarray


def default_engine_config(prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
                          sampling: SamplingConfig | None = None) -> EngineConfig:
    """Slots for every sequence (at most 64) and a cache for this call, each rounded up to a
    power of two, so nearby calls share one engine and its compiled programs. The sampling
    settings are per call (`rollout` passes them), not part of the engine."""
    del sampling
    longest = max(len(p) for p in prompts)
    max_prefill = pick_bucket(pow2_buckets(16, 1 << 20), longest)
    slots = pick_bucket(pow2_buckets(1, 64), len(prompts) * n)
    new = pick_bucket(pow2_buckets(16, 1 << 20), max_new_tokens)
    return EngineConfig(max_concurrent_decodes=slots, max_prefill_length=max_prefill,
                        max_cache_len=max_prefill + new)


class EngineCache:
    """The engines `rollout(model, ...)` builds, reused across calls.

    Keyed by the model's graph (architecture and dtypes), its mesh and the engine config, so a second
    call with the same model and nearby sizes reuses the engine -- and every program it has
    compiled. Each call hands the engine the model's current weights (`update_params`: no
    copy when they already sit where the engine keeps them), so a model updated in place, or
    another model of the same graph, is always the one sampled. Least recently used first out.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._engines: collections.OrderedDict = collections.OrderedDict()

    def get(self, model: nnx.Module, config: EngineConfig) -> Engine:
        graphdef, params = nnx.split(model)
        key = (graphdef, config, layout.mesh_of(params))  # weights on another mesh: another engine
        engine = self._engines.pop(key, None)
        if engine is None:
            engine = Engine(model, config)
        else:
            engine.update_params(params)
        self._engines[key] = engine
        while len(self._engines) > self.size:
            self._engines.popitem(last=False)
        return engine

    def clear(self) -> None:
        self._engines.clear()


ENGINES = EngineCache()


def rollout(model: nnx.Module | None, prompts: Sequence[Sequence[int]], *, n: int = 1,
            max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
            min_p: float = 0.0, seed: int = 0, eos_ids: Sequence[int] = (), stop: Sequence[Stop] = (),
            tokenizer=None, engine: Engine | None = None) -> Rollouts:
    """Sample n responses per prompt (lists of token ids).

    With `engine`, its current params are used (call `engine.update_params` after each update)
    and `model` may be None; without, an engine sized for this call (sizes rounded up to powers
    of two) comes from `ENGINES`, built on the first call and reused by the next ones with the
    model's current weights. `stop` holds strings or compiled regexes (see rlx.engine.stops)
    and needs `tokenizer`.
    """
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts or n < 1 or max_new_tokens < 1:
        raise ValueError(f"rollout needs at least one prompt, n >= 1 and max_new_tokens >= 1 "
                         f"(got {len(prompts)} prompts, n={n}, max_new_tokens={max_new_tokens})")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    checker = StopChecker(stop, tokenizer)
    if engine is None:
        if model is None:
            raise ValueError("rollout needs a model or an engine; pass one of them")
        engine = ENGINES.get(model, default_engine_config(prompts, n, max_new_tokens))
    _check_lengths(engine.config, prompts, max_new_tokens)
    eos = tuple(eos_ids) or engine.config.eos_ids
    return _Driver(engine, prompts, n, max_new_tokens, sampling, seed, eos, checker).run()


def _check_lengths(cfg: EngineConfig, prompts, max_new_tokens: int) -> None:
    for i, p in enumerate(prompts):
        if not 0 < len(p) <= cfg.max_prefill_length:
            raise ValueError(f"prompt {i} has {len(p)} tokens but the engine takes 1 to "
                             f"{cfg.max_prefill_length} (EngineConfig.max_prefill_length); "
                             "shorten it or build the engine with a larger max_prefill_length")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > cfg.max_cache_len:
        raise ValueError(f"a {longest}-token prompt + max_new_tokens={max_new_tokens} exceeds "
                         f"max_cache_len={cfg.max_cache_len}; raise EngineConfig.max_cache_len "
                         "or lower max_new_tokens")


class _Driver:
    """Host-side bookkeeping of one rollout call."""

    def __init__(self, engine: Engine, prompts, n, max_new_tokens, sampling, seed, eos, checker):
        self.engine, self.prompts, self.n = engine, prompts, n
        self.max_new, self.sampling, self.eos, self.checker = max_new_tokens, sampling, eos, checker
        self.base_key = jax.random.key(seed)
        num = len(prompts) * n
        self.tokens = [[] for _ in range(num)]
        self.logprobs = [[] for _ in range(num)]
        self.checked = [0] * num
        self.reason = [""] * num
        self.pending = collections.deque()  # (prefix, row in prefix, request id)
        self.next_prompt = 0
        self.slot_req: list[int | None] = [None] * engine.max_concurrent_decodes

    def run(self) -> Rollouts:
        engine = self.engine
        state = engine.init_decode_state(sampling=self.sampling, eos_ids=self.eos,
                                         max_new_tokens=self.max_new)
        while True:
            state = self._refill(state)
            live = [s for s, r in enumerate(self.slot_req) if r is not None]
            if not live:
                break
            state, result = engine.generate_steps(None, state, engine.config.steps_per_sync)
            data, logprob, done = hostio.get((result.data, result.log_prob, state.done_B))
            finished = self._absorb(result, data, logprob, done, live)
            state = engine.release_slots(state, finished)
        return self._assemble()

    def _refill(self, state):
        free = [s for s, r in enumerate(self.slot_req) if r is None]
        missing = len(free) - len(self.pending)
        if missing > 0 and self.next_prompt < len(self.prompts):
            self._prefill(-(-missing // self.n))
        take = min(len(free), len(self.pending))
        by_prefix: dict[int, list] = {}
        for slot in free[:take]:
            prefix, row, req = self.pending.popleft()
            by_prefix.setdefault(id(prefix), [prefix, [], [], []])
            entry = by_prefix[id(prefix)]
            entry[1].append(slot), entry[2].append(row), entry[3].append(req % self.n)
            self.slot_req[slot] = req
        for prefix, slots, rows, samples in by_prefix.values():
            state = self.engine.insert_rows(prefix, state, slots, rows, samples)
        return state

    def _prefill(self, want: int) -> None:
        """Prefill the next prompts, always as one fixed-size batch: a rollout compiles one
        prefill per prompt bucket, and prompts beyond `want` wait in `pending` for free slots."""
        first = self.next_prompt
        count = pick_bucket(pow2_buckets(1, 1 << 30), max(1, self.engine.max_concurrent_decodes // self.n))
        real = min(max(want, count), len(self.prompts) - first)
        count = max(count, pick_bucket(pow2_buckets(1, 1 << 30), real))
        idx = [first + min(i, real - 1) for i in range(count)]
        keys = jax.vmap(lambda i: jax.random.fold_in(self.base_key, i))(np.asarray(idx, np.uint32))
        prefix = self.engine.prefill_batch(None, [self.prompts[i] for i in idx], keys,
                                           num_samples=self.n, sampler=self.sampling)
        first_tokens, first_logprobs = hostio.get((prefix.tokens_PxS, prefix.logprobs_PxS))
        for row in range(real):
            for s in range(self.n):
                req = (first + row) * self.n + s
                self.tokens[req].append(int(first_tokens[row, s]))
                self.logprobs[req].append(float(first_logprobs[row, s]))
                self.pending.append((prefix, row, req))
        self.next_prompt += real

    def _absorb(self, result, data, logprob, done, live) -> list[int]:
        """Append each live slot's new tokens; finish and free slots that are done."""
        tok_lo, tok_hi = result.tokens_idx
        val_lo, val_hi = result.valid_idx
        finished = []
        for slot in live:
            req = self.slot_req[slot]
            valid = data[slot, val_lo:val_hi].astype(bool)
            self.tokens[req].extend(data[slot, tok_lo:tok_hi][valid].tolist())
            self.logprobs[req].extend(logprob[slot][valid].tolist())
            reason = self._finish_reason(req, bool(done[slot]))
            if reason:
                self.reason[req] = reason
                self.slot_req[slot] = None
                finished.append(slot)
        return finished

    def _finish_reason(self, req: int, device_done: bool) -> str:
        toks = self.tokens[req]
        cut = self.checker.first_stop(toks, self.checked[req]) if self.checker else None
        self.checked[req] = len(toks)
        if cut is not None:
            del toks[cut:], self.logprobs[req][cut:]
            return "stop"
        if toks and toks[-1] in self.eos:
            return "eos"
        if device_done or len(toks) >= self.max_new:
            return "length"
        return ""

    def _assemble(self) -> Rollouts:
        num, width = len(self.tokens), self.max_new
        cfg = self.engine.config
        plen = pick_bucket(cfg.prefill_buckets, max(len(p) for p in self.prompts))
        prompt_ids = np.zeros((num, plen), np.int32)
        prompt_mask = np.zeros((num, plen), np.int32)
        response_ids = np.zeros((num, width), np.int32)
        response_mask = np.zeros((num, width), np.int32)
        logprobs = np.zeros((num, width), np.float32)
        for req in range(num):
            p = self.prompts[req // self.n]
            prompt_ids[req, plen - len(p):] = p
            prompt_mask[req, plen - len(p):] = 1
            toks = self.tokens[req][:width]
            response_ids[req, :len(toks)] = toks
            response_mask[req, :len(toks)] = 1
            logprobs[req, :len(toks)] = self.logprobs[req][:width]
        return Rollouts(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_mask=response_mask, logprobs=logprobs,
                        group_ids=np.arange(num, dtype=np.int32) // self.n,
                        finish_reason=np.asarray(self.reason, dtype="<U6"))
