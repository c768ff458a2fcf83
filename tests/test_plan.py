"""The memory plan: exact shard bytes against hand counts, the activation formula, XLA calibration."""

import json
import math
import time

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rlx import models
from rlx.config import ConfigError, load_config
from rlx.kernels.policy_loss import token_logprobs
from rlx.launch import main
from rlx.plan import activation_bytes, layer_inventory, plan

TINY_PARAMS = 4_196_608  # models/tiny.yaml: V=512 D=256 L=4 H=4 K=2 hd=64 F=1024, untied


def cfg_for(*overrides):
    base = ["model.preset=tiny", "algo.advantage=grpo", "algo.n=4", "algo.kl_coef=0",
            "trainer.prompts_per_step=8", "trainer.mini_batches=1", "trainer.micro_batch_size=0",
            "engine.max_concurrent_decodes=16", "engine.max_prefill_length=16",
            "engine.max_new_tokens=16", "engine.max_cache_len=32"]
    return load_config(None, base + list(overrides))


def test_tiny_float32_on_fsdp2_tensor2():
    # data=1 fsdp=2 tensor=2: every matrix has an fsdp axis (embed) and a tensor axis (vocab,
    # heads, mlp), so each device holds 1/4 of it; the RMSNorm weights (embed only) hold 1/2.
    p = plan(cfg_for("mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"))
    norms = 4 * 2 * 256 + 256
    per_device = (TINY_PARAMS - norms) // 4 + norms // 2
    actor = p["roles"]["actor"]
    assert p["params"] == TINY_PARAMS
    assert actor["params"] == 4 * per_device
    assert actor["optimizer"] == 8 * per_device  # two float32 moments, no master copy
    assert actor["gradients"] == 4 * per_device  # one micro-batch: no accumulator
    assert p["roles"]["engine"]["shares_params_with"] == "actor"
    assert set(p["roles"]) == {"actor", "engine"}  # GRPO without KL: no reference


def test_tiny_bf16_on_tensor4_replicates_the_two_kv_heads():
    # tensor=4 does not divide n_kv_heads=2, so wk / wv (and the KV cache) stay whole on every
    # device; embed is not split (fsdp=1); vocab, heads and mlp split 4 ways.
    p = plan(cfg_for("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=4", "model.dtype=bfloat16",
                     "model.param_dtype=bfloat16"))
    L, D, V, H, K, hd, F = 4, 256, 512, 4, 2, 64, 1024
    per_device = (2 * (V // 4) * D  # embed + lm_head: vocab over tensor
                  + D  # final norm
                  + L * (2 * D  # the two norms
                         + 2 * D * (H // 4) * hd  # wq, wo: heads over tensor
                         + 2 * D * K * hd  # wk, wv: replicated
                         + 3 * D * (F // 4)))  # mlp over tensor
    actor = p["roles"]["actor"]
    assert actor["params"] == 2 * per_device
    assert actor["optimizer"] == 12 * per_device  # two float32 moments + a float32 master copy
    slots, cache = 16, 32
    assert p["roles"]["engine"]["kv_cache"] == 2 * L * slots * cache * K * hd * 2


def test_reference_and_prm_roles_follow_the_algorithm():
    prime = plan(cfg_for("mesh.data=2", "mesh.fsdp=2", "algo.advantage=prime"))
    assert list(prime["roles"]) == ["actor", "reference", "prm", "engine"]
    kl = plan(cfg_for("mesh.data=2", "mesh.fsdp=2", "algo.kl_coef=0.01"))
    assert list(kl["roles"]) == ["actor", "reference", "engine"]
    # Colocated: persistent state of all roles + the largest phase.
    assert prime["peak_bytes"] == prime["persistent_bytes"] + max(prime["phases"].values())
    apart = plan(cfg_for("mesh.data=2", "mesh.fsdp=2", "algo.advantage=prime", "plan.colocated=false"))
    assert apart["devices_total"] == 4 * 4
    assert apart["peak_bytes"] == max(r["total"] for r in apart["roles"].values())


def test_activation_formula_by_hand():
    m = models.load_config("tiny")  # float32
    rows, seq = 2, 8
    inv = layer_inventory(m, seq, heads=4, kv_heads=2, mlp=1024)
    c, D, H, K, hd, F, V, L = 4, 256, 4, 2, 64, 1024, 512, 4
    # docs/scaling.md's formula in float32 (no upcast copies, no separate probs cast): per token,
    # 6cD (input, 2 norms x 2, residual) + q,k,v + roped q,k + attn out + mask and two float32
    # score tensors (9 H T) + gate, up, silu residuals and product (6cF).
    one_layer = (6 * c * D + c * (H + 2 * K) * hd + c * (H + K) * hd + c * H * hd + 9 * H * seq
                 + 6 * c * F)
    assert sum(b for b, _ in inv.values()) == one_layer
    full = activation_bytes(inv, layers=L, rows=rows, seq=seq, vocab=V, policy="full")
    layer_backward = int(1.3 * one_layer)
    assert full == rows * seq * (L * c * D + max(layer_backward, 8 * V)) + rows * seq * seq
    none = activation_bytes(inv, layers=L, rows=rows, seq=seq, vocab=V, policy="none")
    assert none == rows * seq * (L * one_layer + max(layer_backward, 8 * V)) + rows * seq * seq
    fwd = activation_bytes(inv, layers=L, rows=rows, seq=seq, vocab=V, policy=None)
    assert fwd == rows * seq * (2 * c * D + max(one_layer, 8 * V)) + rows * seq * seq


@pytest.mark.parametrize("remat", ["none", "full"])
def test_activation_estimate_is_close_to_xla(remat):
    # XLA's temp buffers for a jitted grad (CPU, float32) against the plan's estimate: the
    # formula must stay in step with the model code, within a planning tolerance. (With short
    # sequences and a large vocabulary the plan is up to 2x high: it counts the logits'
    # cotangent, which XLA:CPU writes over the logits.)
    m = models.load_config("small", n_layers=2, remat=remat)
    rows, seq = 1, 1024
    graphdef, params = nnx.split(models.abstract_model(m))

    def loss(p, ids):
        logits = nnx.merge(graphdef, p)(ids)
        return -token_logprobs(logits[:, :-1], ids[:, 1:]).sum()

    ids = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
    measured = jax.jit(jax.grad(loss)).lower(params, ids).compile().memory_analysis().temp_size_in_bytes
    inv = layer_inventory(m, seq, m.n_heads, m.n_kv_heads, m.mlp_dim)
    est = activation_bytes(inv, layers=m.n_layers, rows=rows, seq=seq, vocab=m.vocab_size, policy=remat)
    assert 0.7 < est / measured < 1.4, (est, measured)


def test_full_size_32b_on_256_devices_is_shapes_only_and_fast():
    t0 = time.perf_counter()
    p = plan(load_config(None, ["model.preset=qwen2.5-32b", "model.dtype=bfloat16", "model.param_dtype=bfloat16",
                                "mesh.data=2", "mesh.fsdp=32", "mesh.tensor=4", "plan.device=v5p"]))
    assert time.perf_counter() - t0 < 30
    assert p["params"] == 32_763_876_352 and p["devices"] == 256 and p["hosts"] == 64
    # 32.8B params x (2 bf16 + 8 moments + 4 master) bytes over 128-way param sharding (fsdp x tensor),
    # up to the few small tensors (norms, biases) that do not split every way.
    ideal = p["params"] * 14 / 128
    actor = p["roles"]["actor"]
    assert ideal <= actor["params"] + actor["optimizer"] < 1.01 * ideal
    assert len(jax.devices()) < 256  # nothing was materialised on real devices


def test_mesh_errors_name_the_fix():
    with pytest.raises(ConfigError, match="plan.devices"):
        plan(cfg_for("mesh.data=-1", "mesh.fsdp=2"))
    assert plan(cfg_for("mesh.data=-1", "mesh.fsdp=2", "plan.devices=8"))["mesh"]["data"] == 4
    with pytest.raises(ConfigError, match="plan.devices=6"):
        plan(cfg_for("mesh.data=1", "mesh.fsdp=4", "plan.devices=6"))
    with pytest.raises(ConfigError, match="plan.device='tpu9'"):
        plan(cfg_for("mesh.data=1", "plan.device=tpu9"))


def test_uneven_micro_batch_is_flagged():
    p = plan(cfg_for("mesh.data=1", "mesh.fsdp=4", "trainer.micro_batch_size=2", "trainer.mini_batches=2"))
    assert p["train"]["rows_per_device"] == 2  # 2 rows cannot split 4 ways: replicated
    assert any("trainer.micro_batch_size" in w for w in p["warnings"])
    assert p["train"]["micro_batches"] == 8


def test_launch_plan_prints_table_and_writes_json(tmp_path, capsys):
    rc = main(["plan", "configs/quickstart.yaml", "model.preset=tiny", "mesh.data=1", "mesh.fsdp=2",
               "mesh.tensor=2", f"run.out_dir={tmp_path}", "run.name=p"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "actor" in out and "FITS" in out
    saved = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert saved["fits"] and saved["devices"] == 4
    assert math.isclose(saved["usable_bytes"], 95 * 2**30 * 0.9, rel_tol=1e-9)
