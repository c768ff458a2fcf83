"""Device mesh and the one table that maps logical axis names to mesh axes.

Model code names the axes of every parameter and main activation (`batch`, `embed`, `heads`,
...). Only this module knows how those names land on the mesh axes `data`, `fsdp` and `tensor`,
and it is the only module that builds a `PartitionSpec`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes, in order of preference. A mesh axis is used at most once per
# array: for activations `batch` takes `data` and `fsdp` first, so `embed` stays replicated
# there, while for parameters (which have no `batch`) `embed` is split over `fsdp`.
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "seq": (),
    "cache_seq": (),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "layers": (),
}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A `('data', 'fsdp', 'tensor')` mesh; one size may be -1 meaning "the remaining devices"."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"make_mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"make_mesh: axis sizes must be positive or -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(
                f"make_mesh: {len(devices)} devices cannot be split with data={data}, fsdp={fsdp}, "
                f"tensor={tensor} ({len(devices)} is not a multiple of {known})"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"make_mesh: data*fsdp*tensor = {sizes[0]}*{sizes[1]}*{sizes[2]} = {math.prod(sizes)} but there "
            f"are {len(devices)} devices; make the product equal {len(devices)} or set one axis to -1"
        )
    # Auto axes: GSPMD propagates shardings from the annotated parameters and constraints.
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def single_device_mesh(device: Any | None = None) -> Mesh:
    """A 1x1x1 mesh on one device, so that single-device code goes through the same path."""
    return make_mesh(1, 1, 1, devices=[device if device is not None else jax.devices()[0]])


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Any | None = None
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec via `LOGICAL_RULES`.

    With `shape` and `mesh`, a mesh axis that does not divide its dimension is dropped (that
    dimension is replicated instead), e.g. 2 KV heads on tensor=4.
    """
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_RULES:
            raise KeyError(f"unknown logical axis {name!r}; known axes: {sorted(LOGICAL_RULES)}")
        axes = []
        size = 1
        for axis in LOGICAL_RULES[name]:
            if axis in used:
                continue
            if mesh is not None:
                if axis not in mesh.shape:
                    continue
                if shape is not None and shape[i] % (size * mesh.shape[axis]):
                    continue
                size *= mesh.shape[axis]
            axes.append(axis)
            used.add(axis)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    """The NamedSharding of an array whose axes carry these logical names."""
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _variable_sharding(var: nnx.Variable, mesh: Mesh) -> NamedSharding:
    names = var.get_metadata().get("logical_axes")
    shape = var.get_value().shape
    if names is None:
        return replicated(mesh)
    if len(names) != len(shape):
        raise ValueError(f"logical axes {names} do not match a value of shape {shape}")
    return named_sharding(mesh, names, shape)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for an nnx State (or any pytree of Variables / arrays).

    Variables carry their axis names in the `logical_axes` metadata; anything without it
    (optimizer step counts, plain arrays) is replicated. The result has the state's structure,
    so it can be passed as jit `in_shardings` / `out_shardings`.
    """

    def leaf(x):
        if isinstance(x, nnx.Variable):
            return x.replace(_variable_sharding(x, mesh))
        return replicated(mesh)

    return jax.tree.map(leaf, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model_state(state: Any, mesh: Mesh) -> Any:
    """device_put every leaf of an nnx State onto its logical sharding on `mesh`."""
    return jax.device_put(state, state_shardings(state, mesh))


def current_mesh() -> Any | None:
    """The mesh set with `jax.set_mesh(mesh)`, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def current_platform() -> str:
    """The platform being compiled for: that of the mesh set with `jax.set_mesh` (a TPU slice
    compiled ahead of time on a CPU host included), else JAX's default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; a no-op unless `jax.set_mesh` is active."""
    mesh = current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, np.shape(x), mesh))
