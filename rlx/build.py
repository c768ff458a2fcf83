"""Build the pieces a job needs from its config: model, tokenizer, mesh.

Shared by train, eval and serve so that "a preset, a Hugging Face directory or an rlx run's
exported model" means the same thing everywhere.
"""

from __future__ import annotations

from pathlib import Path

from jax.sharding import Mesh

from rlx.config import ConfigError, MeshSection, ModelSection, TokenizerSection


def build_mesh(section: MeshSection) -> Mesh:
    """The actor's mesh: all devices when the roles are colocated, the first ones otherwise
    (`rlx.train.placement` lays out the other roles' meshes)."""
    from rlx.train.placement import build_role_meshes

    return build_role_meshes(section).actor


def build_model(section: ModelSection, *, seed: int = 0, mesh: Mesh | None = None, **overrides):
    """A model from `model.hf_path` (Hugging Face format) when set, else a random `model.preset`."""
    from rlx import models

    extra = {**section.overrides, **overrides}
    if section.hf_path:
        path = Path(section.hf_path)
        if not (path / "config.json").exists():
            raise ConfigError(f"model.hf_path={section.hf_path} has no config.json; point it at a "
                              f"Hugging Face model directory (or a run's final/ directory)")
        return models.from_hf(path, dtype=section.dtype, mesh=mesh, **model_options(section))
    if section.preset not in models.preset_names() and not Path(section.preset).exists():
        raise ConfigError(f"model.preset='{section.preset}' is not a preset; choose one of "
                          f"{', '.join(models.preset_names())} or give a path to a preset yaml")
    return models.from_preset(section.preset, seed=seed, mesh=mesh, dtype=section.dtype,
                              **{**model_options(section), **extra})


def model_options(section: ModelSection) -> dict:
    """The model section's settings besides the architecture, for every way a model is built
    (preset, Hugging Face directory, the cached SFT warm start)."""
    return {"param_dtype": section.param_dtype, "remat": section.remat, "attention": section.attention,
            "logits_chunk": section.logits_chunk}


def build_tokenizer(section: TokenizerSection, model_section: ModelSection | None = None):
    """`tokenizer.path`, else a tokenizer saved beside `model.hf_path`."""
    from rlx.models.tokenizer import Tokenizer

    path = section.path or (model_section.hf_path if model_section else "")
    if not path:
        raise ConfigError("no tokenizer: set tokenizer.path (a sentencepiece .model, a "
                          "tokenizer.json or a directory holding one) or model.hf_path")
    try:
        return Tokenizer.load(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"tokenizer: {e}") from None
