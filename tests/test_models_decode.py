"""The KV-cache path agrees with the full forward; scan, remat and dtypes behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import KVCache, abstract_model, from_preset


@pytest.fixture(scope="module")
def model():
    # Random init compiles one RNG kernel per parameter, so build once and derive variants.
    return from_preset("tiny", n_layers=2, qkv_bias=True)


def variant(model, **changes):
    """The same parameters under a config that differs in non-parameter fields."""
    cfg = model.config.replace(**changes)
    return nnx.merge(nnx.graphdef(abstract_model(cfg)), nnx.state(model))


def _forward(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, ids, pos, mask: nnx.merge(graphdef, s)(ids, pos, mask)), state


def _decoder(model):
    graphdef, state = nnx.split(model)

    @jax.jit(static_argnames="attend_len")
    def decode(s, ids, pos, cache, attend_len=None):
        return nnx.merge(graphdef, s).decode(ids, pos, cache, attend_len=attend_len)

    return decode, state


SCALED_ROPE = dict(
    rope_theta=500000.0,
    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
)


@pytest.mark.parametrize("scaled_rope", [False, True])
def test_prefill_then_steps_matches_full_forward(model, scaled_rope):
    model = variant(model, **SCALED_ROPE) if scaled_rope else model
    ids = jax.random.randint(jax.random.key(1), (2, 20), 0, model.config.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(20), (2, 20))
    forward, state = _forward(model)
    full = forward(state, ids, pos, None)

    decode, state = _decoder(model)
    prompt = 12
    cache = model.init_cache(batch=2, max_len=32)
    assert cache.k.shape == (2, 2, 32, 2, 64) and cache.k.dtype == jnp.float32
    logits, cache = decode(state, ids[:, :prompt], pos[:, :prompt], cache)
    steps = [logits]
    for t in range(prompt, 20):
        logits, cache = decode(state, ids[:, t : t + 1], pos[:, t : t + 1], cache, attend_len=24)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_positions_outside_cache_are_not_written(model):
    decode, state = _decoder(model)
    ids = jnp.array([[5, 6, 7, 8]])
    cache = model.init_cache(batch=1, max_len=8)
    # The last two tokens are padding: positions -1 and 8 (== max_len) must be dropped.
    _, cache = decode(state, ids, jnp.array([[0, 1, -1, 8]]), cache)
    written = np.abs(np.asarray(cache.k)).sum(axis=(0, 1, 3, 4)) > 0
    assert written.tolist() == [True, True] + [False] * 6


def test_left_padded_batch_matches_unpadded(model):
    forward, state = _forward(model)
    ids = jax.random.randint(jax.random.key(2), (1, 10), 0, model.config.vocab_size)
    alone = forward(state, ids, None, None)
    padded = jnp.concatenate([jnp.zeros((1, 6), jnp.int32), ids], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 6), jnp.int32), jnp.ones((1, 10), jnp.int32)], axis=1)
    out = forward(state, padded, None, mask)  # default positions: cumsum(mask) - 1
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(out[:, 6:], alone, atol=1e-5, rtol=0)


def test_scan_equals_unrolled_and_is_one_loop(model):
    unrolled = variant(model, scan_layers=False)
    ids = jax.random.randint(jax.random.key(3), (2, 9), 0, model.config.vocab_size)
    (scanned_fwd, state), (unrolled_fwd, _) = _forward(model), _forward(unrolled)
    np.testing.assert_allclose(scanned_fwd(state, ids, None, None), unrolled_fwd(state, ids, None, None), atol=1e-5)

    def jaxpr(cfg, fn):
        graphdef, abstract_state = nnx.split(abstract_model(cfg))
        return jax.make_jaxpr(lambda st, x: fn(nnx.merge(graphdef, st), x))(abstract_state, ids).jaxpr

    def n_scans(jaxpr):
        return sum(eqn.primitive.name == "scan" for eqn in jaxpr.eqns)

    forward = lambda m, x: m(x)
    decode = lambda m, x: m.decode(x, jnp.zeros_like(x), m.init_cache(2, 16))
    for fn in (forward, decode):
        shallow, deep = jaxpr(model.config, fn), jaxpr(model.config.replace(n_layers=8), fn)
        assert n_scans(shallow) == n_scans(deep) == 1
        assert len(shallow.eqns) == len(deep.eqns)  # the program does not grow with depth
        assert n_scans(jaxpr(model.config.replace(scan_layers=False), fn)) == 0


def test_remat_gives_same_gradients(model):
    ids = jax.random.randint(jax.random.key(4), (2, 8), 0, model.config.vocab_size)

    def grads(m):
        graphdef, state = nnx.split(m)

        def loss(s):
            logits = nnx.merge(graphdef, s)(ids)
            return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        return jax.jit(jax.grad(loss))(state)

    for a, b in zip(jax.tree.leaves(grads(model)), jax.tree.leaves(grads(variant(model, remat="full")))):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    # Every policy traces (compiling each would only re-test XLA).
    for remat in ("dots", "dots_no_batch"):
        m = variant(model, remat=remat)
        jax.eval_shape(jax.grad(lambda s: nnx.merge(nnx.graphdef(m), s)(ids).sum()), nnx.state(m))


def test_bfloat16_model(model):
    bf16_state = jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model))
    bf16_cfg = model.config.replace(dtype="bfloat16", param_dtype="bfloat16")
    bf16 = nnx.merge(nnx.graphdef(abstract_model(bf16_cfg)), bf16_state)
    assert bf16.layers.wq[...].dtype == jnp.bfloat16
    assert bf16.init_cache(1, 4).k.dtype == jnp.bfloat16
    ids = jax.random.randint(jax.random.key(5), (2, 8), 0, model.config.vocab_size)
    (f32_fwd, state), (bf16_fwd, bf16_state) = _forward(model), _forward(bf16)
    out = bf16_fwd(bf16_state, ids, None, None)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, f32_fwd(state, ids, None, None), atol=0.05)
    # float32 parameters with bfloat16 compute (mixed precision) also returns float32 logits.
    mixed_fwd, _ = _forward(variant(model, dtype="bfloat16"))
    assert mixed_fwd(state, ids, None, None).dtype == jnp.float32


def test_cache_is_a_pytree_with_model_dtype(model):
    cache = model.init_cache(3, 5)
    assert isinstance(cache, KVCache)
    leaves = jax.tree.leaves(cache)
    assert len(leaves) == 2 and all(x.shape == (2, 3, 5, 2, 64) for x in leaves)
    with pytest.raises(ValueError, match="attend_len"):
        model.decode(jnp.zeros((3, 1), jnp.int32), jnp.zeros((3, 1), jnp.int32), cache, attend_len=6)
