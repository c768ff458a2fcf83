"""Sampler log-probs on the real `tiny` model against a trainer-side float64 reference
computed from full-sequence logits, and seeded determinism."""

import jax
import numpy as np
import pytest

from rlx.engine import Engine, EngineConfig, rollout
from rlx.models import from_preset


@pytest.fixture(scope="module")
def model():
    return from_preset("tiny")


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, EngineConfig(max_concurrent_decodes=8, max_prefill_length=32,
                                      max_cache_len=64, steps_per_sync=4, attend_buckets=(32, 64)))


def _prompts(count, seed=0, lo=2, hi=30):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 512, size=rng.integers(lo, hi)).tolist() for _ in range(count)]


def _full_logits(model, rows):
    """Full-sequence logits of right-padded rows in one jitted call (no cache)."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return np.asarray(jax.jit(lambda x: model(x))(ids), np.float64)


def _reference_logprobs(logits_V, token, temperature, top_k, top_p, min_p):
    """Trainer side, float64 NumPy: temperature, top-k, top-p, min-p, renormalise."""
    z = logits_V / temperature
    keep = np.ones_like(z, bool)
    if top_k:
        keep &= z >= np.sort(z)[::-1][top_k - 1]
    if top_p < 1.0:
        order = np.argsort(-np.where(keep, z, -np.inf))
        p = np.exp(z[order] - z[order].max()) * keep[order]
        p /= p.sum()
        before = np.cumsum(p) - p
        cut = np.zeros_like(keep)
        cut[order[(before < top_p) & keep[order]]] = True
        cut[order[0]] = True
        keep &= cut
    if min_p > 0.0:
        keep &= z >= z[keep].max() + np.log(min_p)
    zk = np.where(keep, z, -np.inf)
    return zk[token] - zk.max() - np.log(np.exp(zk - zk.max()).sum())


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", [
    (0.7, 20, 1.0, 0.0),
    (1.3, 0, 0.9, 0.05),
])
def test_sampler_logprobs_match_trainer_reference(model, engine, temperature, top_k, top_p, min_p):
    prompts = _prompts(4, seed=1)
    out = rollout(None, prompts, n=2, max_new_tokens=8, temperature=temperature, top_k=top_k,
                  top_p=top_p, min_p=min_p, seed=3, engine=engine)
    rows = [[t for t in out.prompt_ids[i] if t] + out.response_ids[i].tolist() for i in range(8)]
    logits = _full_logits(model, rows)
    for i in range(8):
        plen = int(out.prompt_mask[i].sum())
        for t in range(8):
            token = out.response_ids[i, t]
            ref = _reference_logprobs(logits[i, plen + t - 1], token, temperature, top_k, top_p, min_p)
            assert abs(out.logprobs[i, t] - ref) < 1e-4, (i, t, out.logprobs[i, t], ref)


def test_same_seed_same_tokens(engine):
    prompts = _prompts(5, seed=2)
    a = rollout(None, prompts, n=3, max_new_tokens=6, top_k=20, seed=7, engine=engine)
    b = rollout(None, prompts, n=3, max_new_tokens=6, top_k=20, seed=7, engine=engine)
    c = rollout(None, prompts, n=3, max_new_tokens=6, top_k=20, seed=8, engine=engine)
    np.testing.assert_array_equal(a.response_ids, b.response_ids)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.response_ids != c.response_ids).any()
    # Samples of one prompt differ from each other (independent keys per sample).
    assert (a.response_ids[0] != a.response_ids[1]).any()
