"""The mesh helpers and the logical-axis rule table."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from rlx.mesh import (
    MESH_AXES,
    logical_to_spec,
    make_mesh,
    shard_model_state,
    single_device_mesh,
    state_shardings,
    with_logical_constraint,
)
from rlx.models import abstract_model, load_config


def test_rules_for_parameters_and_activations():
    assert logical_to_spec(("layers", "embed", "heads", "head_dim")) == PartitionSpec(None, "fsdp", "tensor", None)
    assert logical_to_spec(("vocab", "embed")) == PartitionSpec("tensor", "fsdp")
    assert logical_to_spec(("mlp", "embed")) == PartitionSpec("tensor", "fsdp")
    # An activation's batch takes fsdp, so its embed axis stays whole.
    assert logical_to_spec(("batch", "seq", "embed")) == PartitionSpec(("data", "fsdp"), None, None)
    assert logical_to_spec(("batch", "seq", "vocab")) == PartitionSpec(("data", "fsdp"), None, "tensor")
    assert logical_to_spec(("layers", "batch", "cache_seq", "kv_heads", "head_dim")) == PartitionSpec(
        None, ("data", "fsdp"), None, "tensor", None
    )
    assert logical_to_spec((None, "embed")) == PartitionSpec(None, "fsdp")
    with pytest.raises(KeyError, match="unknown logical axis 'hidden'"):
        logical_to_spec(("hidden",))


def test_axis_that_does_not_divide_is_replicated():
    mesh = AbstractMesh((1, 2, 4), MESH_AXES)
    # 2 KV heads cannot be split 4 ways; 14 query heads neither; 896 over fsdp=2 can.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (896, 2, 64), mesh) == PartitionSpec("fsdp", None, None)
    assert logical_to_spec(("embed", "heads"), (896, 16), mesh) == PartitionSpec("fsdp", "tensor")
    # batch 2 fits data*fsdp only partly: data (1) and fsdp (2) both divide 2.
    assert logical_to_spec(("batch", "seq"), (2, 8), mesh) == PartitionSpec(("data", "fsdp"), None)
    assert logical_to_spec(("batch", "seq"), (3, 8), mesh) == PartitionSpec("data", None)


def test_make_mesh_sizes():
    n = jax.device_count()
    assert dict(make_mesh(fsdp=-1).shape) == {"data": 1, "fsdp": n, "tensor": 1}
    with pytest.raises(ValueError, match=rf"= {2 * n} but there are {n} devices"):
        make_mesh(data=2 * n)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        make_mesh(data=-1, fsdp=-1)
    assert dict(single_device_mesh().shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_constraint_is_a_no_op_without_a_mesh():
    x = jnp.ones((2, 3, 4))
    assert with_logical_constraint(x, ("batch", "seq", "embed")) is x
    with jax.set_mesh(single_device_mesh()):
        y = jax.jit(lambda a: with_logical_constraint(a * 2, ("batch", "seq", "embed")))(x)
    assert (y == 2).all()


def test_state_shardings_follow_parameter_metadata():
    from flax import nnx

    mesh = single_device_mesh()
    _, abstract_state = nnx.split(abstract_model(load_config("tiny", n_layers=1)))
    shardings = state_shardings(abstract_state, mesh)
    flat = dict(nnx.to_flat_state(shardings))
    assert isinstance(flat[("layers", "wq")].get_value(), NamedSharding)
    assert flat[("layers", "wq")].get_value().spec == PartitionSpec(None, "fsdp", "tensor", None)
    concrete = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_state)
    placed = shard_model_state(concrete, mesh)
    assert all(isinstance(x.sharding, NamedSharding) for x in jax.tree.leaves(placed))
