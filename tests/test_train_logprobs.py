"""Chunked response log-probs / entropy (rlx.train.logprobs) against the full-logits path.

The reference is the path the update used before chunking: the model's float32 [B, T, V]
logits, sliced to the response, through the `rlx.kernels.policy_loss` kernels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlx.kernels.policy_loss import entropy_from_logits, token_logprobs
from rlx.models import from_preset
from rlx.train import batch as layout
from rlx.train.logprobs import response_token_stats, token_stats
from rlx.train.update import LossSpec, score, score_with_entropy, train_step

TOL = dict(rtol=1e-6, atol=1e-6)
PROMPT, RESPONSE = 5, 11  # 11 = 3 chunks of 4 (padded to 12) with logits_chunk=4


def _model(chunk, **overrides):
    return from_preset("tiny", seed=0, logits_chunk=chunk, **overrides)


def _batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, vocab, n).tolist() for n in (5, 2, 4)]
    responses = [rng.integers(1, vocab, n).tolist() for n in (11, 6, 1)]
    p_ids, p_mask = layout.pad_prompts(prompts, PROMPT)
    r_ids, r_mask = layout.pad_responses(responses, RESPONSE)
    ids, mask, positions = layout.concat(p_ids, p_mask, r_ids, r_mask)
    rows = len(prompts)
    return {"ids": ids, "mask": mask, "positions": positions, "response_mask": r_mask,
            "old_logp": rng.normal(-6.0, 0.3, (rows, RESPONSE)).astype(np.float32),
            "ref_logp": rng.normal(-6.0, 0.3, (rows, RESPONSE)).astype(np.float32),
            "adv": np.repeat(rng.normal(size=(rows, 1)), RESPONSE, 1).astype(np.float32)}


def _full_logits_stats(model, batch, temperature):
    logits_BxRxV = model(batch["ids"], batch["positions"], batch["mask"])[:, -RESPONSE - 1:-1]
    tokens_BxR = batch["ids"][:, -RESPONSE:]
    return token_logprobs(logits_BxRxV, tokens_BxR, temperature), entropy_from_logits(logits_BxRxV, temperature)


@pytest.mark.parametrize("chunk", [1, 4, 5, 7, 64])
def test_token_stats_chunks_equal_whole_sequence(chunk):
    """Chunks that divide T=14, that don't (padded), and one larger than T."""
    hidden = jax.random.normal(jax.random.key(0), (3, 14, 16))
    w = jax.random.normal(jax.random.key(1), (16, 40))
    tokens = jax.random.randint(jax.random.key(2), (3, 14), 0, 40)
    logits = hidden @ w
    logp, ent = jax.jit(token_stats, static_argnums=(4,))(hidden, w, tokens, 0.7, chunk)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(token_logprobs(logits, tokens, 0.7)), **TOL)
    np.testing.assert_allclose(np.asarray(ent), np.asarray(entropy_from_logits(logits, 0.7)), **TOL)


@pytest.mark.parametrize("tie", [False, True])
def test_response_stats_equal_the_full_logits(tie):
    model = _model(4, tie_embeddings=tie)
    batch = jax.tree.map(jnp.asarray, _batch(model.config.vocab_size))
    logp, ent = jax.jit(lambda m, b: response_token_stats(m, b, 0.7))(model, batch)
    ref_logp, ref_ent = _full_logits_stats(model, batch, 0.7)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(ref_logp), **TOL)
    np.testing.assert_allclose(np.asarray(ent), np.asarray(ref_ent), **TOL)


def test_chunked_gradients_equal_the_full_logits_gradients():
    """d/dparams of sum(a logp + b entropy), chunk 4 over 11 positions (the last chunk padded)."""
    model = _model(4, tie_embeddings=True)
    graphdef, params = nnx.split(model)
    batch = jax.tree.map(jnp.asarray, _batch(model.config.vocab_size))
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.normal(size=(3, RESPONSE)), jnp.float32) for _ in range(2))

    def objective(stats_fn):
        def f(p):
            logp, ent = stats_fn(nnx.merge(graphdef, p))
            return jnp.sum(a * logp + b * ent)
        return jax.jit(jax.value_and_grad(f))(params)

    value, grads = objective(lambda m: response_token_stats(m, batch, 0.9, entropy_grad=True))
    ref_value, ref_grads = objective(lambda m: _full_logits_stats(m, batch, 0.9))
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-6)
    # Summing d(logits) over chunks changes float32 rounding, so compare against each tensor's scale.
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        g, r = np.asarray(g), np.asarray(r)
        assert np.abs(g - r).max() <= 1e-6 * np.abs(r).max(), (np.abs(g - r).max(), np.abs(r).max())


def test_entropy_carries_no_gradient_unless_asked():
    hidden = jax.random.normal(jax.random.key(0), (2, 7, 8))
    w = jax.random.normal(jax.random.key(1), (8, 16))
    tokens = jnp.zeros((2, 7), jnp.int32)
    for chunk in (0, 3):
        g = jax.grad(lambda h: token_stats(h, w, tokens, 1.0, chunk)[1].sum())(hidden)
        assert not np.any(np.asarray(g))
        g = jax.grad(lambda h: token_stats(h, w, tokens, 1.0, chunk, entropy_grad=True)[1].sum())(hidden)
        assert np.any(np.asarray(g))


def test_train_step_chunked_equals_whole_sequence():
    """Loss, metrics and updated parameters of the jitted update: chunk 3 (4 chunks, padded) vs 0."""
    spec = LossSpec(agg="seq-mean-token-sum-norm", max_len=RESPONSE, use_kl=True,
                    entropy_coef=0.01, micro_batches=1)
    sgd = optax.sgd(1.0)
    out = []
    for chunk in (0, 3):
        graphdef, params = nnx.split(_model(chunk))
        batch = jax.tree.map(jnp.asarray, _batch(512, seed=2))
        new, _, metrics = train_step(graphdef, sgd, spec, params, sgd.init(params), batch, jnp.float32(0.1),
                                     jnp.float32(0.8))
        out.append((new, metrics))
    (new0, m0), (new3, m3) = out
    for key in m0:
        np.testing.assert_allclose(float(m3[key]), float(m0[key]), rtol=1e-6, atol=1e-7, err_msg=key)
    for x, y in zip(jax.tree.leaves(new3), jax.tree.leaves(new0)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


def test_jitted_scoring_matches_the_full_logits():
    model = _model(4)
    graphdef, params = nnx.split(model)
    batch = jax.tree.map(jnp.asarray, _batch(model.config.vocab_size, seed=3))
    ref_logp, ref_ent = _full_logits_stats(model, batch, 1.3)
    np.testing.assert_allclose(np.asarray(score(graphdef, params, batch, 1.3)), np.asarray(ref_logp), **TOL)
    logp, mean_ent = score_with_entropy(graphdef, params, batch, 1.3)
    m = np.asarray(batch["response_mask"], np.float32)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(ref_logp), **TOL)
    np.testing.assert_allclose(float(mean_ent), float((np.asarray(ref_ent) * m).sum() / m.sum()), rtol=1e-6)
