"""Every preset has the published parameter count; configs fail loudly and translate to HF."""

import jax
import pytest
from flax import nnx

from rlx.models import (
    ModelConfig,
    abstract_model,
    config_from_hf,
    config_to_hf,
    load_config,
    param_count,
    preset_names,
)

# Published sizes (HF model cards / safetensors metadata), tied embeddings counted once.
PUBLISHED = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-math-7b": 7_615_616_512,
    "qwen2.5-32b": 32_763_876_352,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 8_030_261_248,
}

# Verbatim fields of the published config.json files.
HF_QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 896,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip
HF_LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128256,
}  # fmt: skip


def test_every_full_size_preset_is_listed():
    assert set(PUBLISHED) | {"tiny", "small"} == set(preset_names())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
    model = abstract_model(load_config(name))  # jax.eval_shape underneath: nothing is allocated
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model)))
    assert param_count(model) == PUBLISHED[name]


def test_small_shapes():
    tiny, small = load_config("tiny"), load_config("small")
    assert (tiny.n_layers, tiny.d_model, tiny.n_heads, tiny.n_kv_heads, tiny.mlp_dim, tiny.vocab_size) == (
        4, 256, 4, 2, 1024, 512,
    )  # fmt: skip
    assert (small.n_layers, small.d_model, small.n_heads, small.n_kv_heads, small.mlp_dim, small.vocab_size) == (
        8, 512, 8, 2, 2048, 32000,
    )  # fmt: skip


def test_presets_equal_published_hf_configs():
    assert config_from_hf(HF_QWEN25_05B) == load_config("qwen2.5-0.5b")
    assert config_from_hf(HF_LLAMA31_8B) == load_config("llama-3.1-8b")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_hf_config_round_trip(name):
    cfg = load_config(name)
    assert config_from_hf(config_to_hf(cfg)) == cfg


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="available presets: .*qwen2.5-0.5b"):
        load_config("qwen-0.5b")
    with pytest.raises(ValueError, match=r"unknown model config keys \['hidden_size'\].*valid keys"):
        load_config("tiny", hidden_size=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("d_model: 64\nn_layer: 2\n")
    with pytest.raises(ValueError, match=r"\['n_layer'\] in .*bad.yaml"):
        load_config(bad)
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(vocab_size=8, d_model=64, n_layers=1, n_heads=4, n_kv_heads=3, mlp_dim=8)
    with pytest.raises(ValueError, match="remat='some'"):
        load_config("tiny", remat="some")
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        config_from_hf({**HF_LLAMA31_8B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="use_sliding_window"):
        config_from_hf({**HF_QWEN25_05B, "use_sliding_window": True})
