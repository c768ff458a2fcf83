"""rlx against PyTorch + transformers on one GPU, in one run: GRPO update and rollout, bf16.

    benchmarks/gpu.sh                  # GPU: Qwen2.5-0.5B and -1.5B shapes, both sides, < 10 minutes
    benchmarks/gpu.sh --smoke          # CPU: tiny preset, float32, xla attention, a few tokens

Random weights from the presets; the PyTorch side loads the same weights through `to_hf`.
Per model, four cells, each timed after a first (compiling / warming) call:
  torch train  -- the GRPO update (PPO-clip loss, grad, clip, AdamW) in PyTorch, benchmarks/grpo_update.py
  rlx train    -- the same update with rlx's jitted `train_step`
  hf generate  -- transformers `generate`, KV cache, sampling at temperature 1, no EOS
  rlx rollout  -- `rollout` through one rlx Engine built once, same prompts and token counts
Both sides keep parameters, activations and AdamW state in the same dtype. MFU is against the
data-sheet dense bf16 peak of the detected GPU (rlx.bench.DENSE_BF16_PEAK_TFLOPS) and, separately,
against a jnp matmul measured in the same run. The markdown table goes to stdout and is rewritten
after every cell to $OUT/gpu_bench.md (else runs/gpu_bench/gpu_bench.md), with a .json beside it.

Time guard: a cell starts only if its estimate (defaults below for the first model, then the
previous model's cell scaled by parameter count) fits in what is left of --budget-s; an alarm at
the budget cuts off a running cell. Either way the table says what was skipped and why.
"""

from __future__ import annotations

import os

# PyTorch shares the GPU with jax in this process: jax must not grab 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo_update import bench_rlx_grpo_update, bench_torch_grpo_update, grpo_batch  # noqa: E402
from rollout import bench_hf, bench_rlx  # noqa: E402

from rlx.bench import matmul_peak_flops, rollout_flops, spec_peak_flops, timed, train_step_flops  # noqa: E402
from rlx.models import from_preset, load_config, param_count, to_hf  # noqa: E402
from rlx.models.attention import resolve_attention, sequence_attention  # noqa: E402

# 8 x 1024 tokens per update: XLA's CPU memory analysis of the 1.5B update puts its temporaries
# at ~100 GB at this size (~190 GB at 16 x 1024); on the GPU, with cuDNN attention, it should need
# far less, but torch's copy has to fit beside jax's pool. Try --batch 16 if memory allows.
GPU = dict(shapes="qwen2.5-0.5b,qwen2.5-1.5b", dtype="bfloat16", attention="cudnn", batch=8, seq=1024,
           steps=5, roll_batch=128, prompt_len=128, new_tokens=256, matmul_n=8192, budget_s=480.0)
SMOKE = dict(shapes="tiny", dtype="float32", attention="xla", batch=2, seq=32, steps=1, roll_batch=2,
             prompt_len=8, new_tokens=8, matmul_n=256, budget_s=300.0)
CELLS = ("torch train", "rlx train", "hf generate", "rlx rollout")
# Seconds a cell may take on the first (0.5B) model on an H200, compiles included, generously.
FIRST_ESTIMATE_S = {"export": 30.0, "torch train": 45.0, "rlx train": 90.0, "hf generate": 45.0,
                    "rlx rollout": 90.0}


class OutOfTime(Exception):
    pass


def _alarm(signum, frame):
    raise OutOfTime("the --budget-s alarm went off")


def torch_device(backend: str) -> tuple[str | None, str]:
    """(torch device or None, note): torch must run where jax runs, else the ratio means nothing."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        return None, f"PyTorch columns skipped: {e} (install torch and transformers to compare)"
    if backend == "gpu":
        if not torch.cuda.is_available():
            return None, f"PyTorch columns skipped: torch {torch.__version__} sees no CUDA device"
        return "cuda", ""
    return "cpu", ""


def pick_attention(requested: str, dtype: str, head_dim: int) -> tuple[str, str]:
    """`requested`, or xla with a note if cuDNN attention fails a forward+backward probe."""
    if requested != "cudnn":
        return requested, ""
    try:
        resolve_attention("cudnn", dtype, head_dim)
        q = jnp.ones((2, 128, 2, head_dim), dtype)
        kv = jnp.ones((2, 128, 1, head_dim), dtype)
        attend = sequence_attention("cudnn", jnp.ones((2, 128), jnp.int32), 2, 128)
        jax.block_until_ready(jax.grad(lambda q: attend(q, kv, kv).astype(jnp.float32).sum())(q))
        return "cudnn", ""
    except Exception as e:  # noqa: BLE001 -- any failure means: use xla and say why
        return "xla", f"cuDNN attention unavailable, fell back to xla: {type(e).__name__}: {str(e).splitlines()[0]}"


def torch_matmul_peak(device: str, dtype: str, n: int, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))

    def run():
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    _, best = timed(run, repeats)
    return 2.0 * n**3 / best


def versions() -> str:
    import flax
    import jaxlib

    parts = [f"jax {jax.__version__}", f"jaxlib {jaxlib.__version__}", f"flax {flax.__version__}"]
    try:
        import torch
        import transformers

        cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
        parts += [f"torch {torch.__version__}{cuda}", f"transformers {transformers.__version__}"]
    except ImportError:
        parts.append("torch/transformers not installed")
    return ", ".join(parts + [f"python {sys.version.split()[0]}"])


class Report:
    """Rows so far plus the header; rewritten to disk after every cell, so a kill loses nothing."""

    def __init__(self, args, out_dir: Path):
        self.args, self.out_dir, self.rows, self.notes = args, out_dir, [], []
        self.load_before = os.getloadavg()
        dev = jax.devices()[0]
        self.device = f"{dev.device_kind} (1 of {jax.device_count()} {jax.default_backend()} devices used)"
        # The table holds bf16 tensor-core peaks: no data-sheet MFU for a float32 run.
        gpu_bf16 = jax.default_backend() == "gpu" and args.dtype == "bfloat16"
        self.spec_peak = spec_peak_flops(dev.device_kind) if gpu_bf16 else None
        self.header = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": self.device, "versions": versions(),
            "command": os.environ.get("RLX_BENCH_COMMAND") or f"python {shlex.join(sys.argv)}"}
        self.peaks: dict[str, float] = {}

    def mfu(self, flops_per_s: float) -> str:
        spec = f"{100 * flops_per_s / self.spec_peak:.1f}%" if self.spec_peak else "n/a"
        return f"{spec} | {100 * flops_per_s / self.peaks['jax matmul']:.1f}%"

    def markdown(self) -> str:
        a, h = self.args, self.header
        load_now = os.getloadavg()
        busy = max(self.load_before[0], load_now[0]) > 0.5 * (os.cpu_count() or 1)
        spec = f"{self.spec_peak / 1e12:,.0f} TFLOP/s (data sheet)" if self.spec_peak else "not in the table"
        peaks = ", ".join(f"{k} {v / 1e12:,.3g} TFLOP/s" for k, v in self.peaks.items())
        lines = [f"# rlx vs PyTorch + transformers on {self.device}", "",
                 f"- date: {h['date']}", f"- command: `{h['command']}`", f"- versions: {h['versions']}",
                 f"- dense {a.dtype} peak: {spec}; measured now ({a.matmul_n}^3 {a.dtype} matmul): {peaks}",
                 f"- host: {os.cpu_count()} CPUs, load average 1/5/15 min before {_load(self.load_before)}, "
                 f"now {_load(load_now)}{' -- BUSY HOST, numbers unreliable' if busy else ''}",
                 f"- train: GRPO update on {a.batch} x {a.seq} tokens (response {a.seq * 3 // 4}), best of "
                 f"{a.steps} steps after the first; rollout: {a.roll_batch} prompts x ({a.prompt_len} + "
                 f"{a.new_tokens} new) tokens, temperature 1, no EOS", "",
                 "| model | cell | attention | seconds | tokens/s | TFLOP/s | MFU (data sheet) | MFU (measured "
                 "matmul) | rlx / torch | first call s |", "|---|---|---|---|---|---|---|---|---|---|"]
        speed = {(r["model"], r["cell"]): r["tokens_per_s"] for r in self.rows if "tokens_per_s" in r}
        for r in self.rows:
            if "tokens_per_s" not in r:
                lines.append(f"| {r['model']} | {r['cell']} | {r.get('attention', '')} | {r['status']} |||||||")
                continue
            base = {"rlx train": "torch train", "rlx rollout": "hf generate"}.get(r["cell"])
            other = speed.get((r["model"], base))
            ratio = f"{r['tokens_per_s'] / other:.2f}x" if base and other else ""
            lines.append(f"| {r['model']} | {r['cell']} | {r['attention']} | {r['seconds']:.3f} | "
                         f"{r['tokens_per_s']:,.0f} | {r['flops_per_s'] / 1e12:.3g} | {self.mfu(r['flops_per_s'])} | "
                         f"{ratio} | {r['first_s']:.1f} |")
        lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "gpu_bench.md").write_text(self.markdown())
        (self.out_dir / "gpu_bench.json").write_text(json.dumps(
            {**self.header, "peaks_flops": self.peaks, "spec_peak_flops": self.spec_peak, "rows": self.rows,
             "notes": self.notes, "args": vars(self.args)}, indent=1) + "\n")


def _load(load: tuple) -> str:
    return "/".join(f"{x:.2f}" for x in load)


class Budget:
    """Wall-clock guard: skip a cell whose estimate does not fit, cut one that overruns."""

    def __init__(self, seconds: float, smoke: bool):
        self.end, self.smoke = time.monotonic() + seconds, smoke
        self.seen: dict[str, tuple[float, float, int]] = {}  # cell -> (wall s, timed s, params)
        self.out = False

    def left(self) -> float:
        return self.end - time.monotonic()

    def estimate(self, cell: str, params: int) -> float:
        if cell not in self.seen:
            return 5.0 if self.smoke else FIRST_ESTIMATE_S[cell]
        wall, timed_s, prev = self.seen[cell]
        # Compiles barely grow with size (layers are scanned); the timed work grows with params.
        return 1.3 * (wall + max(params / prev - 1, 0) * timed_s)

    def run(self, cell: str, params: int, fn):
        """fn() -> (result, seconds of timed work); returns (result or None, status)."""
        need = self.estimate(cell, params)
        if self.out or self.left() < need:
            self.out = True
            return None, f"skipped: {max(self.left(), 0):.0f} s of the budget left, cell needs ~{need:.0f} s"
        start = time.monotonic()
        signal.alarm(max(int(self.left()), 1))
        try:
            result, timed_s = fn()
        except (OutOfTime, KeyboardInterrupt) as e:
            self.out = True
            return None, f"cut off after {time.monotonic() - start:.0f} s ({type(e).__name__}: time limit)"
        except Exception as e:  # noqa: BLE001 -- one failed cell (e.g. out of memory) must not lose the table
            return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        finally:
            signal.alarm(0)
        self.seen[cell] = (time.monotonic() - start, timed_s, params)
        return result, "ok"


def bench_model(shape: str, args, report: Report, budget: Budget, torch_dev: str | None) -> None:
    impl, note = pick_attention(args.attention, args.dtype, load_config(shape).head_dim)
    if note:
        report.notes.append(f"{shape}: {note}")
        print(f"NOTE {shape}: {note}", flush=True)
    model = from_preset(shape, seed=0, dtype=args.dtype, attention=impl)
    cfg, params = model.config, param_count(model.config)
    rng = np.random.default_rng(0)
    batch = grpo_batch(cfg.vocab_size, args.batch, args.seq, args.seq * 3 // 4)
    prompts = rng.integers(1, cfg.vocab_size, (args.roll_batch, args.prompt_len)).tolist()
    train_tokens, generated = args.batch * args.seq, args.roll_batch * args.new_tokens
    train_flops = train_step_flops(cfg, args.batch, args.seq)
    roll_flops = rollout_flops(cfg, args.roll_batch, args.prompt_len, args.new_tokens)

    def add(cell, attention, result, status, tokens=0, flops=0.0):
        row = {"model": shape, "cell": cell, "attention": attention, "status": status}
        if result is not None:
            seconds, first_s = result
            row.update(seconds=seconds, first_s=first_s, tokens_per_s=tokens / seconds, flops_per_s=flops / seconds)
        report.rows.append(row)
        report.write()
        print(f"{shape} {cell}: {status}" + (f", {seconds:.3f} s, {tokens / seconds:,.0f} tokens/s"
                                            if result is not None else ""), flush=True)

    with tempfile.TemporaryDirectory() as hf_dir:
        if torch_dev is not None:
            def export():  # all of it is writing bytes: it grows with the parameter count
                start = time.monotonic()
                to_hf(model, hf_dir, dtype=args.dtype)
                return None, time.monotonic() - start

            _, status = budget.run("export", params, export)
            if status != "ok":
                report.notes.append(f"{shape}: writing the HF weights {status}")
                torch_dev = None
        torch_attn = "sdpa (transformers default)"

        def torch_train():
            r = bench_torch_grpo_update(model, batch, timed, args.steps, device=torch_dev, dtype=args.dtype,
                                        hf_dir=hf_dir)
            return (r["step_s"], r["first_s"]), r["step_s"] * args.steps

        def rlx_train():
            r = bench_rlx_grpo_update(model, batch, timed, args.steps)
            return (r["step_s"], r["first_s"]), r["step_s"] * args.steps

        def hf_generate():
            start = time.monotonic()
            s = bench_hf(model, prompts, args.new_tokens, device=torch_dev, dtype=args.dtype, hf_dir=hf_dir)
            return (s, time.monotonic() - start - s), s

        def rlx_rollout():
            start = time.monotonic()
            s = bench_rlx(model, prompts, args.new_tokens, args.steps_per_sync)
            return (s, time.monotonic() - start - s), 2 * s

        # torch first, then its cache emptied: jax never hands memory back, torch does.
        for cell, fn, attention, tokens, flops in (
                ("torch train", torch_train, torch_attn, train_tokens, train_flops),
                ("hf generate", hf_generate, torch_attn, generated, roll_flops),
                ("rlx train", rlx_train, impl, train_tokens, train_flops),
                ("rlx rollout", rlx_rollout, "xla (KV-cache path)", generated, roll_flops)):
            if cell in ("torch train", "hf generate") and torch_dev is None:
                continue
            result, status = budget.run(cell, params, fn)
            add(cell, attention, result, status, tokens, flops)
            gc.collect()
            if torch_dev == "cuda":
                import torch

                torch.cuda.empty_cache()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU-sized defaults: tiny preset, float32, xla")
    for key, default in GPU.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=None,
                       help=f"default {default} (--smoke: {SMOKE.get(key, default)})")
    p.add_argument("--steps-per-sync", type=int, default=16)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--out-dir", default=None, help="default $OUT, else runs/gpu_bench")
    args = p.parse_args(argv)
    for key, default in (SMOKE if args.smoke else GPU).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    out_dir = Path(args.out_dir or os.environ.get("OUT") or Path(__file__).resolve().parents[1] / "runs/gpu_bench")

    signal.signal(signal.SIGALRM, _alarm)
    budget = Budget(args.budget_s, args.smoke)
    report = Report(args, out_dir)
    backend = jax.default_backend()
    if backend != "gpu" and not args.smoke:
        report.notes.append(f"no GPU: jax runs on {backend}; these are not GPU numbers")
    torch_dev, note = (None, "PyTorch columns skipped: --skip-torch") if args.skip_torch else torch_device(backend)
    if note:
        report.notes.append(note)
    report.peaks["jax matmul"] = matmul_peak_flops(args.matmul_n, 10, jnp.dtype(args.dtype))
    if torch_dev is not None:
        report.peaks["torch matmul"] = torch_matmul_peak(torch_dev, args.dtype, args.matmul_n)
    print(f"{report.device}; {versions()}; matmul peaks " +
          ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in report.peaks.items()), flush=True)
    report.notes.append("rlx train takes log-probs in logits_chunk=256 position chunks; the PyTorch update "
                        "materialises the response's whole float32 logits")
    for shape in args.shapes.split(","):
        if budget.out:
            report.notes.append(f"{shape}: skipped, the --budget-s of {args.budget_s:.0f} s ran out")
            continue
        bench_model(shape, args, report, budget, torch_dev)
        gc.collect()
    report.notes.append(f"wall time of the benchmark (after imports): {args.budget_s - budget.left():.0f} s "
                        f"of a {args.budget_s:.0f} s budget")
    report.write()
    print("\n" + report.markdown() + f"\nwritten: {out_dir / 'gpu_bench.md'}, {out_dir / 'gpu_bench.json'}")


if __name__ == "__main__":
    main()
