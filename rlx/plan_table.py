"""Text rendering of a memory plan (`rlx.plan.plan`): one column per role, one row per kind."""

from __future__ import annotations

GIB = 2**30
MIB = 2**20
ROWS = (("params", "params"), ("optimizer", "optimizer"), ("gradients", "gradients"),
        ("kv_cache", "kv cache"), ("activations", "activations"), ("gathers", "fsdp gathers"))


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def mib(n: int) -> str:
    return f"{n / MIB:.1f}"


def count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def header(p: dict) -> list[str]:
    mesh = " ".join(f"{k}={v}" for k, v in p["mesh"].items())
    t, e = p["train"], p["engine"]
    return [
        f"rlx plan: {p['model']}, {count(p['params'])} params ({p['dtype']} compute, "
        f"{p['param_dtype']} params, remat={p['remat']}), algo={p['algo']}",
        f"mesh {mesh} = {p['devices']} devices ({p['hosts']} host(s) of {p['device']}), "
        f"{p['hbm_bytes'] / GIB:.1f} GiB HBM per device, {p['usable_bytes'] / GIB:.1f} GiB usable "
        f"({p['headroom']:.0%} headroom)",
        f"update: micro-batch {t['micro_batch']} rows x {t['seq']} tokens ({t['rows_per_device']} "
        f"row(s)/device), {t['micro_batches']} micro-batch(es) per mini-batch",
        f"engine: {e['slots']} slots x {e['cache_len']} cache ({e['slots_per_device']} slots/device)",
    ]


def units(p: dict):
    """GiB, or MiB when every role's total is under 1 GiB (tiny models)."""
    small = max(r["total"] for r in p["roles"].values()) < GIB
    return (mib, "MiB") if small else (gib, "GiB")


def table(p: dict) -> list[str]:
    roles = p["roles"]
    fmt, unit = units(p)
    width = max(10, *(len(r) + 2 for r in roles))
    lines = [f"{unit + ' per device':<22}" + "".join(f"{r:>{width}}" for r in roles)]
    for key, label in ROWS:
        cells = []
        for r in roles.values():
            shared = key == "params" and r["shares_params_with"]
            cells.append(f"({r['shares_params_with']})" if shared else fmt(r[key]) if r[key] else "-")
        lines.append(f"{label:<22}" + "".join(f"{c:>{width}}" for c in cells))
    lines.append(f"{'total (own mesh)':<22}" + "".join(f"{fmt(r['total']):>{width}}" for r in roles.values()))
    for policy in ("none", "full"):
        cells = [fmt(r["activations_by_remat"][policy]) if r["activations_by_remat"] else "-"
                 for r in roles.values()]
        lines.append(f"{'  act. if remat=' + policy:<22}" + "".join(f"{c:>{width}}" for c in cells))
    return lines


def verdict(p: dict) -> list[str]:
    fmt, unit = units(p)
    usable = f"{fmt(p['usable_bytes'])} {unit} usable"
    ok = "FITS" if p["fits"] else "DOES NOT FIT"
    if p["colocated"]:
        phase = p["peak_phase"]
        phases = ", ".join(f"{k} {fmt(v)}" for k, v in p["phases"].items())
        lines = [f"colocated on {p['devices_total']} devices: persistent {fmt(p['persistent_bytes'])} "
                 f"(params + optimizer of every role) + largest phase '{phase}' "
                 f"{fmt(p['phases'][phase])} = {fmt(p['peak_bytes'])} {unit} of {usable} -> {ok}",
                 f"phases ({unit}): {phases}"]
    else:
        lines = [f"disaggregated: each role on its own {p['devices']}-device mesh, "
                 f"{p['devices_total']} devices in all; largest role {p['peak_phase']} "
                 f"{fmt(p['peak_bytes'])} {unit} of {usable} -> {ok}"]
    if not p["fits"]:
        lines.append("to fit: model.remat=full, a smaller trainer.micro_batch_size, a larger mesh.fsdp "
                     "(or mesh.tensor), fewer engine.max_concurrent_decodes, or plan.colocated=false")
    return lines


def format_plan(p: dict) -> str:
    warn = [f"warning: {w}" for w in p["warnings"]]
    return "\n".join(header(p) + [""] + table(p) + [""] + verdict(p) + warn)

