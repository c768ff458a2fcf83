"""Build models from presets: shapes first (abstract), then parameters materialised sharded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from rlx.mesh import single_device_mesh, state_shardings
from rlx.models.config import ModelConfig, load_config
from rlx.models.transformer import Transformer


def abstract_model(config: ModelConfig) -> Transformer:
    """The model with `ShapeDtypeStruct`s instead of arrays; allocates nothing."""
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def param_count(model_or_config: Transformer | ModelConfig) -> int:
    """Number of parameters (tied embeddings counted once)."""
    model = model_or_config
    if isinstance(model, ModelConfig):
        model = abstract_model(model)
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def init_model(config: ModelConfig, *, seed: int = 0, mesh: Mesh | None = None) -> Transformer:
    """Randomly initialised model whose parameters are created directly in their shardings.

    Each device only ever holds its own shards: the initialiser is jitted with out_shardings
    taken from the parameters' logical axes.
    """
    mesh = mesh if mesh is not None else single_device_mesh()
    graphdef, abstract_state = nnx.split(abstract_model(config))
    shardings = state_shardings(abstract_state, mesh)

    def make_state():
        return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))[1]

    state = jax.jit(make_state, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def from_preset(
    name: str | Path,
    *,
    seed: int = 0,
    dtype: str | None = None,
    mesh: Mesh | None = None,
    **overrides: Any,
) -> Transformer:
    """A random model from `models/<name>.yaml` (or a yaml path); `dtype` sets dtype and param_dtype.

    Any other ModelConfig field can be overridden, e.g. `n_layers=2, remat="full"`.
    """
    if dtype is not None:
        overrides = {"dtype": dtype, "param_dtype": dtype, **overrides}
    return init_model(load_config(name, **overrides), seed=seed, mesh=mesh)
