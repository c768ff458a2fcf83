"""Greedy rollouts give identical tokens on 1 device and on 8 emulated CPU devices with data-
and tensor-parallel decode, with the engine on the actor's mesh or on a mesh of its own."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    from rlx.engine import Engine, EngineConfig, rollout
    from rlx.mesh import make_mesh
    from rlx.models import from_preset

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 512, size=rng.integers(2, 30)).tolist() for _ in range(12)]
    config = EngineConfig(max_concurrent_decodes=8, max_prefill_length=32, max_cache_len=64,
                          steps_per_sync=4, attend_buckets=(32, 64))
    kwargs = dict(n=2, max_new_tokens=10, temperature=0.0)

    single = from_preset("tiny")  # on a one-device mesh
    out = {"single": rollout(None, prompts, engine=Engine(single, config), **kwargs).response_ids.tolist()}

    mesh = make_mesh(data=4, fsdp=1, tensor=2)
    actor = from_preset("tiny", mesh=mesh)  # the engine shares the actor's mesh
    engine = Engine(actor, config)
    state = engine.init_decode_state()
    out["cache_spec"] = str(state.cache.k.sharding.spec)
    out["colocated"] = rollout(None, prompts, engine=engine, **kwargs).response_ids.tolist()

    own = Engine(single, config, mesh=mesh)  # a one-device actor, the engine on its own mesh
    out["own_mesh_devices"] = len(jax.tree.leaves(own.params)[0].sharding.device_set)
    out["own_mesh"] = rollout(None, prompts, engine=own, **kwargs).response_ids.tolist()
    print("RESULT" + json.dumps(out))
""")


def _run(script: str, devices: int) -> dict:
    """`script` in a fresh process with `devices` emulated CPU devices: the dict it prints."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_greedy_identical_on_1_and_8_devices():
    out = _run(SCRIPT, devices=8)
    assert "data" in out["cache_spec"] and "tensor" in out["cache_spec"], out["cache_spec"]
    assert out["own_mesh_devices"] == 8
    assert out["colocated"] == out["single"]
    assert out["own_mesh"] == out["single"]


MESH_SCRIPT = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec
    from rlx.engine import Engine, EngineConfig
    from rlx.mesh import make_mesh
    from rlx.models import from_preset

    assert jax.device_count() == 2, jax.devices()
    seen = []  # the specs of every constraint that rlx.mesh.with_logical_constraint applies
    real = jax.lax.with_sharding_constraint

    def recording(x, spec):
        if isinstance(spec, PartitionSpec):
            seen.append(str(spec))
        return real(x, spec)

    jax.lax.with_sharding_constraint = recording
    engine = Engine(from_preset("tiny", mesh=make_mesh(data=1, fsdp=1, tensor=2)),
                    EngineConfig(max_concurrent_decodes=2, max_prefill_length=16, max_cache_len=32))
    prefix = engine.prefill_batch(None, [[1, 2, 3]], jax.random.split(jax.random.key(0), 1), num_samples=2)
    out = {"prefill": list(seen)}
    state = engine.insert_rows(prefix, engine.init_decode_state(), [0, 1], [0, 0], [0, 1])
    seen.clear()
    engine.generate_steps(None, state, 2)
    out["generate"] = list(seen)
    out["hlo"] = engine.lower_prefill(1, 16).as_text()
    print("RESULT" + json.dumps(out))
""")


def test_engine_calls_run_under_the_mesh_so_logical_constraints_act():
    # rlx.mesh.with_logical_constraint is a no-op without `jax.set_mesh`: prefill and generate
    # must trace under the engine's mesh for the model's activation shardings to apply.
    out = _run(MESH_SCRIPT, devices=2)
    # q after rope [batch, seq, heads, head_dim]: the 4 heads split over tensor=2.
    q_spec = "P(('data', 'fsdp'), None, 'tensor', None)"
    assert q_spec in out["prefill"], out["prefill"]
    assert q_spec in out["generate"], out["generate"]
    assert "sharding_constraint" in out["hlo"] or "@Sharding" in out["hlo"]
