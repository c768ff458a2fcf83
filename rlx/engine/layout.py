"""Where the engine's arrays live: its mesh, its params, and the decode state's shardings.

Slots split over the mesh's batch axes and KV heads over `tensor` (rlx.mesh's logical rules),
so a decode step is data- and tensor-parallel with no collective on the cache.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding

from rlx import hostio
from rlx import mesh as rmesh

# The model contract's cache layout: [n_layers, batch, max_len, n_kv_heads, head_dim].
CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")


def mesh_of(params) -> Mesh:
    """The mesh the params already live on, or a one-device mesh."""
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return rmesh.single_device_mesh()


def place_params(params, mesh: Mesh):
    """Params on `mesh`: untouched if already there, else re-sharded by their logical axes.

    Abstract params (`jax.ShapeDtypeStruct`s, for ahead-of-time lowering) get the shardings only.
    """
    if all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            params, rmesh.state_shardings(params, mesh))
    on_mesh = all(isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh
                  for x in jax.tree.leaves(params))
    return params if on_mesh else hostio.transfer(params, rmesh.state_shardings(params, mesh))


def cache_sharding(x, mesh: Mesh) -> NamedSharding:
    """Slots over the batch axes, KV heads over `tensor` (each only where it divides)."""
    return rmesh.named_sharding(mesh, CACHE_AXES[:x.ndim], x.shape)


def decode_state_shardings(state, mesh: Mesh):
    """A pytree of shardings matching `state` (a DecodeState with `bounds` stripped)."""
    def cache(x):
        return cache_sharding(x, mesh)

    def row(x):
        return rmesh.named_sharding(mesh, ("batch",), x.shape)

    def replicated(_):
        return rmesh.replicated(mesh)

    return state.replace(
        cache=jax.tree.map(cache, state.cache),
        tokens_B=row(state.tokens_B), pos_B=row(state.pos_B), lengths_B=row(state.lengths_B),
        done_B=row(state.done_B), keys_B=row(state.keys_B),
        sampling=jax.tree.map(replicated, state.sampling),
        max_new_tokens=replicated(state.max_new_tokens))


def like(shardings, state):
    """`shardings` with the static fields of `state`, so the two pytrees share a treedef."""
    return shardings.replace(mode=state.mode, eos_ids=state.eos_ids, bounds=state.bounds)
