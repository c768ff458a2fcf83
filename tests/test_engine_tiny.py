"""The engine on the real `tiny` model: greedy parity with full recomputation, slot reuse,
and no recompilation across batches or weight updates."""

import contextlib
import logging

import jax
import numpy as np
import pytest
from flax import nnx

from rlx.engine import Engine, EngineConfig, rollout
from rlx.models import from_preset

SLOTS, MAX_NEW = 8, 10


@pytest.fixture(scope="module")
def model():
    return from_preset("tiny")


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, EngineConfig(max_concurrent_decodes=SLOTS, max_prefill_length=32,
                                      max_cache_len=64, steps_per_sync=4, attend_buckets=(16, 32, 64)))


def _prompts(count, seed=0, lo=2, hi=30):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 512, size=rng.integers(lo, hi)).tolist() for _ in range(count)]


def test_greedy_equals_full_recompute_with_slot_reuse(model, engine):
    prompts = _prompts(13)
    out = rollout(None, prompts, n=2, max_new_tokens=MAX_NEW, temperature=0.0, engine=engine)
    width = max(map(len, prompts)) + MAX_NEW
    ids = np.zeros((len(prompts), width), np.int32)
    lens = np.array([len(p) for p in prompts])
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
    forward = jax.jit(lambda x: model(x))
    rows = np.arange(len(prompts))
    for _ in range(MAX_NEW):  # argmax of model(ids) at the last real position, every step
        ids[rows, lens] = np.asarray(forward(ids))[rows, lens - 1].argmax(-1)
        lens += 1
    for i, p in enumerate(prompts):
        expected = ids[i, len(p):len(p) + MAX_NEW].tolist()
        assert out.response_ids[2 * i].tolist() == expected, f"prompt {i}"
        assert out.response_ids[2 * i + 1].tolist() == expected
    assert out.response_mask.all() and (out.finish_reason == "length").all()


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        if "Compiling" in record.getMessage():
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def compile_log():
    """The messages of every compilation inside the block (empty: nothing compiled)."""
    counter = _CompileCounter()
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles(True):
            yield counter.messages
    finally:
        logger.removeHandler(counter)


def test_no_recompilation_after_warmup_or_update_params(model, engine):
    kwargs = dict(n=2, max_new_tokens=9, temperature=0.8, top_p=0.95, engine=engine)
    rollout(None, _prompts(6, seed=10, lo=17, hi=32), seed=1, **kwargs)  # warm-up, bucket 32
    new_params = jax.tree.map(lambda x: x * 1.5, nnx.state(model))
    with compile_log() as compiled:
        first = rollout(None, _prompts(6, seed=11, lo=17, hi=32), seed=2, **kwargs)
        engine.update_params(new_params)
        second = rollout(None, _prompts(6, seed=11, lo=17, hi=32), seed=2, **{**kwargs, "temperature": 0.6})
    assert not compiled, compiled  # nothing at all compiles, engine or driver
    assert (first.response_ids != second.response_ids).any()  # the new weights are in use


def test_the_convenience_rollout_reuses_its_engine_and_sees_weight_updates():
    from rlx.engine.driver import ENGINES

    model = from_preset("tiny")  # its own model: updated in place below
    ENGINES.clear()
    kwargs = dict(n=4, temperature=0.8, seed=3)
    rollout(model, _prompts(3, seed=20, lo=5, hi=16), max_new_tokens=9, **kwargs)  # builds and compiles
    with compile_log() as compiled:
        # Other prompts of the same bucket, and a nearby length in the same power-of-two bucket.
        first = rollout(model, _prompts(3, seed=21, lo=5, hi=16), max_new_tokens=12, **kwargs)
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda x: x * 1.5, state))
        second = rollout(model, _prompts(3, seed=21, lo=5, hi=16), max_new_tokens=12, **kwargs)
    assert not compiled, compiled
    assert (first.response_ids != second.response_ids).any()  # the updated weights were sampled
    assert first.response_ids.shape[1] == 12
