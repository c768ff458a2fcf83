"""Rollout throughput: the rlx engine against transformers `generate` on the same weights.

    PYTHONPATH=. python benchmarks/rollout.py                      # batch 64, 64 + 128 tokens, tiny and small
    PYTHONPATH=. python benchmarks/rollout.py --batch 8 --new-tokens 16 --shapes tiny   # a quick look

Both sides sample at temperature 1 with a KV cache and generate exactly --new-tokens per
sequence (no EOS). Prints a markdown table: generated tokens/s of each (rlx through an Engine
built once, and through the convenience call `rollout(model, ...)` after a first call), the
Engine's ratio to transformers, and its achieved FLOP/s against the fp32 matmul peak measured
in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

from rlx.bench import matmul_peak_flops, rollout_flops
from rlx.engine import Engine, EngineConfig, rollout
from rlx.models import from_preset, to_hf


def bench_rlx(model, prompts, new_tokens: int, steps_per_sync: int) -> float:
    batch, plen = len(prompts), len(prompts[0])
    engine = Engine(model, EngineConfig(max_concurrent_decodes=batch, max_prefill_length=plen,
                                        max_cache_len=plen + new_tokens, steps_per_sync=steps_per_sync))
    rollout(None, prompts, max_new_tokens=new_tokens, engine=engine, seed=0)  # compile
    t = time.perf_counter()
    out = rollout(None, prompts, max_new_tokens=new_tokens, engine=engine, seed=1)
    seconds = time.perf_counter() - t
    assert out.response_mask.sum() == batch * new_tokens
    return seconds


def bench_rlx_convenience(model, prompts, new_tokens: int) -> float:
    """`rollout(model, ...)` with no engine: the second call reuses the first call's engine."""
    rollout(model, prompts, max_new_tokens=new_tokens, seed=0)  # builds the engine, compiles
    t = time.perf_counter()
    out = rollout(model, prompts, max_new_tokens=new_tokens, seed=1)
    seconds = time.perf_counter() - t
    assert out.response_mask.sum() == len(prompts) * new_tokens
    return seconds


def bench_hf(model, prompts, new_tokens: int) -> float:
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, tmp)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    ids = torch.tensor(prompts)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                  top_p=1.0, use_cache=True, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        hf.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        t = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        seconds = time.perf_counter() - t
    assert out.shape == (len(prompts), len(prompts[0]) + new_tokens)
    return seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--shapes", default="tiny,small", help="comma-separated model presets")
    p.add_argument("--steps-per-sync", type=int, default=16)
    args = p.parse_args(argv)

    peak = matmul_peak_flops()
    rows = []
    for shape in args.shapes.split(","):
        model = from_preset(shape)
        rng = np.random.default_rng(0)
        prompts = rng.integers(1, model.config.vocab_size, (args.batch, args.prompt_len)).tolist()
        generated = args.batch * args.new_tokens
        t_rlx = bench_rlx(model, prompts, args.new_tokens, args.steps_per_sync)
        t_conv = bench_rlx_convenience(model, prompts, args.new_tokens)
        t_hf = bench_hf(model, prompts, args.new_tokens)
        flops = rollout_flops(model.config, args.batch, args.prompt_len, args.new_tokens) / t_rlx
        rows.append((shape, generated / t_rlx, generated / t_conv, generated / t_hf, t_hf / t_rlx, flops / 1e9,
                     100 * flops / peak))

    print(f"\nbatch {args.batch}, prompt {args.prompt_len}, new tokens {args.new_tokens}, temperature 1; "
          f"{jax.devices()[0].platform} fp32 matmul peak {peak / 1e9:.1f} GFLOP/s\n")
    print("| shape | rlx tokens/s | rlx rollout(model) tokens/s | transformers tokens/s | speedup | rlx GFLOP/s "
          "| % of peak |")
    print("|---|---|---|---|---|---|---|")
    for shape, rlx_tps, conv_tps, hf_tps, speedup, gflops, pct in rows:
        print(f"| {shape} | {rlx_tps:,.0f} | {conv_tps:,.0f} | {hf_tps:,.0f} | {speedup:.2f}x | {gflops:.1f} "
              f"| {pct:.0f}% |")


if __name__ == "__main__":
    main()
