"""The narrow model config: architecture, dtypes, remat and scan -- nothing about RL."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parents[2] / "models"
FAMILIES = ("llama", "qwen2")
DTYPES = ("float32", "bfloat16")
# none: keep every activation; full: keep only layer inputs; dots: keep matmul outputs;
# dots_no_batch: keep matmul outputs without batch dims (weights-like), recompute the rest.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Full-sequence attention: auto = splash on TPU, cudnn on GPU where it takes the shapes, else
# xla; xla = jax.nn.dot_product_attention's XLA path, which still forms the [T, T] scores.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 RoPE frequency scaling (`rope_type: llama3` in HF configs)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    type: str = "llama3"

    def __post_init__(self):
        if self.type != "llama3":
            raise ValueError(f"rope_scaling type {self.type!r} is not supported; only 'llama3' is")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer (Llama 3.x / Qwen2.x family)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_dim: int
    head_dim: int | None = None  # None: d_model // n_heads
    family: str = "llama"  # which HF architecture to read/write: llama | qwen2
    qkv_bias: bool = False
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_eps: float = 1e-6
    max_seq_len: int = 4096  # HF max_position_embeddings; informational, nothing is sized by it
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype
    remat: str = "none"
    scan_layers: bool = True
    attention: str = "auto"
    # Sequence positions per chunk when log-probs / entropy are taken from the hidden states:
    # only one chunk's float32 [B, chunk, V] logits is alive at a time. 0 = the whole sequence.
    logits_chunk: int = 256

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.logits_chunk < 0:
            raise ValueError(f"logits_chunk={self.logits_chunk} must be >= 0 (0 = the whole sequence at once)")
        choices = {"family": FAMILIES, "dtype": DTYPES, "param_dtype": DTYPES, "remat": REMAT_POLICIES,
                   "attention": ATTENTION_IMPLS}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r} is not one of {allowed}")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **_checked(changes, "overrides"))


def _checked(values: dict[str, Any], where: str) -> dict[str, Any]:
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown} in {where}; valid keys: {valid}")
    return values


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, **overrides: Any) -> ModelConfig:
    """A ModelConfig from a preset name (`models/<name>.yaml`) or a path to a yaml file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"no model preset {str(name_or_path)!r}: not a file and not in {PRESET_DIR}; "
                f"available presets: {preset_names()}"
            )
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of model config keys, got {type(values).__name__}")
    values = {**_checked(values, str(path)), **_checked(overrides, "overrides")}
    try:
        return ModelConfig(**values)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from e
