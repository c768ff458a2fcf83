"""Hugging Face Llama / Qwen2 checkpoints <-> rlx Transformer.

`from_hf` builds the model abstractly, then creates each parameter with
`jax.make_array_from_callback`: every device's shard is read straight from the memory-mapped
safetensors files, so no device (and no host buffer) ever holds the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlx.mesh import single_device_mesh, state_shardings
from rlx.models.config import ModelConfig, RopeScaling
from rlx.models.presets import abstract_model
from rlx.models.safetensors_file import SafetensorsFile, write_safetensors
from rlx.models.transformer import Transformer

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
_ARCH_OF_FAMILY = {family: arch for arch, family in ARCHITECTURES.items()}

# Per-layer tensors: rlx name -> (HF name under model.layers.{i}., number of input axes).
# HF stores Linear weights as [out, in]; rlx keeps [in..., out...] with heads split out, so
# a weight converts as hf.T.reshape(rlx_shape), and back as rlx.reshape(in, out).T.
# 0 input axes marks a vector (norm scale, bias), which only reshapes.
_LAYER_TENSORS = {
    "attn_norm": ("input_layernorm.weight", 0),
    "wq": ("self_attn.q_proj.weight", 1),
    "wk": ("self_attn.k_proj.weight", 1),
    "wv": ("self_attn.v_proj.weight", 1),
    "bq": ("self_attn.q_proj.bias", 0),
    "bk": ("self_attn.k_proj.bias", 0),
    "bv": ("self_attn.v_proj.bias", 0),
    "wo": ("self_attn.o_proj.weight", 2),
    "mlp_norm": ("post_attention_layernorm.weight", 0),
    "w_gate": ("mlp.gate_proj.weight", 1),
    "w_up": ("mlp.up_proj.weight", 1),
    "w_down": ("mlp.down_proj.weight", 1),
}
# Top-level tensors; `None` input axes = same layout in both (the [vocab, embed] table).
_TOP_TENSORS = {
    ("embed",): ("model.embed_tokens.weight", None),
    ("final_norm",): ("model.norm.weight", 0),
    ("lm_head",): ("lm_head.weight", 1),
}


# -- config.json --------------------------------------------------------------------------


def config_from_hf(hf: dict[str, Any], *, source: str = "config.json", **overrides: Any) -> ModelConfig:
    """Translate an HF Llama / Qwen2 config dict (transformers 4.x or 5.x layout)."""
    archs = hf.get("architectures") or []
    family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if family is None and not archs:
        family = hf.get("model_type") if hf.get("model_type") in _ARCH_OF_FAMILY else None
    if family is None:
        raise ValueError(
            f"{source}: unsupported architecture {archs or hf.get('model_type')}; "
            f"rlx reads {sorted(ARCHITECTURES)} checkpoints"
        )
    unsupported = {
        "hidden_act": hf.get("hidden_act", "silu") != "silu",
        "attention_bias": family == "llama" and hf.get("attention_bias", False),
        "mlp_bias": hf.get("mlp_bias", False),
        "use_sliding_window": hf.get("use_sliding_window", False),
    }
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(f"{source}: {key}={hf.get(key)!r} is not supported by rlx's Llama/Qwen2 model")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = RopeScaling(**{k: rope[k] for k in keys})
    elif rope_type == "default":
        scaling = None
    else:
        raise ValueError(f"{source}: rope type {rope_type!r} is not supported; rlx supports 'default' and 'llama3'")
    values = dict(
        family=family,
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        head_dim=hf.get("head_dim"),
        qkv_bias=family == "qwen2",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rope_scaling=scaling,
        rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(hf.get("max_position_embeddings", 4096)),
    )
    return ModelConfig(**{**values, **overrides})


def config_to_hf(cfg: ModelConfig, dtype: str | None = None) -> dict[str, Any]:
    """An HF config dict that transformers 4.x and 5.x both load."""
    if cfg.qkv_bias != (cfg.family == "qwen2"):
        raise ValueError(f"qkv_bias={cfg.qkv_bias} cannot be written as an HF {cfg.family} checkpoint")
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    rope_scaling = None
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope_scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
        rope_parameters = {**rope_scaling, "rope_theta": cfg.rope_theta}
    hf = {
        "architectures": [_ARCH_OF_FAMILY[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": dtype or cfg.param_dtype,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if cfg.family == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    return hf


# -- tensor layout ------------------------------------------------------------------------


def _hf_shape(shape: tuple[int, ...], in_axes: int | None) -> tuple[int, ...]:
    if in_axes is None:
        return shape
    if in_axes == 0:
        return (int(np.prod(shape)),)
    return (int(np.prod(shape[in_axes:])), int(np.prod(shape[:in_axes])))


def _to_rlx(hf_array: np.ndarray, shape: tuple[int, ...], in_axes: int | None) -> np.ndarray:
    if in_axes is None:
        return hf_array
    if in_axes == 0:
        return hf_array.reshape(shape)
    return hf_array.T.reshape(shape)  # a view: splitting one axis of a transpose needs no copy


def _to_hf(array: np.ndarray, in_axes: int | None) -> np.ndarray:
    if in_axes is None:
        return array
    if in_axes == 0:
        return array.reshape(-1)
    split = int(np.prod(array.shape[:in_axes]))
    return array.reshape(split, -1).T


def _tensor_plan(cfg: ModelConfig, state: nnx.State) -> dict[tuple, tuple[list[str], int | None, bool]]:
    """rlx param path -> (HF tensor names, input axes, stacked over layers)."""
    plan = {}
    for path, _ in nnx.to_flat_state(state):
        path = tuple(str(p) for p in path)
        if path[0] == "layers":
            template, in_axes = _LAYER_TENSORS[path[1]]
            plan[path] = ([f"model.layers.{i}.{template}" for i in range(cfg.n_layers)], in_axes, True)
        else:
            name, in_axes = _TOP_TENSORS[path]
            plan[path] = ([name], in_axes, False)
    return plan


# -- reading ------------------------------------------------------------------------------


class _Checkpoint:
    """The safetensors files of one HF checkpoint directory, single-file or sharded."""

    def __init__(self, path: Path):
        index_path = path / "model.safetensors.index.json"
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            for f in files:
                if not (path / f).is_file():
                    raise FileNotFoundError(f"{index_path} lists {f}, which does not exist in {path}")
        elif (path / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(
                    f"no weights in {path}: expected model.safetensors or model.safetensors.index.json "
                    "(PyTorch .bin checkpoints are not read; re-save with safe_serialization=True)"
                )
        self.files = {f: SafetensorsFile(path / f) for f in files}
        self.where = {name: f for f, reader in self.files.items() for name in reader.keys()}

    def shape(self, name: str) -> tuple[int, ...]:
        return self.files[self.where[name]].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self.files[self.where[name]].get(name)

    def describe(self, name: str) -> str:
        return f"tensor {name} in {self.files[self.where[name]].path}"


def _check_tensors(ckpt: _Checkpoint, plan: dict, state: nnx.State, cfg: ModelConfig, path: Path,
                   ignore_prefixes: tuple[str, ...] = ()) -> None:
    shapes = {tuple(str(p) for p in k): v.shape for k, v in nnx.to_flat_state(state)}
    expected = set()
    for param_path, (names, in_axes, stacked) in plan.items():
        shape = shapes[param_path][1:] if stacked else shapes[param_path]
        for name in names:
            expected.add(name)
            if name not in ckpt.where:
                raise KeyError(
                    f"{path}: missing tensor {name} (needed for rlx parameter {'.'.join(param_path)}); "
                    f"the checkpoint's files are {sorted(ckpt.files)}"
                )
            want = _hf_shape(tuple(shape), in_axes)
            if ckpt.shape(name) != want:
                raise ValueError(
                    f"{ckpt.describe(name)} has shape {ckpt.shape(name)} but config.json implies {want}; "
                    "the weights do not match the config"
                )
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    unexpected = sorted(n for n in set(ckpt.where) - expected - ignorable
                        if not n.endswith("rotary_emb.inv_freq") and not n.startswith(ignore_prefixes))
    if unexpected:
        raise ValueError(
            f"{path}: {len(unexpected)} tensors are not part of a {cfg.family} model, e.g. {unexpected[:5]}; "
            "is config.json from the same checkpoint?"
        )


def _load_param(ckpt: _Checkpoint, names: list[str], in_axes, stacked: bool, shape, sharding, dtype) -> jax.Array:
    np_dtype = jnp.dtype(dtype)
    inner_shape = tuple(shape[1:]) if stacked else tuple(shape)

    def read(index):
        index = tuple(index) if index is not None else tuple(slice(None) for _ in shape)
        if not stacked:
            return np.asarray(_to_rlx(ckpt.get(names[0]), inner_shape, in_axes)[index], dtype=np_dtype)
        layers = range(*index[0].indices(shape[0]))
        pieces = [_to_rlx(ckpt.get(names[i]), inner_shape, in_axes)[index[1:]] for i in layers]
        return np.stack([np.asarray(p, dtype=np_dtype) for p in pieces])

    return jax.make_array_from_callback(tuple(shape), sharding, read, dtype=np_dtype)


def from_hf(
    path: str | Path,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    mesh: Mesh | None = None,
    hf_config: dict[str, Any] | None = None,
    ignore_prefixes: tuple[str, ...] = (),
    **overrides: Any,
) -> Transformer:
    """Load an HF Llama / Qwen2 checkpoint directory as a Transformer sharded on `mesh`.

    `dtype` is the compute dtype and, unless `param_dtype` is given, the storage dtype too;
    `overrides` set other ModelConfig fields (e.g. remat="full"). `hf_config` replaces the
    directory's config.json and tensors starting with `ignore_prefixes` are left unread (a
    reward model's head, read by its own loader).
    """
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist; from_hf needs an HF checkpoint directory")
    hf_config = hf_config if hf_config is not None else json.loads(config_path.read_text())
    cfg = config_from_hf(
        hf_config, source=str(config_path), dtype=dtype, param_dtype=param_dtype or dtype, **overrides
    )
    ckpt = _Checkpoint(path)
    mesh = mesh if mesh is not None else single_device_mesh()
    graphdef, abstract_state = nnx.split(abstract_model(cfg))
    plan = _tensor_plan(cfg, abstract_state)
    _check_tensors(ckpt, plan, abstract_state, cfg, path, ignore_prefixes)
    shardings = nnx.to_flat_state(state_shardings(abstract_state, mesh))
    loaded = []
    for (param_path, var), (_, sharding) in zip(nnx.to_flat_state(abstract_state), shardings):
        names, in_axes, stacked = plan[tuple(str(p) for p in param_path)]
        array = _load_param(ckpt, names, in_axes, stacked, var.shape, sharding.get_value(), cfg.param_dtype)
        loaded.append((param_path, var.replace(array)))
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


# -- writing ------------------------------------------------------------------------------


def to_hf(model: Transformer, path: str | Path, *, dtype: str | None = None) -> Path:
    """Write `config.json` + `model.safetensors` that `transformers` loads; one tensor at a time.

    Arrays must be addressable from this process (single-host); `dtype` defaults to param_dtype.
    """
    cfg = model.config
    dtype = dtype or cfg.param_dtype
    np_dtype = jnp.dtype(dtype)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2) + "\n")
    state = nnx.state(model, nnx.Param)
    plan = _tensor_plan(cfg, state)
    entries = []
    for param_path, var in nnx.to_flat_state(state):
        names, in_axes, stacked = plan[tuple(str(p) for p in param_path)]
        array = var.get_value()
        inner = tuple(array.shape[1:]) if stacked else tuple(array.shape)
        for i, name in enumerate(names):

            def produce(array=array, i=i, stacked=stacked, in_axes=in_axes):
                host = np.asarray(jax.device_get(array[i] if stacked else array))
                return _to_hf(host, in_axes)

            entries.append((name, _hf_shape(inner, in_axes), np_dtype, produce))
    write_safetensors(path / "model.safetensors", sorted(entries, key=lambda e: e[0]))
    return path
