"""One RL update step on 8 emulated CPU devices equals the single-device step.

Meshes (data=8), (fsdp=8), (fsdp=4, tensor=2) and (data=2, fsdp=2, tensor=2): same loss and
same updated parameters (1e-5, float32). The device count is fixed when JAX starts, so the
work runs in a child process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from rlx.mesh import make_mesh, named_sharding, single_device_mesh
from rlx.models import from_preset
import optax
from rlx.train.update import LossSpec, train_step

assert jax.device_count() == 8, jax.devices()
B, P, R, V = 16, 6, 10, 512
rng = np.random.default_rng(0)
resp_mask = (rng.random((B, R)) < 0.8).astype(np.int32)
batch = {"ids": rng.integers(0, V, (B, P + R)).astype(np.int32),
         "mask": np.concatenate([(np.arange(P)[None] >= rng.integers(0, 3, (B, 1))), np.ones((B, R), bool)], 1).astype(np.int32),
         "response_mask": resp_mask, "old_logp": rng.normal(-6, 0.2, (B, R)).astype(np.float32),
         "ref_logp": rng.normal(-6, 0.2, (B, R)).astype(np.float32),
         "adv": np.repeat(rng.normal(size=(B, 1)), R, 1).astype(np.float32)}
batch["positions"] = np.maximum(np.cumsum(batch["mask"], 1) - 1, 0).astype(np.int32)
spec = LossSpec(agg="token-mean", max_len=R, use_kl=True, micro_batches=2)
# SGD: the update is the clipped gradient itself; Adam's per-element normalisation would
# magnify float rounding in near-zero gradients and hide what this test checks.
optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))

def update(mesh):
    model = from_preset("tiny", mesh=mesh, n_layers=2)
    graphdef, params = nnx.split(model)
    rows = named_sharding(mesh, ("batch", None))
    device = {k: jax.device_put(v, rows) for k, v in batch.items()}
    with jax.set_mesh(mesh):
        new, _, metrics = train_step(graphdef, optimizer, spec, params, optimizer.init(params), device,
                                     jnp.float32(0.1), jnp.float32(1.0))
    return float(metrics["actor/loss"]), [np.asarray(x) for x in jax.tree.leaves(new)]

ref_loss, ref_params = update(single_device_mesh())
out = {}
for shape in [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)]:
    loss, params = update(make_mesh(*shape))
    out[str(shape)] = {"loss": abs(loss - ref_loss),
                       "params": max(float(np.abs(a - b).max()) for a, b in zip(params, ref_params))}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_update_step_on_meshes_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])
    for shape, r in results.items():
        assert r["loss"] <= 1e-5, (shape, r)
        assert r["params"] <= 1e-5, (shape, r)
