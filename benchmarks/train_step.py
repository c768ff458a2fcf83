"""Train-step throughput: rlx forward+backward vs PyTorch (transformers) on the same weights.

    python benchmarks/train_step.py                      # small shape, batch 16 x 256 tokens
    python benchmarks/train_step.py --batch 4 --seq 128 --steps 2 --shape tiny   # quick look
    python benchmarks/train_step.py --only-logits --logits-chunk 48   # chunked vs whole-response log-probs

Everything is measured in the same run on the same machine: rlx (jitted loss + grad), the
same model in PyTorch (built from the same weights via `to_hf`), and the float32 matmul peak
(a large jitted jnp matmul). Ratios are printed against torch and against that peak.

FLOPs per step = 6 * N * tokens + 12 * n_layers * B * T^2 * n_heads * head_dim, where
  N = matmul parameters: everything except the input embedding table (a gather, no FLOPs);
      the output projection counts even when tied, since it is a real [D, V] matmul;
  6 = 2 (multiply-add) x 3 (forward, and backward for activations and for weights);
  the attention term is QK^T and AV (2 matmuls x 2 x T^2 x H x Dh per layer and sequence,
  x 3 for forward+backward), counted over the full T x T score matrix that is computed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo_update import bench_rlx_grpo_update, bench_torch_grpo_update, grpo_batch  # noqa: E402
from rlx.bench import matmul_peak_flops, train_step_flops  # noqa: E402
from rlx.bench import timed as _timed  # noqa: E402
from rlx.models import Transformer, from_preset, param_count, to_hf  # noqa: E402


def _next_token_loss(logits_BxTxV, input_ids_BxT):
    logprobs = jax.nn.log_softmax(logits_BxTxV[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logprobs, input_ids_BxT[:, 1:, None], axis=-1)
    return -jnp.mean(picked)


def bench_model_fwd_bwd(model: Transformer, input_ids_BxT: np.ndarray, steps: int = 3) -> dict:
    """Time one jitted next-token loss + gradient w.r.t. all parameters; returns seconds and loss."""
    graphdef, state = nnx.split(model, nnx.Param)

    @jax.jit
    def loss_and_grad(params, ids):
        return jax.value_and_grad(lambda p: _next_token_loss(nnx.merge(graphdef, p)(ids), ids))(params)

    ids = jnp.asarray(input_ids_BxT, jnp.int32)
    out = {}

    def run():
        out["loss"], grads = jax.block_until_ready(loss_and_grad(state, ids))

    compile_s, step_s = _timed(run, steps)
    return dict(step_s=step_s, first_s=compile_s, loss=float(out["loss"]))


def bench_torch_fwd_bwd(model: Transformer, input_ids_BxT: np.ndarray, steps: int = 3) -> dict:
    """The same computation in PyTorch: HF model loaded from `to_hf(model)`."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, tmp, dtype="float32")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).train()
    ids = torch.tensor(np.asarray(input_ids_BxT), dtype=torch.long)
    out = {}

    def run():
        hf.zero_grad(set_to_none=True)
        logits = hf(ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        out["loss"] = loss.item()

    first_s, step_s = _timed(run, steps)
    return dict(step_s=step_s, first_s=first_s, loss=out["loss"])


def bench_logits_chunking(shape: str, remat: str, batch: dict, chunk: int, steps: int) -> list[tuple[str, dict]]:
    """The GRPO update with the response's logits whole (logits_chunk=0) and in chunks."""
    rows = []
    for c in (0, chunk):
        model = from_preset(shape, seed=0, remat=remat, logits_chunk=c)
        rows.append((f"logits_chunk={c}", bench_rlx_grpo_update(model, batch, _timed, steps)))
    return rows


def print_table(rows: list[tuple[str, dict]], flops: float, tokens: int, peak: float, baseline: str) -> None:
    base_s = dict(rows)[baseline]["step_s"]
    print(f"{'impl':<22}{'step ms':>10}{'tokens/s':>12}{'GFLOP/s':>10}{'% peak':>9}{'speedup':>9}{'loss':>9}")
    for name, r in rows:
        achieved = flops / r["step_s"]
        print(
            f"{name:<22}{r['step_s'] * 1e3:>10.1f}{tokens / r['step_s']:>12.0f}{achieved / 1e9:>10.1f}"
            f"{100 * achieved / peak:>8.1f}%{base_s / r['step_s']:>8.2f}x{r['loss']:>9.4f}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", help="a models/*.yaml preset")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compile) one")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-grpo", action="store_true", help="skip the GRPO update-step rows")
    parser.add_argument("--logits-chunk", type=int, default=48,
                        help="chunk size for the chunked vs whole-response log-probs rows")
    parser.add_argument("--only-logits", action="store_true", help="run only the logits-chunk rows")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()

    model = from_preset(args.shape, seed=0, remat=args.remat)
    cfg = model.config
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.seq))
    tokens, flops = args.batch * args.seq, train_step_flops(cfg, args.batch, args.seq)
    peak = matmul_peak_flops()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), "
          f"cpus: {os.cpu_count()}")  # fmt: skip
    print(f"shape {args.shape}: {param_count(cfg):,} params, batch {args.batch} x {args.seq} tokens, "
          f"{flops / 1e9:.1f} GFLOP per step; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")  # fmt: skip

    if args.only_logits:
        _logits_rows(args, cfg, flops, tokens, peak, load_before)
        return
    rows = [("rlx jax fwd+bwd", bench_model_fwd_bwd(model, ids, args.steps))]
    if not args.skip_torch:
        rows.append(("torch fwd+bwd", bench_torch_fwd_bwd(model, ids, args.steps)))
    print_table(rows, flops, tokens, peak, baseline=rows[-1][0])
    print(f"(first rlx step incl. compile: {rows[0][1]['first_s']:.1f} s; speedup is vs {rows[-1][0]})")
    if args.skip_grpo:
        return
    # The whole GRPO update (PPO-clip loss on the last 3/4 of each sequence, grad-norm clip,
    # AdamW): its FLOPs are the fwd+bwd's plus the optimizer's, which are negligible.
    batch = grpo_batch(cfg.vocab_size, args.batch, args.seq, args.seq * 3 // 4)
    rows = [("rlx GRPO update", bench_rlx_grpo_update(model, batch, _timed, args.steps))]
    if not args.skip_torch:
        rows.append(("torch GRPO update", bench_torch_grpo_update(model, batch, _timed, args.steps)))
    print()
    print_table(rows, flops, tokens, peak, baseline=rows[-1][0])
    _logits_rows(args, cfg, flops, tokens, peak, load_before)


def _logits_rows(args, cfg, flops: float, tokens: int, peak: float, load_before: tuple) -> None:
    """Chunked vs whole-response log-probs in the GRPO update, with the load average around them:
    on a shared machine a ratio measured while others compute means little."""
    batch = grpo_batch(cfg.vocab_size, args.batch, args.seq, args.seq * 3 // 4)
    rows = bench_logits_chunking(args.shape, args.remat, batch, args.logits_chunk, args.steps)
    load_after = os.getloadavg()
    print()
    print_table(rows, flops, tokens, peak, baseline=rows[0][0])
    ratio = rows[1][1]["step_s"] / rows[0][1]["step_s"]
    busy = max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1)
    print(f"chunked / whole step time: {ratio:.3f} (response {args.seq * 3 // 4} tokens, chunk "
          f"{args.logits_chunk}); load average 1/5/15 min before {_load(load_before)}, after {_load(load_after)}"
          f"{' -- BUSY MACHINE, the ratio is unreliable' if busy else ''}")


def _load(load: tuple) -> str:
    return "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
