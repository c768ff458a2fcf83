"""A process reward model with a classifier head: a Llama / Qwen2 backbone whose final hidden
state at each step's last token goes through `score` = Linear(D, D) -> ReLU -> Linear(D, 2);
PR = p(positive) - p(negative) in [-1, 1] (ALGORITHMS.md section 6).

`from_hf_prm` reads Hugging Face checkpoints in the layout of Qwen2.5-Math-PRM
(`Qwen2ForProcessRewardModel`: the backbone under `model.`, the head as `score.0.*` and
`score.2.*`, no `lm_head`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlx import hostio
from rlx.mesh import single_device_mesh
from rlx.models.hf_io import _ARCH_OF_FAMILY, _Checkpoint, from_hf
from rlx.models.transformer import Transformer, dense

HEAD_TENSORS = ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias")


class ClassifierPRM(nnx.Module):
    def __init__(self, backbone: Transformer, w1_DxD, b1_D, w2_Dx2, b2_2):
        self.backbone = backbone
        self.w1 = nnx.Param(w1_DxD)
        self.b1 = nnx.Param(b1_D)
        self.w2 = nnx.Param(w2_Dx2)
        self.b2 = nnx.Param(b2_2)

    def __call__(self, input_ids_BxT, positions_BxT=None, attention_mask_BxT=None) -> jax.Array:
        """Float32 two-class logits [B, T, 2] at every position."""
        h = self.backbone.hidden_states(input_ids_BxT, positions_BxT, attention_mask_BxT)
        dtype = self.backbone.config.dtype
        z = jax.nn.relu(dense(h, self.w1[...].astype(dtype)) + self.b1[...].astype(dtype))
        return (dense(z, self.w2[...].astype(dtype), out_dtype=jnp.float32)
                + self.b2[...].astype(jnp.float32))


def from_hf_prm(path: str | Path, *, dtype: str = "float32", mesh: Mesh | None = None) -> ClassifierPRM:
    """Load a classifier-head PRM directory (config.json + safetensors)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist; point pure.prm_path at a PRM checkpoint directory")
    hf = json.loads(config_path.read_text())
    family = hf.get("model_type")
    if family not in _ARCH_OF_FAMILY:
        raise ValueError(f"{config_path}: model_type {family!r} is not one of {sorted(_ARCH_OF_FAMILY)}")
    ckpt = _Checkpoint(path)
    missing = [n for n in HEAD_TENSORS if n not in ckpt.where]
    if missing:
        raise KeyError(f"{path} has no classifier head ({', '.join(missing)} missing); a PRM checkpoint "
                       f"stores it as score.0 (D x D) and score.2 (2 x D)")
    # The backbone is read as a causal LM without an output layer (tied: no lm_head tensor).
    backbone_cfg = {**hf, "architectures": [_ARCH_OF_FAMILY[family]], "tie_word_embeddings": True}
    mesh = mesh if mesh is not None else single_device_mesh()
    backbone = from_hf(path, dtype=dtype, mesh=mesh, hf_config=backbone_cfg, ignore_prefixes=("score.",))
    d = backbone.config.d_model
    w1, b1 = ckpt.get("score.0.weight"), ckpt.get("score.0.bias")
    w2, b2 = ckpt.get("score.2.weight"), ckpt.get("score.2.bias")
    if w1.shape != (d, d) or w2.shape != (2, d):
        raise ValueError(f"{path}: head shapes score.0 {w1.shape}, score.2 {w2.shape}; expected ({d}, {d}) "
                         f"and (2, {d}) for d_model {d}")
    # HF Linear weights are [out, in]; rlx keeps [in, out]. Replicated on the mesh (any process).
    head = hostio.put_replicated([np.asarray(x, dtype) for x in (w1.T, b1, w2.T, b2)], mesh)
    return ClassifierPRM(backbone, *head)
