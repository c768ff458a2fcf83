"""The longest response each model's RL update fits on a TPU slice, from XLA's compiled memory.

    pip install -e '.[tpu]'
    python benchmarks/long_context.py                                  # the table in docs/scaling.md
    python benchmarks/long_context.py --cells 0.5b@v5p-8 --prompt 512 --lengths 2048 16384  # one cell

For each (model, slice) cell it compiles the actor's `train_step` (rlx/train/update.py) for the
slice's TPU topology on this CPU host (`rlx.plan_compile`), one response row per chip (a GRPO
micro-batch of `chips` rows, FSDP over every chip, model.remat=full, bfloat16 compute, float32
params and AdamW moments), a 1024-token prompt, and responses of 4k, 8k, ... tokens: the
search stops at the first length whose peak (params + optimizer + XLA's temporaries) exceeds
the chip's HBM or that XLA cannot fit. Each compile takes one to a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlx.config import load_config  # noqa: E402
from rlx.plan_compile import compile_plan  # noqa: E402

GIB = 2**30
# Slice name -> libtpu topology (v5p: one JAX device per chip, two TensorCores; v5e: one core).
SLICES = {"v5p-8": "v5p:2x2x1", "v5p-64": "v5p:4x4x2", "v5e-256": "v5e:16x16"}
MODELS = {"0.5b": "qwen2.5-0.5b", "7b": "qwen2.5-math-7b", "32b": "qwen2.5-32b"}
CELLS = ("0.5b@v5p-8", "7b@v5p-64", "32b@v5p-64", "7b@v5e-256", "32b@v5e-256")
LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
PROMPT = 1024


def overrides(model: str, topology: str, response: int, extra: list[str], prompt: int = PROMPT) -> list[str]:
    chips = 1
    for d in topology.split(":")[1].split("x"):
        chips *= int(d)
    return [f"model.preset={MODELS[model]}", "model.remat=full", "model.dtype=bfloat16",
            "model.param_dtype=float32", "algo.advantage=grpo", f"algo.n={chips}", "algo.kl_coef=0",
            "trainer.prompts_per_step=1", "trainer.mini_batches=1", "trainer.micro_batch_size=0",
            f"engine.max_prefill_length={prompt}", f"engine.max_new_tokens={response}",
            f"engine.max_cache_len={prompt + response}", "mesh.data=1", f"mesh.fsdp={chips}", "mesh.tensor=1",
            f"plan.topology={topology}", "sft.steps=0", *extra]


def measure(model: str, topology: str, response: int, extra: list[str], prompt: int = PROMPT) -> dict:
    cfg = load_config(None, overrides(model, topology, response, extra, prompt))
    c = compile_plan(cfg, only=("actor update",))
    r = c["phases"]["actor update"] | {"hbm": c["hbm_bytes"]}
    return r


def row(model, slice_, response, r) -> str:
    if "memory" in r:
        m = r["memory"]
        return (f"| {model} | {slice_} | {response:,} | {m['arguments'] / GIB:.2f} | {m['temporaries'] / GIB:.2f} "
                f"| {m['total'] / GIB:.2f} | {r['hbm'] / GIB:.0f} | {'fits' if r['fits'] else 'does not fit'} "
                f"| {r['seconds']:.0f} |")
    why = "XLA out of memory" if r.get("out_of_memory") else "compile error"
    return f"| {model} | {slice_} | {response:,} | | | | {r['hbm'] / GIB:.0f} | {why} | {r['seconds']:.0f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="*", default=list(CELLS), help="MODEL@SLICE, e.g. 7b@v5p-64")
    ap.add_argument("--lengths", nargs="*", type=int, default=list(LENGTHS), help="response tokens to try")
    ap.add_argument("--prompt", type=int, default=PROMPT, help="prompt tokens per row")
    ap.add_argument("--all", action="store_true", help="try every length, not only up to the first misfit")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides (e.g. model.attention=splash)")
    args = ap.parse_args()
    print("| model | slice | response tokens | args GiB | temps GiB | total GiB | HBM GiB | verdict | compile s |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    best = {}
    for cell in args.cells:
        model, slice_ = cell.split("@")
        for response in args.lengths:
            t0 = time.perf_counter()
            r = measure(model, SLICES.get(slice_, slice_), response, args.overrides, args.prompt)
            r.setdefault("seconds", time.perf_counter() - t0)
            print(row(model, slice_, response, r), flush=True)
            if r.get("fits"):
                best[cell] = response
            elif not args.all:
                break
    print()
    for cell in args.cells:
        print(f"{cell}: longest response that fits (of those tried): {best.get(cell, 'none'):,}"
              if cell in best else f"{cell}: none of those tried fits")


if __name__ == "__main__":
    main()
