"""Host <-> device transfers that hold in a multi-process (multi-controller) job as well.

In a job of several processes every process runs the same host-side control: the prompt
order, the sampling seeds and the mini-batch order all derive from the config and the step,
and rewards are broadcast from process 0 (`same_on_all`), so the host arrays of a step are
identical everywhere. A process then sees only its own devices' shards of a global array:

- host -> device (`put`, `put_rows`, `put_replicated`): each process builds its addressable
  shards from its identical copy (`jax.make_array_from_callback`), with no collective;
- device -> host (`get`): a sharded global array is all-gathered (`process_allgather`), a
  replicated or fully addressable one is read directly.

Every `get` of a sharded array is a collective, so all processes must call it in the same
order -- which the shared host logic guarantees. In a one-process run these are the plain
`jax.device_put` / `jax.device_get`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, Sharding

from rlx import mesh as rmesh


def multi_process() -> bool:
    return jax.process_count() > 1


def _put_leaf(x, sharding: Sharding):
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _put_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: a reshard on the same devices
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)` of host data that is identical on every process."""
    if isinstance(shardings, Sharding):
        return jax.tree.map(lambda x: _put_leaf(x, shardings), tree)
    return jax.tree.map(_put_leaf, tree, shardings)


def row_sharding(mesh: Mesh, x) -> Sharding:
    """Leading axis over the mesh's batch axes where it divides, the rest replicated."""
    shape = np.shape(x)
    return rmesh.named_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1), shape)


def put_rows(tree: Any, mesh: Mesh) -> Any:
    """Batch-major host arrays onto `mesh`, rows split over its batch axes."""
    return jax.tree.map(lambda x: _put_leaf(x, row_sharding(mesh, x)), tree)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return put(tree, rmesh.replicated(mesh))


def _get_leaf(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def get(tree: Any) -> Any:
    """The whole value of every array as NumPy, on every process (`jax.device_get` otherwise)."""
    return jax.tree.map(_get_leaf, tree)


def transfer(tree: Any, shardings: Any) -> Any:
    """Arrays to other shardings, e.g. actor weights to the engine's mesh.

    One process: `jax.device_put` (device to device). Several processes: the same when source
    and target span the same devices; between different device sets, multi-controller JAX
    offers no direct copy on every platform, so the values go through the host.
    """
    if not multi_process():
        return jax.device_put(tree, shardings)

    def leaf(x, s):
        if isinstance(x, jax.Array) and x.sharding.device_set == s.device_set:
            return jax.device_put(x, s)
        return _put_leaf(_get_leaf(x), s)

    return jax.tree.map(leaf, tree, shardings)


def gather_host(x: np.ndarray) -> np.ndarray:
    """Every process's equally shaped host array, stacked in process order: [P, ...]."""
    if not multi_process():
        return np.asarray(x)[None]
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=False))


def same_on_all(tree: Any) -> Any:
    """Process 0's value of a host pytree on every process (identity in a one-process run).

    For host results that could differ between processes -- a verifier that times out on one
    host and not another -- so that every process goes on with the same batch.
    """
    if not multi_process():
        return tree
    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def chief_first(fn: Callable[[], Any], name: str) -> Any:
    """Run `fn` on process 0, then on the others once it is done (for caches on a shared disk:
    a tokenizer trained once, then loaded by everyone)."""
    if not multi_process():
        return fn()
    if jax.process_index() == 0:
        out = fn()
        multihost_utils.sync_global_devices(name)
        return out
    multihost_utils.sync_global_devices(name)
    return fn()


def take_rows(tree: Any, rows, mesh: Mesh) -> Any:
    """`x[rows]` of every (batch-major) device array, rows split over `mesh`'s batch axes:
    a mini-batch drawn on the devices, in the same layout whatever the process count."""
    return _take_rows(tree, put_replicated(np.asarray(rows, np.int32), mesh), mesh)


@functools.partial(jax.jit, static_argnums=(2,))
def _take_rows(tree, idx, mesh):
    def take(x):
        out = x[idx]
        return jax.lax.with_sharding_constraint(out, row_sharding(mesh, out))

    return jax.tree.map(take, tree)
