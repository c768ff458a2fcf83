"""`python -m rlx.launch plan CONFIG ...`: per-device memory of each role on a mesh, before renting it.

Shapes come from `jax.eval_shape` of the model and shardings from `rlx.mesh`'s logical rules on
an `AbstractMesh`, so a 256-device plan runs on a laptop in seconds with no devices at all.
Parameters, optimizer state, gradients and the KV cache are exact (bytes of each device's
shard); activations are an estimate from the per-layer inventory in `layer_inventory`, whose
formula docs/scaling.md spells out.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding

from rlx import mesh as rmesh
from rlx import models
from rlx.config import ConfigError
from rlx.models import KV_CACHE_AXES, ModelConfig

GIB = 2**30
# HBM per JAX device (GiB) and devices per host. TPU v4/v5p run megacore (one JAX device per
# chip, so a v5p-64 slice is 32 devices); GPU sizes are what CUDA reports (H100: 81559 MiB).
DEVICES: dict[str, tuple[float, int]] = {
    "v4": (32.0, 4), "v5e": (16.0, 4), "v5p": (95.0, 4), "v6e": (32.0, 4),
    "a100": (80.0, 8), "h100": (79.6, 8), "h200": (140.4, 8),
}
TRAIN_ROLES = ("actor", "prm")


def topology_devices(name: str) -> tuple[str, int]:
    """(device kind, chips) of a TPU topology name such as v5p:4x4x2 (one JAX device per chip)."""
    kind, dims = name.split("_")[0].split(":")
    return kind, math.prod(int(d) for d in dims.split("x"))


@dataclasses.dataclass(frozen=True)
class RoleMemory:
    """Bytes per device of one role; `score` is its forward-only pass (scoring), gathers included."""

    role: str
    params: int = 0
    optimizer: int = 0
    gradients: int = 0
    kv_cache: int = 0
    activations: int = 0
    gathers: int = 0
    score: int = 0
    shares_params_with: str = ""
    activations_by_remat: dict = dataclasses.field(default_factory=dict)

    @property
    def persistent(self) -> int:
        return (0 if self.shares_params_with else self.params) + self.optimizer

    @property
    def total(self) -> int:
        """The role alone on its own mesh (disaggregated): it needs its own parameters."""
        return self.params + self.optimizer + self.gradients + self.kv_cache + self.activations + self.gathers


# -- model and mesh ---------------------------------------------------------------------------


def model_config(section) -> ModelConfig:
    """The ModelConfig `rlx.build.build_model` would build from the `model:` section."""
    from rlx.build import model_options

    # The same settings the run builds its model with (attention and logits chunk included).
    overrides = {"dtype": section.dtype, **model_options(section), **section.overrides}
    try:
        if section.hf_path:
            path = Path(section.hf_path) / "config.json"
            if not path.exists():
                raise ConfigError(f"model.hf_path={section.hf_path} has no config.json; point it at a "
                                  f"Hugging Face model directory")
            return models.config_from_hf(json.loads(path.read_text()), source=str(path), **overrides)
        return models.load_config(section.preset, **overrides)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), rmesh.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def resolve_mesh(section, devices: int) -> tuple[int, int, int]:
    """Mesh axis sizes, filling a -1 axis from `devices` (plan.devices)."""
    sizes = [section.data, section.fsdp, section.tensor]
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ConfigError(f"mesh: sizes must be positive with at most one -1, got data={sizes[0]}, "
                          f"fsdp={sizes[1]}, tensor={sizes[2]}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if devices <= 0:
            raise ConfigError("mesh: an axis is -1 ('the remaining devices') but the plan has no devices "
                              "to divide; set plan.devices=N or give every axis, e.g. mesh.data=1 mesh.fsdp=32")
        if devices % known:
            raise ConfigError(f"mesh: plan.devices={devices} is not a multiple of the other axes' product {known}")
        sizes[sizes.index(-1)] = devices // known
    if devices > 0 and math.prod(sizes) != devices:
        raise ConfigError(f"mesh: data*fsdp*tensor = {math.prod(sizes)} but plan.devices={devices}; "
                          f"make them agree or set plan.devices=0")
    return tuple(sizes)


def per_device(mesh: AbstractMesh, names: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one device's shard of an array with these logical axes (rlx.mesh's rules)."""
    return NamedSharding(mesh, rmesh.logical_to_spec(names, shape, mesh)).shard_shape(tuple(shape))


def param_leaves(mcfg: ModelConfig, mesh: AbstractMesh) -> list[tuple[str, tuple, tuple]]:
    """(path, global shape, per-device shape) of every parameter, from eval_shape only."""
    state = nnx.state(models.abstract_model(mcfg), nnx.Param)
    shardings = dict(nnx.to_flat_state(rmesh.state_shardings(state, mesh)))
    out = []
    for path, var in nnx.to_flat_state(state):
        shape = tuple(var.get_value().shape)
        out.append(("/".join(map(str, path)), shape, shardings[path].get_value().shard_shape(shape)))
    return out


# -- the activation model ---------------------------------------------------------------------


def layer_inventory(m: ModelConfig, seq: int, heads: int, kv_heads: int, mlp: int) -> dict[str, tuple[int, str]]:
    """Bytes per token that one decoder layer keeps for its backward pass, by tensor.

    heads / kv_heads / mlp are per-device counts (after the tensor split). Kind: "carry" is
    the layer input (kept under every remat policy: the scan's residual checkpoint), "dot" a
    matmul output (kept by remat=dots), "other" everything else. The list follows the
    residuals `jax.ad_checkpoint.print_saved_residuals` reports for `Transformer.__call__`.
    Attention materialises [heads, seq, seq] scores, so its bytes per token grow with seq.
    """
    c = np.dtype(m.dtype).itemsize
    up32 = 4 if c < 4 else 0  # RMSNorm's float32 upcast of its input (a no-op in float32)
    d, hd = m.d_model, m.head_dim
    return {
        "layer input": (c * d, "carry"),
        "attn norm": (up32 * d + 2 * c * d, "other"),  # normalised x and weight * x
        "q, k, v": (c * (heads + 2 * kv_heads) * hd, "dot"),
        "q, k after rope": (c * (heads + kv_heads) * hd, "other"),
        "mask per head": (heads * seq, "other"),  # bool
        "scores f32": (4 * heads * seq, "dot"),
        "exp(scores) f32": (4 * heads * seq, "other"),
        "probs": ((c if c < 4 else 0) * heads * seq, "other"),  # the cast back to the compute dtype
        "attn out": (c * heads * hd, "dot"),
        "attn residual": (c * d, "dot"),
        "mlp norm": (up32 * d + 2 * c * d, "other"),
        "gate, up": (2 * c * mlp, "dot"),
        "silu residuals, product": (4 * c * mlp, "other"),
    }


SAVED_KINDS = {"none": ("carry", "dot", "other"), "dots": ("carry", "dot"), "full": ("carry",),
               "dots_no_batch": ("carry",)}  # every activation has a batch axis: like "full"


# The backward pass of one layer holds its activations (recomputed, or saved) and their
# cotangents at once; XLA's schedule peaks at about 1.3x the layer's inventory (measured on
# XLA:CPU for remat=none and remat=full, seq 256-1024; tests/test_plan.py keeps it honest).
LAYER_BACKWARD = 1.3


def activation_bytes(inventory: dict, *, layers: int, rows: int, seq: int, vocab: int,
                     policy: str | None) -> int:
    """Peak activation bytes of one micro-batch of `rows` x `seq` tokens on one device.

    Training (policy given): `layers` x the tensors the policy keeps, plus the larger of the
    two phases of the backward pass that never overlap: the loss (float32 logits and their
    cotangent, 8 bytes x vocab per token) and one layer's backward (LAYER_BACKWARD x its
    inventory). Forward only (policy None): the residual stream in and out plus the larger of
    one layer and the logits with a logsumexp temporary. Both add each row's [seq, seq] mask.
    """
    one_layer = sum(b for b, _ in inventory.values())
    if policy is None:
        per_token = 2 * inventory["layer input"][0] + max(one_layer, 8 * vocab)
    else:
        kept = sum(b for b, kind in inventory.values() if kind in SAVED_KINDS[policy])
        per_token = layers * kept + max(int(LAYER_BACKWARD * one_layer), 8 * vocab)
    return rows * seq * per_token + rows * seq * seq


# -- roles ------------------------------------------------------------------------------------


def roles_of(cfg) -> tuple[str, ...]:
    """The models a run holds: a reference only when something reads its log-probs."""
    algo = cfg.algo
    # PRIME and PURE's implicit PRM train a PRM against a frozen reference; PURE's classifier
    # PRM is a frozen scorer, which the "prm" role's trained-model estimate covers from above.
    implicit_prm = algo.advantage == "prime" or (algo.advantage == "pure" and cfg.pure.prm == "implicit")
    prm = implicit_prm or algo.advantage == "pure"
    needs_ref = implicit_prm or algo.kl_coef > 0 or algo.kl_in_reward
    return ("actor",) + (("reference",) if needs_ref else ()) + (("prm",) if prm else ()) + ("engine",)


def train_shape(cfg) -> tuple[int, int, int]:
    """(micro-batch rows, sequence length, micro-batches per mini-batch) of one update."""
    mini = cfg.trainer.prompts_per_step * cfg.algo.n // cfg.trainer.mini_batches
    micro = cfg.trainer.micro_batch_size or mini
    seq = cfg.engine.max_prefill_length + cfg.engine.max_new_tokens
    return micro, seq, mini // micro


def plan(cfg) -> dict:
    """The whole plan as a JSON-able dict (bytes per device); `plan_table.format_plan` prints it.

    Its options are the config's `plan:` section; `plan.topology` sets the device kind and count.
    """
    opts = cfg.plan
    device, devices = topology_devices(opts.topology) if opts.topology else (opts.device, opts.devices)
    if device not in DEVICES and opts.hbm_gib <= 0:
        raise ConfigError(f"plan.device='{device}' is unknown; choose one of {', '.join(DEVICES)} "
                          f"or give plan.hbm_gib")
    if not 0 <= opts.headroom < 1:
        raise ConfigError(f"plan.headroom={opts.headroom} must be in [0, 1)")
    hbm = (opts.hbm_gib or DEVICES[device][0]) * GIB
    sizes = resolve_mesh(cfg.mesh, devices)
    mesh = abstract_mesh(*sizes)
    m = model_config(cfg.model)
    leaves = param_leaves(m, mesh)
    # With fsdp > 1 XLA all-gathers each layer's weights (and the unembedding) before use.
    gathered = param_leaves(m, abstract_mesh(sizes[0], 1, sizes[2])) if sizes[1] > 1 else []

    p_bytes = np.dtype(m.param_dtype).itemsize
    c_bytes = np.dtype(m.dtype).itemsize
    shard_elems = sum(math.prod(s) for _, _, s in leaves)
    n_params = sum(math.prod(g) for _, g, _ in leaves)
    layer_g = sum(math.prod(s) for p, _, s in gathered if p.startswith("layers/")) // m.n_layers
    other_g = max((math.prod(s) for p, _, s in gathered if not p.startswith("layers/")), default=0)
    unit = max(layer_g, other_g) * c_bytes  # the largest gathered unit
    micro, seq, n_micro = train_shape(cfg)
    rows = per_device(mesh, ("batch",), (micro,))[0]
    heads = per_device(mesh, ("heads",), (m.n_heads,))[0]
    kv_heads = per_device(mesh, ("kv_heads",), (m.n_kv_heads,))[0]
    mlp = per_device(mesh, ("mlp",), (m.mlp_dim,))[0]
    vocab = per_device(mesh, ("vocab",), (m.vocab_size,))[0]
    inv = layer_inventory(m, seq, heads, kv_heads, mlp)
    act = {p: activation_bytes(inv, layers=m.n_layers, rows=rows, seq=seq, vocab=vocab, policy=p)
           for p in ("none", "full", m.remat)}
    fwd = activation_bytes(inv, layers=m.n_layers, rows=rows, seq=seq, vocab=vocab, policy=None)

    # AdamW: two float32 moments per parameter, plus a float32 master copy when params are
    # stored in 16 bits (mixed precision). Gradients come in the param dtype; splitting a
    # mini-batch into micro-batches adds a float32 accumulator.
    optimizer = shard_elems * (8 + (4 if p_bytes < 4 else 0))
    gradients = shard_elems * (p_bytes + (4 if n_micro > 1 else 0))
    trained = dict(params=shard_elems * p_bytes, optimizer=optimizer, gradients=gradients,
                   activations=act[m.remat], gathers=3 * unit, score=fwd + 2 * unit,
                   activations_by_remat={"none": act["none"], "full": act["full"]})

    slots, cache_len = cfg.engine.max_concurrent_decodes, cfg.engine.max_cache_len
    kv_shape = (m.n_layers, slots, cache_len, m.n_kv_heads, m.head_dim)
    kv = 2 * math.prod(per_device(mesh, KV_CACHE_AXES, kv_shape)) * c_bytes
    slots_dev = per_device(mesh, ("batch",), (slots,))[0]
    # Decode step: float32 logits, a sorted copy and its int32 indices (top-p / top-k).
    decode = slots_dev * vocab * 12
    shares = "actor" if opts.colocated and p_bytes == c_bytes else ""
    roles = {}
    for role in roles_of(cfg):
        if role in TRAIN_ROLES:
            roles[role] = RoleMemory(role, **trained)
        elif role == "reference":
            roles[role] = RoleMemory(role, params=shard_elems * p_bytes, activations=fwd,
                                     gathers=2 * unit, score=fwd + 2 * unit)
        else:
            roles[role] = RoleMemory(role, params=shard_elems * c_bytes, kv_cache=kv, activations=decode,
                                     gathers=2 * unit, shares_params_with=shares)

    usable = int(hbm * (1 - opts.headroom))
    result = {
        "model": cfg.model.hf_path or cfg.model.preset, "params": n_params,
        "dtype": m.dtype, "param_dtype": m.param_dtype, "remat": m.remat, "algo": cfg.algo.advantage,
        "mesh": dict(zip(rmesh.MESH_AXES, sizes)), "devices": math.prod(sizes),
        "device": device, "hosts": -(-math.prod(sizes) // DEVICES.get(device, (0, 1))[1]),
        "hbm_bytes": int(hbm), "usable_bytes": usable, "headroom": opts.headroom,
        "colocated": opts.colocated,
        "train": {"micro_batch": micro, "seq": seq, "micro_batches": n_micro, "rows_per_device": rows},
        "engine": {"slots": slots, "cache_len": cache_len, "slots_per_device": slots_dev},
        "roles": {name: dataclasses.asdict(r) | {"total": r.total} for name, r in roles.items()},
        "warnings": layout_warnings(mesh, micro, rows, slots, slots_dev),
    }
    result.update(fit(roles, usable, opts.colocated, math.prod(sizes)))
    return result


def fit(roles: dict[str, RoleMemory], usable: int, colocated: bool, mesh_devices: int) -> dict:
    """Colocated: persistent state of every role + the largest phase. Else each role alone."""
    if not colocated:
        worst = max(roles.values(), key=lambda r: r.total)
        return {"peak_bytes": worst.total, "peak_phase": f"{worst.role} (own mesh)",
                "fits": all(r.total <= usable for r in roles.values()),
                "devices_total": mesh_devices * len(roles)}
    persistent = sum(r.persistent for r in roles.values())
    phases = {"rollout": roles["engine"].kv_cache + roles["engine"].activations + roles["engine"].gathers,
              "scoring": max(r.score for r in roles.values())}
    for name in TRAIN_ROLES:
        if name in roles:
            r = roles[name]
            phases[f"{name} update"] = r.gradients + r.activations + r.gathers
    phase = max(phases, key=phases.get)
    peak = persistent + phases[phase]
    return {"persistent_bytes": persistent, "phases": phases, "peak_bytes": peak, "peak_phase": phase,
            "fits": peak <= usable, "devices_total": mesh_devices}


def layout_warnings(mesh, micro: int, rows: int, slots: int, slots_dev: int) -> list[str]:
    """Layouts that the sharding rules accept but that waste memory, each with its fix."""
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    out = []
    if rows * batch_ways != micro:
        out.append(f"micro-batch of {micro} rows does not split over data*fsdp={batch_ways}, so every "
                   f"device holds {rows}; make trainer.micro_batch_size a multiple of {batch_ways}")
    if slots_dev * batch_ways != slots:
        out.append(f"engine.max_concurrent_decodes={slots} does not split over data*fsdp={batch_ways}; "
                   f"make it a multiple of {batch_ways}")
    return out


def run(cfg, **_) -> dict:
    """Print the plan table (and, with plan.compile, XLA's figures) and write `plan.json`."""
    from rlx.plan_table import format_plan

    if cfg.plan.compile and not cfg.plan.topology and not cfg.plan.devices:
        import jax  # compiling for the local devices: plan for as many

        cfg = dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, devices=len(jax.devices())))
    result = plan(cfg)
    print(format_plan(result), flush=True)
    if cfg.plan.compile:
        from rlx.plan_compile import compile_plan, format_compiled

        # The compiled figures are XLA's own, so they decide the verdict.
        result["compiled"] = compile_plan(cfg, result)
        result["fits"] = result["compiled"]["fits"]
        print()
        print(format_compiled(result["compiled"], result))
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'plan.json'}")
    return result
