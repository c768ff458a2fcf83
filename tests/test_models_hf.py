"""Parity with transformers (PyTorch CPU) on tiny random Qwen2 and Llama checkpoints."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlx.models import abstract_model, from_hf, from_preset, to_hf  # noqa: E402
from rlx.models.safetensors_file import SafetensorsFile, write_safetensors  # noqa: E402

VOCAB = 256
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,  # large enough that greedy argmaxes are not near-ties
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
LLAMA3_ROPE = dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32
)


def _hf_model(kind):
    torch.manual_seed(0)
    if kind == "qwen2":
        config = transformers.Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=10000.0)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(
            **COMMON, tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE
        )
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # HF starts norms at 1 and biases at 0; perturb them so they are tested
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def checkpoint(request, tmp_path_factory):
    hf_model = _hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(path)
    model = from_hf(path)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, attention_mask_BxT=mask))
    return dict(kind=request.param, hf=hf_model, path=path, model=model, forward=lambda i, m=None: forward(state, i, m))


def _ids(batch, seq, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, seq))


def _hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(torch.tensor(ids)).logits.numpy()


def test_logits_match_transformers(checkpoint):
    ids = _ids(2, 40)
    ours = checkpoint["forward"](jnp.asarray(ids, jnp.int32))
    assert ours.dtype == jnp.float32 and ours.shape == (2, 40, VOCAB)
    np.testing.assert_allclose(ours, _hf_logits(checkpoint["hf"], ids), atol=1e-4, rtol=0)


def test_left_padding_matches_unpadded(checkpoint):
    short, long = _ids(1, 9, seed=1), _ids(1, 16, seed=2)
    batch = np.concatenate([np.concatenate([np.zeros((1, 7), int), short], axis=1), long])
    mask = (np.arange(16)[None] >= np.array([[7], [0]])).astype(np.int32)
    ours = np.asarray(checkpoint["forward"](jnp.asarray(batch, jnp.int32), jnp.asarray(mask)))
    np.testing.assert_allclose(ours[0, 7:], _hf_logits(checkpoint["hf"], short)[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[1], _hf_logits(checkpoint["hf"], long)[0], atol=1e-4, rtol=0)


def test_greedy_continuation_matches_generate(checkpoint):
    prompt, new = _ids(2, 8, seed=3), 32
    with torch.no_grad():
        expected = checkpoint["hf"].generate(
            torch.tensor(prompt), do_sample=False, max_new_tokens=new, min_new_tokens=new
        )[:, 8:].numpy()
    model = checkpoint["model"]
    graphdef, state = nnx.split(model)
    decode = jax.jit(lambda s, ids, pos, cache: nnx.merge(graphdef, s).decode(ids, pos, cache))
    cache = model.init_cache(batch=2, max_len=8 + new)
    logits, cache = decode(state, jnp.asarray(prompt, jnp.int32), jnp.broadcast_to(jnp.arange(8), (2, 8)), cache)
    tokens = [jnp.argmax(logits[:, -1], axis=-1)]
    for step in range(new - 1):
        logits, cache = decode(state, tokens[-1][:, None], jnp.full((2, 1), 8 + step), cache)
        tokens.append(jnp.argmax(logits[:, -1], axis=-1))
    np.testing.assert_array_equal(np.stack(tokens, axis=1), expected)


def test_to_hf_round_trip(checkpoint, tmp_path):
    to_hf(checkpoint["model"], tmp_path)
    cls = type(checkpoint["hf"])
    reloaded = cls.from_pretrained(tmp_path).eval()
    ids = _ids(2, 24, seed=4)
    np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(checkpoint["hf"], ids), atol=1e-6, rtol=0)


def test_sharded_checkpoint_index(checkpoint, tmp_path):
    checkpoint["hf"].save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = from_hf(tmp_path)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(checkpoint["model"]))):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_round_trip(checkpoint, tmp_path):
    model = checkpoint["model"]
    cfg = model.config.replace(dtype="bfloat16", param_dtype="bfloat16")
    bf16_state = jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model))
    to_hf(nnx.merge(nnx.graphdef(abstract_model(cfg)), bf16_state), tmp_path)
    assert SafetensorsFile(tmp_path / "model.safetensors").get("model.norm.weight").dtype == jnp.bfloat16
    reloaded = from_hf(tmp_path, dtype="bfloat16")
    for a, b in zip(jax.tree.leaves(nnx.state(reloaded)), jax.tree.leaves(bf16_state)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(a, b)
    hf = type(checkpoint["hf"]).from_pretrained(tmp_path)
    assert next(hf.parameters()).dtype == torch.bfloat16


def test_random_preset_exports_to_transformers(tmp_path):
    model = from_preset("tiny", n_layers=2, seed=1)
    to_hf(model, tmp_path, dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(hf, transformers.LlamaForCausalLM)
    ids = _ids(2, 12, seed=5) % model.config.vocab_size
    graphdef, state = nnx.split(model)
    ours = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(ours, _hf_logits(hf, ids), atol=1e-4, rtol=0)


# -- bad inputs name the file and the tensor ----------------------------------------------


@pytest.fixture
def broken(tmp_path):
    """A fresh Llama checkpoint directory for a test to damage."""
    _hf_model("llama").save_pretrained(tmp_path)
    return tmp_path


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def test_missing_directory_or_weights(broken, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf(tmp_path_factory.mktemp("empty"))
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_hf(broken)


def test_unsupported_architecture(broken):
    _edit_config(broken, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        from_hf(broken)


def test_shape_mismatch_names_file_and_tensor(broken):
    _edit_config(broken, intermediate_size=96)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.\w+_proj\.weight in .*model\.safetensors"):
        from_hf(broken)


def test_missing_tensor_is_named(broken):
    path = broken / "model.safetensors"
    reader = SafetensorsFile(path)
    arrays = {name: np.array(reader.get(name)) for name in reader.keys()}
    del reader
    missing = "model.layers.1.mlp.up_proj.weight"
    kept = [(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items() if n != missing]
    write_safetensors(path, kept)
    with pytest.raises(KeyError, match=missing):
        from_hf(broken)
