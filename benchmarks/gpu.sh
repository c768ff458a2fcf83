#!/usr/bin/env bash
# rlx vs PyTorch + transformers on one GPU, one run, under 10 minutes (see benchmarks/gpu.py).
#
#   benchmarks/gpu.sh            # NVIDIA H200 (any CUDA GPU): Qwen2.5-0.5B and -1.5B shapes, bf16, cuDNN attention
#   benchmarks/gpu.sh --smoke    # CPU: tiny preset, float32, a few tokens; checks the code paths end to end
#
# Needs jax with CUDA, flax, optax, numpy; torch + transformers are optional (without them the
# PyTorch columns are skipped with a note). No network. The markdown table is printed and written
# to $OUT/gpu_bench.md if OUT is set, else runs/gpu_bench/gpu_bench.md. Extra flags go to gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# jax and torch share the GPU in one process: jax allocates on demand, not 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Weights come from a local directory written by to_hf: never reach for the Hub.
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export RLX_BENCH_COMMAND="benchmarks/gpu.sh${*:+ $*}"
for arg in "$@"; do
  if [[ $arg == --smoke ]]; then
    export JAX_PLATFORMS=cpu  # a smoke run checks code paths, on CPU even where a GPU is present
  fi
done
# gpu.py stops starting cells at its --budget-s (480 s) and rewrites the table after each cell;
# this is the backstop: SIGINT at 560 s (the table is written on the way out), SIGKILL 15 s later.
exec timeout --signal=INT --kill-after=15 560 "${PYTHON:-python}" benchmarks/gpu.py "$@"
