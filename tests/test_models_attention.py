"""Full-sequence attention implementations (model.attention) against today's `attend`.

Rows are left-padded prompts ++ right-padded responses, as the update sees them. xla must
match everywhere (padding rows included); splash (Pallas interpret mode on CPU) must match on
real query rows, which are all that reach a loss, and be finite on padding rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.models import from_preset
from rlx.models.attention import attend, full_sequence_mask, resolve_attention, sequence_attention

TOL = dict(rtol=1e-5, atol=1e-6)


def _inputs(seq, heads=4, kv_heads=2, head_dim=32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (3, seq, heads, head_dim))
    k = jax.random.normal(keys[1], (3, seq, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (3, seq, kv_heads, head_dim))
    mask = np.zeros((3, seq), np.int32)
    half = seq // 2
    for row, (left, right) in enumerate([(0, 0), (3, 5), (half - 1, 2)]):  # (left pad, right pad)
        mask[row, left:seq - right] = 1
    return q, k, v, jnp.asarray(mask)


def _reference(q, k, v, mask):
    return attend(q, k, v, full_sequence_mask(mask, *mask.shape))


def _check(impl, seq, all_rows):
    q, k, v, mask = _inputs(seq)
    fn = sequence_attention(impl, mask, *mask.shape)
    out, ref = jax.jit(fn)(q, k, v), _reference(q, k, v, mask)
    assert np.isfinite(np.asarray(out)).all()
    real = np.asarray(mask, bool)
    rows = slice(None) if all_rows else real
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], **TOL)
    # Gradients of a loss over real query rows only, as the update's masked losses are.
    w = jax.random.normal(jax.random.key(9), out.shape) * mask[:, :, None, None]
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.grad(lambda *a: jnp.sum(_reference(*a, mask) * w), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)


def test_xla_dot_product_attention_matches_today_on_every_row():
    _check("xla", 24, all_rows=True)


def _splash_runs_on_cpu() -> str:
    try:
        q, k, v, mask = _inputs(128)
        jax.block_until_ready(sequence_attention("splash", mask, *mask.shape)(q, k, v))
        return ""
    except Exception as e:  # noqa: BLE001 -- the reason goes into the skip message
        return f"splash in Pallas interpret mode does not run on this CPU with jax {jax.__version__}: {e!r}"[:300]


@pytest.fixture(scope="module")
def splash_on_cpu():
    reason = _splash_runs_on_cpu()
    if reason:
        pytest.skip(reason)


def test_splash_interpret_matches_today_on_real_rows(splash_on_cpu):
    _check("splash", 128, all_rows=False)


def test_model_hidden_states_agree_across_implementations(splash_on_cpu):
    """The tiny model end to end (GQA 4/2 heads, explicit positions): splash agrees with xla."""
    _, _, _, mask = _inputs(128)
    ids = jax.random.randint(jax.random.key(3), mask.shape, 0, 512)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    hidden = {}
    for impl in ("xla", "splash"):
        model = from_preset("tiny", seed=0, attention=impl, n_layers=2)
        hidden[impl] = np.asarray(jax.jit(lambda m: m.hidden_states(ids, positions, mask))(model))
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(hidden["splash"][real], hidden["xla"][real], rtol=1e-4, atol=1e-5)


def test_auto_is_xla_on_cpu_and_bad_choices_name_the_fix():
    assert resolve_attention("auto", "float32", 64) == "xla"
    with pytest.raises(ValueError, match="model.attention=auto"):
        resolve_attention("cudnn", "bfloat16", 64)
    q, k, v, mask = _inputs(100)
    with pytest.raises(ValueError, match="multiple of 128.*model.attention=xla"):
        sequence_attention("splash", mask, *mask.shape)(q, k, v)


def test_splash_under_a_mesh_runs_per_shard(splash_on_cpu):
    """The shard_map path (a 1x1x1 mesh here; multi-device meshes split batch and heads)."""
    from rlx.mesh import single_device_mesh

    q, k, v, mask = _inputs(128)
    with jax.set_mesh(single_device_mesh()):
        out = jax.jit(sequence_attention("splash", mask, *mask.shape))(q, k, v)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(_reference(q, k, v, mask))[real], **TOL)


def test_config_rejects_unknown_attention_and_negative_chunk():
    from rlx.config import ConfigError, load_config

    for override, match in [("model.attention=flash", "model.attention='flash' is not one of"),
                            ("model.logits_chunk=-1", "model.logits_chunk=-1 must be >= 0")]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [override])
