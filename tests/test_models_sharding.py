"""Sharded loading and init on 8 emulated CPU devices give the single-device numbers.

The device count is fixed when JAX starts, so the 8-device half runs in a child process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from rlx.mesh import make_mesh, named_sharding, single_device_mesh
from rlx.models import KV_CACHE_AXES, from_hf, from_preset

assert jax.device_count() == 8, jax.devices()
rng = np.random.RandomState(0)
ids = rng.randint(0, 256, (8, 16)).astype(np.int32)
mask = (np.arange(16)[None] >= rng.randint(0, 6, (8, 1))).astype(np.int32)  # left padding

def padded_spec(x):  # PartitionSpec drops trailing Nones
    spec = list(x.sharding.spec)
    return spec + [None] * (x.ndim - len(spec))

def run(model, mesh, with_decode=True):
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh):
        forward = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, attention_mask_BxT=m))
        decode = jax.jit(lambda s, i, p, c: nnx.merge(graphdef, s).decode(i, p, c))
        batch = named_sharding(mesh, ("batch", "seq"))
        logits = forward(state, jax.device_put(ids, batch), jax.device_put(mask, batch))
        if not with_decode:
            return np.asarray(logits), None, None
        cache = jax.jit(lambda: model.init_cache(8, 16), out_shardings=named_sharding(mesh, KV_CACHE_AXES))()
        positions = jnp.broadcast_to(jnp.arange(16), (8, 16))
        decoded, cache = decode(state, jax.device_put(ids, batch), positions, cache)
    return np.asarray(logits), np.asarray(decoded), padded_spec(cache.k)

results = {}
for path in sys.argv[1:]:
    ref_logits, ref_decoded, _ = run(from_hf(path), single_device_mesh())
    for shape in [(1, 4, 2), (2, 2, 2)]:
        mesh = make_mesh(*shape)
        model = from_hf(path, mesh=mesh)
        # Decode (and its cache sharding) on the mesh that uses all three axes.
        logits, decoded, cache_spec = run(model, mesh, with_decode=shape == (2, 2, 2))
        wq = model.layers.wq[...]
        results[f"{path} {shape}"] = dict(
            logits=float(np.abs(logits - ref_logits).max()),
            decoded=None if decoded is None else float(np.abs(decoded - ref_decoded).max()),
            wq_spec=padded_spec(wq),
            wq_shard=list(wq.addressable_shards[0].data.shape),
            cache_spec=cache_spec,
        )

single = from_preset("tiny", n_layers=2)
sharded = from_preset("tiny", n_layers=2, mesh=make_mesh(fsdp=4, tensor=-1))
pairs = zip(jax.tree.leaves(nnx.state(single)), jax.tree.leaves(nnx.state(sharded)))
same = all(np.array_equal(a, b) for a, b in pairs)
results["init"] = dict(same=same, w_up_shard=list(sharded.layers.w_up[...].addressable_shards[0].data.shape))
print("RESULTS", json.dumps(results))
"""


def _save(model_cls, config_cls, path, **extra):
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, **extra,
    )  # fmt: skip
    model_cls(config).save_pretrained(path)
    return str(path)


def test_sharded_matches_single_device(tmp_path):
    qwen = _save(transformers.Qwen2ForCausalLM, transformers.Qwen2Config, tmp_path / "qwen", tie_word_embeddings=True)
    llama = _save(transformers.LlamaForCausalLM, transformers.LlamaConfig, tmp_path / "llama")
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, qwen, llama], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    for path in (qwen, llama):
        for shape in ["(1, 4, 2)", "(2, 2, 2)"]:
            r = results[f"{path} {shape}"]
            # Only the reduction order differs (logits are O(10)).
            assert r["logits"] <= 5e-5, r
            # wq [layers, embed, heads, head_dim]: embed over fsdp, heads over tensor.
            assert r["wq_spec"] == [None, "fsdp", "tensor", None], r
            fsdp = 4 if shape == "(1, 4, 2)" else 2
            assert r["wq_shard"] == [2, 64 // fsdp, 2, 16], r
            if shape == "(2, 2, 2)":
                assert r["decoded"] <= 5e-5, r
                assert r["cache_spec"] == [None, ["data", "fsdp"], None, "tensor", None], r
    assert results["init"] == dict(same=True, w_up_shard=[2, 64, 512]), results["init"]
