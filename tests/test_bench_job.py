"""`python -m rlx.launch bench`: rollout and update throughput against the measured peak."""

import json

from rlx import launch
from rlx.bench import rollout_flops, spec_peak_flops, train_step_flops
from rlx.models import load_config as model_config

from test_rl_loop import SMALL


def test_bench_job_writes_measurements(tmp_path, capsys):
    args = ["bench", "configs/quickstart.yaml", *SMALL, f"run.out_dir={tmp_path}", "run.name=b"]
    assert launch.main(args) == 0
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert result["matmul_peak_gflops"] > 0
    roll, upd = result["rollout"], result["update"]
    assert roll["sequences"] == 16 and roll["new_tokens"] == 16  # prompts_per_step 4 x n 4
    assert roll["tokens_per_s"] > 0 and 0 < roll["fraction_of_peak"]
    assert upd["sequences"] == 16 and upd["seconds"] > 0 and 0 < upd["fraction_of_peak"]
    assert "| rollout |" in capsys.readouterr().out


def test_flop_counts_by_hand():
    cfg = model_config("tiny")
    d, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    # One token, no context beyond itself: 2 FLOPs per matmul weight + the 1-entry attention.
    per_layer = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim + cfg.n_heads * cfg.head_dim * d \
        + 3 * d * cfg.mlp_dim
    want = 2 * (L * per_layer + d * V) + 4 * L * cfg.n_heads * cfg.head_dim
    assert rollout_flops(cfg, 1, 1, 0) == want
    # Training FLOPs are 3x the forward matmul FLOPs (+ attention) per token.
    assert train_step_flops(cfg, 1, 1) > 3 * 2 * L * per_layer


def test_spec_peak_lookup_by_device_kind():
    # Kinds as jax spells them; the more specific name wins over the shorter one it contains.
    assert spec_peak_flops("NVIDIA H200") == 989e12
    assert spec_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert spec_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert spec_peak_flops("NVIDIA L40S") == 362e12 and spec_peak_flops("NVIDIA L4") == 121e12
    assert spec_peak_flops("cpu") is None
