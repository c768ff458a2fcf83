"""`python -m rlx.launch bench CONFIG`: what one RL step's two halves achieve with this config's
model, engine and batch on this machine -- rollout tokens/s and update time -- each as FLOP/s
against the matmul peak measured in the same run (the machine may be shared and noisy, so only
the ratio travels). Also the FLOP counts and timing helpers that benchmarks/ shares.

Rollouts: trainer.prompts_per_step x algo.n random prompts of max_prefill_length / 2 tokens,
engine.max_new_tokens new tokens each (no EOS, so every sequence runs to the end), at
engine.temperature. Update: one GRPO train step (loss, grad, AdamW) on a mini-batch of the
same sequences, micro-batched as configured. Results: runs/<name>/bench.json and a table.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def timed(run_step: Callable[[], object], steps: int) -> tuple[float, float]:
    """(first call incl. compile, best of `steps` later calls) in seconds."""
    start = time.perf_counter()
    run_step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    return first, min(times)


def matmul_peak_flops(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
    """Measured matmul FLOP/s on the default device (best of `repeats` n x n x n products)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    _, best = timed(lambda: matmul(a, b).block_until_ready(), repeats)
    return 2.0 * n**3 / best


def train_step_flops(cfg, batch: int, seq: int) -> float:
    """Forward + backward FLOPs over batch x seq tokens: 6 N tokens for the N matmul parameters
    (all but the input embedding gather; a tied output projection still counts) plus
    12 n_layers B T^2 H Dh for QK^T and AV over the full score matrix."""
    from rlx.models import param_count

    matmul_params = param_count(cfg) - cfg.vocab_size * cfg.d_model
    if cfg.tie_embeddings:
        matmul_params += cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.n_layers * batch * seq**2 * cfg.n_heads * cfg.head_dim
    return 6.0 * matmul_params * batch * seq + attention


def rollout_flops(cfg, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Forward FLOPs of prefill + decode: 2 x matmul params per token + attention over the context."""
    d, h, kv, hd, f, v = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    per_layer = d * (h + 2 * kv) * hd + h * hd * d + 3 * d * f
    matmul = 2 * (cfg.n_layers * per_layer + d * v)
    tokens = prompt_len + new_tokens
    # Token at position p attends to p + 1 entries: QK^T and PV, 2 FLOPs per multiply-add each.
    attention = 4 * cfg.n_layers * h * hd * tokens * (tokens + 1) / 2
    return batch * (tokens * matmul + attention)


def run(cfg) -> dict:
    from flax import nnx

    from rlx.build import build_mesh, build_model
    from rlx.config import dump_yaml
    from rlx.engine import Engine, EngineConfig, SamplingConfig, rollout
    from rlx.metrics import is_chief, prepare_run_dir, write_json
    from rlx.train import batch as layout
    from rlx.train.optim import adamw, init_state
    from rlx.train.trainer import loss_spec
    from rlx.train.update import train_step

    run_dir = prepare_run_dir(cfg.run_dir, dump_yaml(cfg))
    model = build_model(cfg.model, seed=cfg.run.seed, mesh=build_mesh(cfg.mesh))
    mcfg, e = model.config, cfg.engine
    peak = matmul_peak_flops(dtype=jnp.dtype(mcfg.dtype))
    n_seq, plen, new = cfg.trainer.prompts_per_step * cfg.algo.n, max(e.max_prefill_length // 2, 1), e.max_new_tokens
    rng = np.random.default_rng(cfg.run.seed)
    prompts = rng.integers(1, mcfg.vocab_size, (n_seq, plen)).tolist()

    engine = Engine(model, EngineConfig(
        max_concurrent_decodes=e.max_concurrent_decodes, max_prefill_length=e.max_prefill_length,
        max_cache_len=e.max_cache_len, steps_per_sync=e.steps_per_sync,
        sampling=SamplingConfig(temperature=e.temperature), eos_ids=()))
    kw = dict(max_new_tokens=new, temperature=e.temperature, engine=engine)
    rollout(None, prompts[:min(n_seq, e.max_concurrent_decodes)], seed=0, **kw)  # compile
    t0 = time.perf_counter()
    ro = rollout(None, prompts, seed=1, **kw)
    roll_s = time.perf_counter() - t0

    mini = n_seq // cfg.trainer.mini_batches
    ids, mask, positions = layout.concat(ro.prompt_ids[:mini], ro.prompt_mask[:mini], ro.response_ids[:mini],
                                         ro.response_mask[:mini])
    width = ro.response_ids.shape[1]
    batch = {"ids": ids, "mask": mask, "positions": positions, "response_mask": ro.response_mask[:mini],
             "old_logp": ro.logprobs[:mini], "ref_logp": ro.logprobs[:mini],
             "adv": rng.standard_normal((mini, 1)).repeat(width, 1).astype(np.float32)}
    micro = cfg.trainer.micro_batch_size or mini
    spec = loss_spec(cfg, mini // micro, cfg.engine.max_new_tokens)
    graphdef, params = nnx.split(model)
    optimizer = adamw(cfg.optim.lr, 10, grad_clip=cfg.optim.grad_clip)
    state = {"params": jax.tree.map(jnp.copy, params)}
    state["opt"] = init_state(optimizer, state["params"])
    device = jax.tree.map(jnp.asarray, batch)

    def update():
        state["params"], state["opt"], m = train_step(graphdef, optimizer, spec, state["params"], state["opt"],
                                                      device, jnp.float32(0.0), jnp.float32(max(e.temperature, 1e-6)))
        jax.block_until_ready(m)

    compile_s, update_s = timed(update, 3)
    seq = ids.shape[1]
    roll_flops = rollout_flops(mcfg, n_seq, plen, new) / roll_s
    upd_flops = train_step_flops(mcfg, mini, seq) / update_s
    result = {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "dtype": mcfg.dtype,
        "matmul_peak_gflops": peak / 1e9,
        "rollout": {"sequences": n_seq, "prompt_tokens": plen, "new_tokens": new, "seconds": roll_s,
                    "tokens_per_s": n_seq * new / roll_s, "gflops": roll_flops / 1e9,
                    "fraction_of_peak": roll_flops / peak},
        "update": {"sequences": mini, "tokens": mini * seq, "seconds": update_s, "compile_seconds": compile_s,
                   "tokens_per_s": mini * seq / update_s, "gflops": upd_flops / 1e9,
                   "fraction_of_peak": upd_flops / peak},
    }
    write_json(run_dir / "bench.json", result)
    if is_chief():
        print(f"\n{result['device']}, {mcfg.dtype} matmul peak {peak / 1e9:,.1f} GFLOP/s (measured now)\n")
        print("| phase | work | seconds | tokens/s | GFLOP/s | of peak |\n|---|---|---|---|---|---|")
        for name, work in (("rollout", f"{n_seq} x ({plen} + {new}) tokens"),
                           ("update", f"{mini} x {seq} tokens, loss + grad + AdamW")):
            r = result[name]
            print(f"| {name} | {work} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | {r['gflops']:,.1f} | "
                  f"{100 * r['fraction_of_peak']:.1f}% |")
        print(f"\nresults: {run_dir}/bench.json")
    return result
