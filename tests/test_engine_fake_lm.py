"""Engine and rollout-driver tests on a tiny fake LM that implements the model contract.

The fake is one attention layer with a KV cache in pure JAX: small enough to compile in a
second, yet every token depends on the whole context, so cache, position and slot bugs show.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, struct

from rlx.engine import Engine, EngineConfig, SamplingConfig, StopChecker, rollout

VOCAB = 64


@struct.dataclass
class FakeCache:
    k: jax.Array  # [1, batch, max_len, 1, dim]
    v: jax.Array


class FakeLM(nnx.Module):
    """The engine's model contract: __call__, init_cache, decode(..., attend_len)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 32, seed: int = 0):
        keys = jax.random.split(jax.random.key(seed), 5)
        self.embed = nnx.Param(jax.random.normal(keys[0], (vocab, dim)))
        self.wq = nnx.Param(jax.random.normal(keys[1], (dim, dim)) / dim**0.5)
        self.wk = nnx.Param(jax.random.normal(keys[2], (dim, dim)) / dim**0.5)
        self.wv = nnx.Param(jax.random.normal(keys[3], (dim, dim)) / dim**0.5)
        self.out = nnx.Param(jax.random.normal(keys[4], (dim, vocab)))
        self.dim = dim

    def _qkv(self, ids_BxT, pos_BxT):
        freqs = jnp.exp(-jnp.arange(self.dim) / 4.0)
        x = self.embed[...][ids_BxT] + jnp.sin(pos_BxT[..., None] * freqs)
        return x, x @ self.wq[...], x @ self.wk[...], x @ self.wv[...]

    def _attend(self, x, q, k, v, mask_BxTxS):
        scores = jnp.einsum("btd,bsd->bts", q, k) / self.dim**0.5
        probs = jax.nn.softmax(jnp.where(mask_BxTxS, scores, -1e30), axis=-1)
        return ((x + probs @ v) @ self.out[...]).astype(jnp.float32)

    def __call__(self, input_ids_BxT, positions_BxT=None, attention_mask_BxT=None):
        batch, seq = input_ids_BxT.shape
        mask = jnp.ones((batch, seq), bool) if attention_mask_BxT is None else attention_mask_BxT.astype(bool)
        if positions_BxT is None:
            positions_BxT = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        x, q, k, v = self._qkv(input_ids_BxT, positions_BxT)
        causal = jnp.tril(jnp.ones((seq, seq), bool))[None] & mask[:, None, :]
        return self._attend(x, q, k, v, causal)

    def init_cache(self, batch: int, max_len: int) -> FakeCache:
        zeros = jnp.zeros((1, batch, max_len, 1, self.dim), jnp.float32)
        return FakeCache(k=zeros, v=zeros)

    def decode(self, input_ids_BxT, positions_BxT, cache, *, attend_len=None):
        batch, max_len = cache.k.shape[1:3]
        read = attend_len or max_len
        x, q, k, v = self._qkv(input_ids_BxT, positions_BxT)
        b = jnp.arange(batch)[:, None]
        k_all = cache.k.at[0, b, positions_BxT, 0].set(k, mode="drop")
        v_all = cache.v.at[0, b, positions_BxT, 0].set(v, mode="drop")
        mask = jnp.arange(read)[None, None, :] <= positions_BxT[:, :, None]
        logits = self._attend(x, q, k_all[0, :, :read, 0], v_all[0, :, :read, 0], mask)
        return logits, FakeCache(k=k_all, v=v_all)


class CharTokenizer:
    """Token t decodes to two characters, so stop strings can end inside a token."""

    alphabet = "ab\n`cde"

    def decode(self, ids):
        a = self.alphabet
        return "".join(a[t % len(a)] + a[(t // len(a)) % len(a)] for t in ids)


def greedy_reference(model, prompts, steps):
    """Greedy decoding by recomputing the full (right-padded) sequence every step, no cache."""
    width = max(len(p) for p in prompts) + steps
    ids = np.zeros((len(prompts), width), np.int32)
    lens = np.array([len(p) for p in prompts])
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
    forward = jax.jit(lambda ids: model(ids))
    for _ in range(steps):
        logits = np.asarray(forward(ids))
        ids[np.arange(len(prompts)), lens] = logits[np.arange(len(prompts)), lens - 1].argmax(-1)
        lens += 1
    return [ids[i, len(p):len(p) + steps].tolist() for i, p in enumerate(prompts)]


def _prompts(count, lo=2, hi=20, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=rng.integers(lo, hi)).tolist() for _ in range(count)]


@pytest.fixture(scope="module")
def model():
    return FakeLM()


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, EngineConfig(max_concurrent_decodes=4, max_prefill_length=32, max_cache_len=64,
                                      steps_per_sync=3, attend_buckets=(16, 32, 64)))


def test_fake_decode_matches_full_forward(model):
    ids = jnp.asarray([_prompts(1, 9, 10)[0]])
    cache = model.init_cache(1, 16)
    logits, _ = model.decode(ids, jnp.arange(9)[None], cache)
    np.testing.assert_allclose(logits, model(ids), atol=1e-5)


def test_greedy_matches_recompute_with_slot_reuse(model, engine):
    prompts = _prompts(11)
    out = rollout(None, prompts, n=2, max_new_tokens=9, temperature=0.0, engine=engine)
    ref = greedy_reference(model, prompts, 9)
    for i in range(len(prompts)):
        assert out.response_ids[2 * i].tolist() == ref[i]
        assert out.response_ids[2 * i + 1].tolist() == ref[i]
    assert (out.finish_reason == "length").all() and out.response_mask.all()
    assert out.group_ids.tolist() == [i // 2 for i in range(22)]
    # Prompts are left-padded to the prefill bucket.
    assert out.prompt_ids.shape == (22, 32)
    assert out.prompt_ids[0, -len(prompts[0]):].tolist() == prompts[0]
    assert out.prompt_mask[0].sum() == len(prompts[0])


def test_eos_finishes_and_masks(model, engine):
    prompts = _prompts(5)
    free = rollout(None, prompts, max_new_tokens=8, temperature=0.0, engine=engine)
    eos = int(free.response_ids[0, 3])
    out = rollout(None, prompts, max_new_tokens=8, temperature=0.0, eos_ids=(eos,), engine=engine)
    row = free.response_ids[0].tolist()
    cut = row.index(eos) + 1
    assert out.response_ids[0, :cut].tolist() == row[:cut]
    assert out.response_mask[0].sum() == cut and out.finish_reason[0] == "eos"
    assert (out.response_ids[0, cut:] == 0).all() and (out.logprobs[0, cut:] == 0).all()


def test_stop_string_truncates_after_its_last_token(model, engine):
    tok = CharTokenizer()
    prompts = _prompts(6, seed=3)
    free = rollout(None, prompts, max_new_tokens=16, temperature=0.0, engine=engine)
    text = tok.decode(free.response_ids[2].tolist())
    stop = text[13:16]  # starts in token 6, may end inside token 7
    out = rollout(None, prompts, max_new_tokens=16, temperature=0.0, stop=(stop,), tokenizer=tok,
                  engine=engine)
    for row in range(len(prompts)):
        full = free.response_ids[row].tolist()
        hits = [t for t in range(1, 17) if stop in tok.decode(full[:t])]
        kept = out.response_mask[row].sum()
        if hits:
            assert kept == hits[0] and out.finish_reason[row] == "stop"
            assert out.response_ids[row, :kept].tolist() == full[:kept]
        else:
            assert kept == 16 and out.finish_reason[row] == "length"
    assert out.finish_reason[2] == "stop"


def test_stop_checker_regex_and_window():
    class Words:
        def decode(self, ids):
            return "".join(["x", "```python\n", "print(1)", "\n```", "\n\n", "y"][i] for i in ids)

    checker = StopChecker([re.compile(r"```python\n.*?```", re.S)], Words())
    assert checker.first_stop([0, 1, 2, 0, 3, 5], 0) == 5
    assert checker.first_stop([0, 1, 2], 0) is None
    steps = StopChecker(["\n\n"], Words())
    assert steps.first_stop([0, 0, 0, 0, 5, 4, 5], 5) == 6
    with pytest.raises(ValueError, match="tokenizer"):
        StopChecker(["\n\n"])


def test_prompt_too_long_names_the_limit(engine):
    with pytest.raises(ValueError, match=r"prompt 1 has 40 tokens .* 1 to 32 .*max_prefill_length"):
        rollout(None, [[1, 2], [3] * 40], max_new_tokens=4, engine=engine)
    with pytest.raises(ValueError, match="max_cache_len"):
        rollout(None, [[1, 2]], max_new_tokens=63, engine=engine)


def test_engine_api_prefill_insert_generate(model, engine):
    prompt = _prompts(1, 5, 6)[0]
    greedy = SamplingConfig(temperature=0.0)
    prefix = engine.prefill_batch(None, [prompt], jax.random.key(0)[None], sampler=greedy)
    first = int(prefix.tokens_PxS[0, 0])
    state = engine.init_decode_state(sampling=greedy, max_new_tokens=6)
    state = engine.insert_rows(prefix, state, [1, 3], [0, 0], [0, 0])
    tokens = [[first] for _ in range(4)]
    for _ in range(4):
        state, result = engine.generate_steps(None, state, 1)
        result = result.convert_to_numpy()
        for slot in (1, 3):
            slot_data = result.get_result_at_slot(slot)
            assert slot_data.valid[0, 0] == 1 and slot_data.log_prob.shape == (1, 1)
            tokens[slot].append(int(slot_data.tokens[0, 0]))
        assert result.get_result_at_slot(0).valid[0, 0] == 0
    ref = greedy_reference(model, [prompt], 5)[0]
    assert tokens[1] == ref and tokens[3] == ref
    assert int(result.get_result_at_slot(1).lengths[0]) == 5


def test_one_prefill_fills_slots_with_distinct_samples(engine):
    prefix = engine.prefill_batch(None, [list(range(1, 17))], jax.random.key(1)[None], num_samples=4,
                                  sampler=SamplingConfig(temperature=5.0))
    assert prefix.tokens_PxS.shape == (1, 4)
    state = engine.insert_rows(prefix, engine.init_decode_state(max_new_tokens=3), [0, 1, 2, 3], [0] * 4,
                               [0, 1, 2, 3])
    np.testing.assert_array_equal(state.tokens_B, prefix.tokens_PxS[0])
    assert len(set(np.asarray(prefix.tokens_PxS[0]).tolist())) > 1


def test_existing_prefix_continues_the_prompt(model, engine):
    greedy = SamplingConfig(temperature=0.0)
    head, tail = _prompts(1, 7, 8, seed=5)[0], _prompts(1, 5, 6, seed=6)[0]
    key = jax.random.key(0)[None]
    first = engine.prefill_batch(None, [head], key, sampler=greedy)
    prefix = engine.prefill_batch(None, [tail], key, sampler=greedy, existing_prefix=first)
    state = engine.insert_rows(prefix, engine.init_decode_state(sampling=greedy, max_new_tokens=8), [0], [0], [0])
    state, steps = engine.generate_steps(None, state, 3)
    got = [int(prefix.tokens_PxS[0, 0])] + np.asarray(steps.tokens[0]).tolist()
    assert got == greedy_reference(model, [head + tail], 4)[0]


def test_more_samples_than_slots(model, engine):
    prompts = _prompts(2, seed=9)
    out = rollout(None, prompts, n=6, max_new_tokens=5, temperature=0.0, engine=engine)
    ref = greedy_reference(model, prompts, 5)
    assert [r.tolist() for r in out.response_ids] == [ref[0]] * 6 + [ref[1]] * 6
