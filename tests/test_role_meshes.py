"""Per-role meshes: the config checks, the device layout, and disaggregated runs that equal
the colocated ones on 8 emulated CPU devices (GRPO with a KL reference, and PRIME's PRM)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from rlx.config import ConfigError, MeshSection, RoleMeshSection, load_config
from rlx.train.placement import build_role_meshes

REPO = Path(__file__).resolve().parents[1]


def test_colocated_role_with_its_own_devices_names_the_fix():
    with pytest.raises(ConfigError, match="mesh.engine.devices=4: set it to 0 .* with mesh.roles=disaggregated"):
        load_config(None, ["mesh.engine.devices=4"])
    with pytest.raises(ConfigError, match="mesh.roles='split' is not one of colocated, disaggregated"):
        load_config(None, ["mesh.roles=split"])
    cfg = load_config(None, ["mesh.roles=disaggregated", "mesh.fsdp=4", "mesh.data=1",
                             "mesh.engine.devices=4", "mesh.engine.data=4"])
    assert cfg.mesh.engine == RoleMeshSection(devices=4, data=4)


def test_too_many_devices_names_the_counts():
    section = MeshSection(data=1, fsdp=2, roles="disaggregated", engine=RoleMeshSection(devices=4))
    with pytest.raises(ConfigError, match=r"2 actor devices .* mesh.engine.devices=4 = 6 devices, but there "
                                          r"are 1; lower the role device counts"):
        build_role_meshes(section, jax.devices())
    # An actor axis of -1 takes what the roles leave; here nothing is left.
    with pytest.raises(ConfigError, match="needs 0 actor devices"):
        build_role_meshes(MeshSection(roles="disaggregated", engine=RoleMeshSection(devices=1)), jax.devices())


def test_colocated_is_one_mesh():
    meshes = build_role_meshes(MeshSection(), jax.devices())
    assert meshes.is_colocated and meshes.engine is meshes.actor


CHILD = r"""
import json, sys
import jax, numpy as np
from rlx.build import build_mesh, build_model
from rlx.config import MeshSection, RoleMeshSection, load_config
from rlx.mesh import make_mesh
from rlx.rewards import REWARD_FNS
from rlx.train.placement import build_role_meshes
from rlx.train.trainer import RLTrainer
from rlx.train.task import build_task
from tests.test_rl_loop import SMALL

assert jax.device_count() == 8
REWARD_FNS["toy"] = lambda prompts, responses, **_: [float(r.count("1") % 2) for r in responses]
ids = lambda mesh: sorted(d.id for d in mesh.devices.flat)

# The layout: actor devices 0-1, engine 2-5, reference 6-7, PRM on the actor's mesh.
section = MeshSection(data=1, fsdp=2, roles="disaggregated", engine=RoleMeshSection(devices=4, data=4),
                      reference=RoleMeshSection(devices=2, fsdp=2))
m = build_role_meshes(section)
layout = [ids(m.actor), ids(m.engine), ids(m.reference), ids(m.prm)]
assert layout == [[0, 1], [2, 3, 4, 5], [6, 7], [0, 1]], layout
assert m.prm is m.actor and not m.is_colocated

BASE = [o for o in SMALL if not o.startswith("trainer.steps")] + [
    "trainer.steps=2", "rewards.fns=[{name: toy}]", "trainer.mini_batches=2", f"run.out_dir={sys.argv[1]}"]
LAYOUTS = {
    "grpo": (["algo.kl_coef=0.05"],
             ["mesh.roles=disaggregated", "mesh.data=1", "mesh.fsdp=4", "mesh.engine.devices=4",
              "mesh.engine.data=4"]),
    "prime": (["algo.advantage=prime", "prime.prm_lr=1e-3", "prime.filter=false", "algo.kl_coef=0.05"],
              ["mesh.roles=disaggregated", "mesh.data=1", "mesh.fsdp=2", "mesh.engine.devices=2",
               "mesh.engine.data=2", "mesh.reference.devices=2", "mesh.reference.fsdp=2",
               "mesh.prm.devices=2", "mesh.prm.fsdp=2"]),
}

def run(overrides, colocated):
    cfg = load_config(None, BASE + overrides)
    task = build_task(cfg)
    if colocated:  # the actor's mesh of the disaggregated run, holding every role
        actor = build_mesh(cfg.mesh)
        cfg = load_config(None, BASE + [o for o in overrides if not o.startswith("mesh.")])
        mesh = make_mesh(1, actor.devices.size, 1, devices=list(actor.devices.flat))
    else:
        mesh = build_mesh(cfg.mesh)
    model = build_model(cfg.model, seed=0, mesh=mesh, vocab_size=task.tokenizer.vocab_size)
    trainer = RLTrainer(cfg, model, task)
    metrics = [trainer.step() for _ in range(2)]
    engine_ids = ids(jax.tree.leaves(trainer.engine.params)[0].sharding.mesh)
    roles = {"engine": engine_ids, "reference": ids(jax.tree.leaves(trainer.ref_params)[0].sharding.mesh)}
    if trainer.prm is not None:
        roles["prm"] = ids(jax.tree.leaves(trainer.state.prm["params"])[0].sharding.mesh)
        roles["prm_ref"] = ids(jax.tree.leaves(trainer.prm.ref_params)[0].sharding.mesh)
    params = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
    prm = [np.asarray(x) for x in jax.tree.leaves(trainer.state.prm.get("params", {}))]
    return metrics, params, prm, roles

out = {}
for name, (algo, mesh) in LAYOUTS.items():
    (ma, pa, qa, ra), (mb, pb, qb, rb) = run(algo + mesh, True), run(algo + mesh, False)
    out[name] = {
        "rewards": [[m["reward/mean"] for m in ma], [m["reward/mean"] for m in mb]],
        "lengths": [[m["response/length_mean"] for m in ma], [m["response/length_mean"] for m in mb]],
        "loss": max(abs(x["actor/loss"] - y["actor/loss"]) for x, y in zip(ma, mb)),
        "kl": max(abs(x["actor/kl_to_ref"] - y["actor/kl_to_ref"]) for x, y in zip(ma, mb)),
        "grad_norm": ma[0]["actor/grad_norm"],
        "params": max(float(np.abs(a - b).max()) for a, b in zip(pa, pb)),
        "prm": max([float(np.abs(a - b).max()) for a, b in zip(qa, qb)] or [0.0]),
        "roles": [ra, rb],
    }
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_disaggregated_roles_match_colocated(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])
    grpo, prime = results["grpo"], results["prime"]
    # Colocated: every role on the actor's devices; disaggregated: each on its own.
    assert grpo["roles"][0] == {"engine": [0, 1, 2, 3], "reference": [0, 1, 2, 3]}
    assert grpo["roles"][1] == {"engine": [4, 5, 6, 7], "reference": [0, 1, 2, 3]}
    assert prime["roles"][1] == {"engine": [2, 3], "reference": [4, 5], "prm": [6, 7], "prm_ref": [6, 7]}
    for name, r in results.items():
        assert r["rewards"][0] == r["rewards"][1] and r["lengths"][0] == r["lengths"][1], (name, r)
        assert r["grad_norm"] > 0, (name, r)
        for key in ("loss", "kl", "params", "prm"):
            assert r[key] <= 1e-5, (name, key, r)
