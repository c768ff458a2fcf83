"""Where each role of an RL job lives: the actor, reference, PRM and engine meshes.

`mesh.roles=colocated` (the default): every role on the actor's mesh; the engine decodes from
the actor's own arrays and weight sync moves no data. `mesh.roles=disaggregated`: the actor
takes the first devices (its mesh is data x fsdp x tensor; an axis of -1 takes what the other
roles leave), then each role with `mesh.<role>.devices > 0` takes the next consecutive
devices, in the order engine, reference, PRM; a role with devices=0 shares the actor's mesh.
Weights cross meshes with `rlx.hostio.transfer` (`jax.device_put` to the target shardings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rlx import hostio
from rlx import mesh as rmesh
from rlx.config import ConfigError, MeshSection
from rlx.engine.layout import mesh_of

ROLES = ("engine", "reference", "prm")


@dataclass(frozen=True)
class RoleMeshes:
    actor: Mesh
    engine: Mesh
    reference: Mesh
    prm: Mesh

    @classmethod
    def colocated(cls, mesh: Mesh) -> "RoleMeshes":
        return cls(actor=mesh, engine=mesh, reference=mesh, prm=mesh)

    @property
    def is_colocated(self) -> bool:
        return all(getattr(self, r) is self.actor for r in ROLES)

    def describe(self) -> str:
        parts = []
        for role in ("actor", *ROLES):
            m = getattr(self, role)
            ids = sorted(d.id for d in m.devices.flat)
            shape = "x".join(f"{k}={v}" for k, v in m.shape.items() if v > 1) or "1 device"
            parts.append(f"{role}: devices {ids[0]}-{ids[-1]} ({shape})")
        return "; ".join(parts)


def _mesh(section, devices: Sequence[Any], where: str) -> Mesh:
    try:
        return rmesh.make_mesh(section.data, section.fsdp, section.tensor, devices=devices)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def actor_device_count(section: MeshSection, available: int) -> int:
    """Devices of the actor's mesh: the product of its axes, or (with an axis of -1) all the
    devices the other roles leave."""
    own = sum(getattr(section, r).devices for r in ROLES) if section.roles == "disaggregated" else 0
    sizes = (section.data, section.fsdp, section.tensor)
    if -1 not in sizes:
        return math.prod(sizes)
    return available - own


def build_role_meshes(section: MeshSection, devices: Sequence[Any] | None = None) -> RoleMeshes:
    """The four role meshes from the config; ConfigError (naming the fix) when they do not fit."""
    devices = list(jax.devices() if devices is None else devices)
    if section.roles != "disaggregated":
        return RoleMeshes.colocated(_mesh(section, devices, "mesh"))
    wanted = {r: getattr(section, r).devices for r in ROLES if getattr(section, r).devices}
    n_actor = actor_device_count(section, len(devices))
    total = n_actor + sum(wanted.values())
    if n_actor < 1 or total > len(devices):
        split = " + ".join(f"mesh.{r}.devices={n}" for r, n in wanted.items()) or "no other role"
        raise ConfigError(f"mesh.roles=disaggregated needs {max(n_actor, 0)} actor devices "
                          f"(mesh.data*fsdp*tensor) + {split} = {total} devices, but there are "
                          f"{len(devices)}; lower the role device counts or the actor's mesh axes")
    actor = _mesh(section, devices[:n_actor], "mesh (the actor's devices)")
    meshes, start = {}, n_actor
    for role in ROLES:
        n = wanted.get(role, 0)
        if n:
            meshes[role] = _mesh(getattr(section, role), devices[start:start + n], f"mesh.{role}")
            start += n
        else:
            meshes[role] = actor
    return RoleMeshes(actor=actor, **meshes)


def copy_to(params: Any, mesh: Mesh) -> Any:
    """A separate copy of `params` on `mesh`, sharded by their logical axes (a plain copy when
    they already live there: the update donates the actor's arrays, so roles never share them)."""
    if _on(params, mesh):
        return jax.tree.map(jnp.copy, params)
    return hostio.transfer(params, rmesh.state_shardings(params, mesh))


def _on(params: Any, mesh: Mesh) -> bool:
    return all(getattr(x, "sharding", None) is not None and getattr(x.sharding, "mesh", None) == mesh
               for x in jax.tree.leaves(params))


def role_meshes(section: MeshSection, params: Any) -> RoleMeshes:
    """The trainer's meshes: colocated, every role on the mesh the model's params live on (as
    built by `rlx.build`); disaggregated, the layout `build_role_meshes` derives from the config."""
    if section.roles != "disaggregated":
        return RoleMeshes.colocated(mesh_of(params))
    return build_role_meshes(section)
