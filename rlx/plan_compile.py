"""`plan.compile=true`: XLA's own memory per device for each phase's real jitted program.

Every input is abstract -- `jax.ShapeDtypeStruct`s carrying the NamedShardings of rlx.mesh's
logical rules, parameters from `nnx.eval_shape` of the model -- so nothing is allocated. With
`plan.topology=v5p:4x4x2` the programs compile for TPU devices that libtpu describes on a
CPU-only host (as MaxText's train_compile does); without it, for the local devices.

A phase's `total` is what its program holds at its peak: arguments + outputs - the outputs that
reuse donated arguments + temporaries + code. Colocated, the device also holds the other roles'
parameters and optimizer state between phases; `peak` adds them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh

from rlx import mesh as rmesh
from rlx import models
from rlx.config import ConfigError
from rlx.plan import DEVICES, GIB, model_config, resolve_mesh, roles_of, topology_devices
from rlx.train.optim import actor_optimizer, adamw, prm_optimizer

TPU_EXTRA = "pip install -e '.[tpu]'"
OOM_TEMPORARIES = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT])\)")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One jitted program to compile: `lower()` returns it lowered on abstract inputs."""

    name: str
    shape: str  # what it was compiled for, in words
    lower: Callable[[], jax.stages.Lowered]
    resident_args: int  # bytes per device of its arguments that stay resident (params, moments)


# -- devices and mesh -------------------------------------------------------------------------


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def target_devices(topology: str) -> list:
    """The devices to compile for: a TPU slice's abstract devices, or the local ones."""
    if not topology:
        return jax.devices()
    if not libtpu_available():
        raise ConfigError(f"plan.topology={topology} compiles for TPU on this host, which needs libtpu: "
                          f"{TPU_EXTRA}")
    from jax.experimental import topologies

    # The compile needs no TPU attached; keep JAX on the CPU so libtpu does not look for one,
    # and let libtpu load beside other JAX processes (it takes a host-wide lock otherwise).
    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except Exception as e:  # libtpu's JaxRuntimeError: the name's shape is not a valid slice
        reason = str(e).splitlines()[0]
        raise ConfigError(f"plan.topology={topology}: libtpu rejects it ({reason}); valid examples: "
                          f"v5p:2x2x1, v5p:4x4x2, v5e:4x4, v6e:2x2") from None


def compile_mesh(cfg, devices: list) -> Mesh:
    from jax.experimental import mesh_utils

    sizes = resolve_mesh(cfg.mesh, len(devices))
    grid = mesh_utils.create_device_mesh(sizes, devices)
    return Mesh(grid, rmesh.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def hbm_per_device(cfg, devices: list) -> int:
    """HBM of one JAX device: the chip's HBM (rlx.plan.DEVICES) over the devices per chip."""
    if cfg.plan.hbm_gib > 0:
        return int(cfg.plan.hbm_gib * GIB)
    if cfg.plan.topology:
        kind, chips = topology_devices(cfg.plan.topology)
        return int(DEVICES[kind][0] * GIB * chips / len(devices))
    limit = (devices[0].memory_stats() or {}).get("bytes_limit") if devices[0].platform != "cpu" else None
    return int(limit) if limit else int(DEVICES[cfg.plan.device][0] * GIB)


# -- abstract inputs --------------------------------------------------------------------------


def with_shardings(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def abstract_params(mcfg, mesh: Mesh):
    """(graphdef, params as ShapeDtypeStructs on their logical shardings)."""
    graphdef, state = nnx.split(models.abstract_model(mcfg))
    return graphdef, with_shardings(state, rmesh.state_shardings(state, mesh))


def abstract_opt_state(optimizer, params, mesh: Mesh):
    """The optimizer state as `rlx.train.optim.init_state` lays it out: every subtree shaped like
    the params (the moments) on the params' shardings, the scalars replicated."""
    shapes = jax.eval_shape(optimizer.init, params)
    treedef = jax.tree.structure(params)
    replicated = rmesh.replicated(mesh)

    def place(sub):
        if jax.tree.structure(sub) == treedef:
            return with_shardings(sub, jax.tree.map(lambda p: p.sharding, params))
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), sub)

    return jax.tree.map(place, shapes, is_leaf=lambda x: jax.tree.structure(x) == treedef)


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    return sum(math.prod(s.sharding.shard_shape(s.shape)) * np.dtype(s.dtype).itemsize
               for s in jax.tree.leaves(tree))


def rows(mesh: Mesh, shapes: dict[str, tuple], dtypes: dict[str, object]) -> dict:
    """A batch dict: batch-major arrays, rows split over the mesh's batch axes (hostio.put_rows)."""
    return {k: jax.ShapeDtypeStruct(s, dtypes.get(k, jnp.int32),
                                    sharding=rmesh.named_sharding(mesh, ("batch",) + (None,) * (len(s) - 1), s))
            for k, s in shapes.items()}


def scalar(mesh: Mesh, dtype=jnp.float32):
    return jax.ShapeDtypeStruct((), dtype, sharding=rmesh.replicated(mesh))


# -- the phases -------------------------------------------------------------------------------


def batch_shape(cfg) -> dict:
    """Rows and widths of one RL step, as the trainer pads them: prompts to the engine's largest
    prefill bucket, responses to the longest response (engine.max_new_tokens or a CAMPO stage)."""
    prompt = cfg.engine.max_prefill_length
    response = max((cfg.engine.max_new_tokens, *cfg.campo.max_lengths))
    step_rows = cfg.trainer.prompts_per_step * cfg.algo.n
    mini = step_rows // cfg.trainer.mini_batches
    micro = cfg.trainer.micro_batch_size or mini
    return {"prompt": prompt, "response": response, "seq": prompt + response, "step_rows": step_rows,
            "mini": mini, "micro": micro, "micro_batches": mini // micro}


def phases(cfg, mesh: Mesh) -> list[Phase]:
    """The programs a run of this config compiles, each with its abstract inputs."""
    from rlx.engine.engine import Engine
    from rlx.engine.sampling import SamplingConfig
    from rlx.engine.state import EngineConfig, pick_bucket, pow2_buckets
    from rlx.train.objectives import get_objective
    from rlx.train.prm import PrmSpec, prm_train_step
    from rlx.train.sft import sft_step
    from rlx.train.trainer import loss_spec
    from rlx.train.update import score, score_with_entropy, train_step

    b = batch_shape(cfg)
    mcfg = model_config(cfg.model)
    graphdef, params = abstract_params(mcfg, mesh)
    p_bytes = device_bytes(params)
    f32 = jnp.float32
    seq, resp = (b["seq"],), (b["response"],)

    def batch(n: int, **extra) -> dict:
        shapes = {"ids": (n, *seq), "mask": (n, *seq), "positions": (n, *seq), "response_mask": (n, *resp)}
        dtypes = {}
        for key, (shape, dtype) in extra.items():
            shapes[key], dtypes[key] = (n, *shape), dtype
        return rows(mesh, shapes, dtypes)

    optimizer = actor_optimizer(cfg)
    opt_state = abstract_opt_state(optimizer, params, mesh)
    o_bytes = device_bytes(opt_state)
    spec = loss_spec(cfg, b["micro_batches"], max_len=b["response"])
    temperature = scalar(mesh)
    shape_of = lambda n, micro=None: (f"{n} rows x {b['seq']} tokens" +  # noqa: E731
                                      (f", {micro} micro-batches" if micro and micro > 1 else ""))
    out = []
    # The trainer scores a step micro-batch by micro-batch (RLTrainer.score_rows): one program.
    scored = batch(b["micro"])
    calls = b["step_rows"] // b["micro"]
    scoring = f"{b['micro']} rows x {b['seq']} tokens" + (f", {calls} calls a step" if calls > 1 else "")
    out.append(Phase("actor scoring", scoring,
                     lambda: score_with_entropy.lower(graphdef, params, scored, temperature), p_bytes))
    mini = batch(b["mini"], old_logp=(resp, f32), adv=(resp, f32), ref_logp=(resp, f32))
    out.append(Phase("actor update", shape_of(b["mini"], b["micro_batches"]),
                     lambda: train_step.lower(graphdef, optimizer, spec, params, opt_state, mini,
                                              scalar(mesh), temperature), p_bytes + o_bytes))
    roles = roles_of(cfg)
    if "reference" in roles:
        out.append(Phase("reference scoring", scoring,
                         lambda: score.lower(graphdef, params, scored, temperature), p_bytes))
    if get_objective(cfg.algo.advantage).prm(cfg) == "implicit":  # a trained PRM (ImplicitPRM)
        p = cfg.prime
        prm_opt = prm_optimizer(cfg)
        prm_state = abstract_opt_state(prm_opt, params, mesh)
        prm_batch = batch(b["mini"], acc=((), f32), row_mask=((), f32), prm_ref_logp=(resp, f32))
        prm_spec = PrmSpec(beta=p.beta, micro_batches=b["micro_batches"])
        out.append(Phase("prm update", shape_of(b["mini"], b["micro_batches"]),
                         lambda: prm_train_step.lower(graphdef, prm_opt, prm_spec, params, prm_state,
                                                      prm_batch), p_bytes + device_bytes(prm_state)))
    if cfg.sft.steps > 0:
        s = cfg.sft
        sft_opt = adamw(s.lr, s.steps, warmup_steps=s.warmup_steps, grad_clip=1.0)
        sft_state = abstract_opt_state(sft_opt, params, mesh)
        sft_batch = batch(s.batch_size)
        out.append(Phase("sft step", shape_of(s.batch_size),
                         lambda: sft_step.lower(graphdef, sft_opt, params, sft_state, sft_batch),
                         p_bytes + device_bytes(sft_state)))
    e = cfg.engine
    sampling = SamplingConfig(temperature=e.temperature, top_k=e.top_k, top_p=e.top_p, min_p=e.min_p)
    engine = Engine(models.abstract_model(mcfg), EngineConfig(
        max_concurrent_decodes=e.max_concurrent_decodes, max_prefill_length=e.max_prefill_length,
        max_cache_len=e.max_cache_len, steps_per_sync=e.steps_per_sync, sampling=sampling), mesh=mesh)
    # The rollout driver prefills a power-of-two batch of prompts, slots / n or more of them.
    prompts = pick_bucket(pow2_buckets(1, 1 << 30), max(1, e.max_concurrent_decodes // cfg.algo.n))
    out.append(Phase("engine prefill", f"{prompts} prompts x {e.max_prefill_length} tokens x {cfg.algo.n} samples",
                     lambda: engine.lower_prefill(prompts, e.max_prefill_length, cfg.algo.n), p_bytes))
    out.append(Phase("engine generate", f"{e.max_concurrent_decodes} slots x {e.max_cache_len} cache, "
                                        f"{e.steps_per_sync} steps",
                     lambda: engine.lower_generate(e.steps_per_sync, e.max_cache_len), p_bytes))
    return out


# -- compile and report -----------------------------------------------------------------------


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
           "code": m.generated_code_size_in_bytes}
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["code"]
    return out


def compile_phase(phase: Phase, mesh: Mesh) -> dict:
    t0 = time.perf_counter()
    try:
        with jax.set_mesh(mesh):
            compiled = phase.lower().compile()
        result = {"memory": memory(compiled)}
    except Exception as e:  # reported beside the others: one phase's failure is a finding
        text = str(e).strip()
        result = {"error": f"{type(e).__name__}: {text[:2000]}",
                  "out_of_memory": "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()}
        needed = OOM_TEMPORARIES.search(text)
        if needed:  # XLA:TPU says how much it wanted: e.g. "HLO temporaries (1.42T)"
            result["temporaries_needed"] = int(float(needed.group(1)) * 1024 ** "KMGT".index(needed.group(2)) * 1024)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def compile_plan(cfg, analytic: dict | None = None, only: tuple[str, ...] = ()) -> dict:
    """Compile every phase (or those named in `only`) and return XLA's memory per device."""
    devices = target_devices(cfg.plan.topology)
    mesh = compile_mesh(cfg, devices)
    hbm = hbm_per_device(cfg, devices)
    todo = [p for p in phases(cfg, mesh) if not only or p.name in only]
    resident = (analytic or {}).get("persistent_bytes", 0) if cfg.plan.colocated else 0
    out = {"target": cfg.plan.topology or f"local {devices[0].platform}", "devices": len(devices),
           "device_kind": devices[0].device_kind, "hbm_bytes": hbm,
           "mesh": dict(zip(rmesh.MESH_AXES, mesh.devices.shape)), "phases": {}}
    for phase in todo:
        print(f"compiling {phase.name} ({phase.shape}) ...", file=sys.stderr, flush=True)
        r = compile_phase(phase, mesh) | {"shape": phase.shape}
        if "memory" in r:
            # Colocated, the other roles' state stays resident; the phase's own is in its arguments.
            extra = 0 if phase.name == "sft step" else max(resident - phase.resident_args, 0)
            r["peak"] = r["memory"]["total"] + extra
            r["fits"] = r["peak"] <= hbm
        else:
            r["fits"] = False if r["out_of_memory"] else None
        out["phases"][phase.name] = r
    out["fits"] = all(r["fits"] for r in out["phases"].values())
    return out


ANALYTIC_PHASE = {"actor update": "actor update", "prm update": "prm update", "actor scoring": "scoring",
                  "reference scoring": "scoring", "engine prefill": "rollout", "engine generate": "rollout"}


def format_compiled(c: dict, analytic: dict | None = None) -> str:
    totals = [r["memory"]["total"] for r in c["phases"].values() if "memory" in r]
    unit, scale = ("MiB", 2**20) if totals and max(totals) < GIB else ("GiB", GIB)  # tiny models
    g = lambda n: f"{n / scale:.2f}"  # noqa: E731
    mesh = " ".join(f"{k}={v}" for k, v in c["mesh"].items())
    lines = [f"XLA, compiled for {c['target']}: {c['devices']} x {c['device_kind']}, mesh {mesh}, "
             f"{c['hbm_bytes'] / GIB:.2f} GiB HBM per device",
             f"{unit + ' per device':<18}{'args':>8}{'temps':>8}{'outputs':>8}{'aliased':>8}{'total':>8}"
             f"{'peak':>8}{'plan':>8}  verdict"]
    errors = []
    for name, r in c["phases"].items():
        plan_cell = "-"
        if analytic and ANALYTIC_PHASE.get(name) in analytic.get("phases", {}):
            plan_cell = g(analytic["persistent_bytes"] + analytic["phases"][ANALYTIC_PHASE[name]])
        if "memory" in r:
            m = r["memory"]
            ok = "FITS" if r["fits"] else "DOES NOT FIT"
            lines.append(f"{name:<18}{g(m['arguments']):>8}{g(m['temporaries']):>8}{g(m['outputs']):>8}"
                         f"{g(m['aliased']):>8}{g(m['total']):>8}{g(r['peak']):>8}{plan_cell:>8}  {ok}"
                         f"  ({r['shape']}; {r['seconds']:.0f} s)")
        else:
            ok = "DOES NOT FIT (XLA ran out of memory)" if r["out_of_memory"] else "DID NOT COMPILE"
            temps = g(r["temporaries_needed"]) if "temporaries_needed" in r else ""
            lines.append(f"{name:<18}{'':>8}{temps:>8}{'':>40}{plan_cell:>8}  {ok}  ({r['shape']})")
            errors.append(f"{name}: {r['error']}")
    lines.append("total = args + outputs - aliased (donated) + temporaries + code; peak adds the other "
                 "roles' resident params and optimizer state (colocated); plan = the analytic estimate "
                 "of the same peak")
    return "\n".join(lines + [f"error in {e}" for e in errors])
