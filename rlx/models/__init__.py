"""Decoder models (Llama 3.x / Qwen2.x), their presets and Hugging Face safetensors I/O."""

from rlx.models.config import ModelConfig, RopeScaling, load_config, preset_names
from rlx.models.hf_io import config_from_hf, config_to_hf, from_hf, to_hf
from rlx.models.presets import abstract_model, from_preset, init_model, param_count
from rlx.models.transformer import KV_CACHE_AXES, KVCache, Transformer

__all__ = [
    "KV_CACHE_AXES",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "abstract_model",
    "config_from_hf",
    "config_to_hf",
    "from_hf",
    "from_preset",
    "init_model",
    "load_config",
    "param_count",
    "preset_names",
    "to_hf",
]
