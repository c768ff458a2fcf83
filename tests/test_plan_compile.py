"""plan.compile: every phase's real program compiles on abstract inputs and reports XLA's memory."""

import jax
import pytest

from rlx import plan_compile
from rlx.config import ConfigError, load_config
from rlx.launch import main

ALL_PHASES = {"actor scoring", "actor update", "reference scoring", "prm update", "sft step",
              "engine prefill", "engine generate"}


def cfg_for(*overrides):
    # PRIME with a KL term and an SFT warm start: every phase the compile path knows.
    base = ["model.preset=tiny", "algo.advantage=prime", "algo.n=2", "algo.kl_coef=0.01",
            "trainer.prompts_per_step=4", "trainer.mini_batches=2", "trainer.micro_batch_size=2",
            "engine.max_concurrent_decodes=4", "engine.max_prefill_length=16", "engine.max_new_tokens=16",
            "engine.max_cache_len=32", "engine.steps_per_sync=2", "sft.steps=1", "sft.batch_size=2",
            "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]
    return load_config(None, base + list(overrides))


def test_bad_topology_name_fails_at_load_with_examples():
    with pytest.raises(ConfigError, match=r"plan.topology='v5p-8'.*v5p:2x2x1"):
        load_config(None, ["plan.topology=v5p-8"])
    assert load_config(None, ["plan.topology=v5p:4x4x2"]).plan.topology == "v5p:4x4x2"


def test_topology_without_libtpu_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(plan_compile, "libtpu_available", lambda: False)
    rc = main(["plan", "configs/quickstart.yaml", "model.preset=tiny", "mesh.data=1", "mesh.fsdp=4",
               "plan.compile=true", "plan.topology=v5p:2x2x1", "run.out_dir=/tmp/rlx-test-plan"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "pip install -e '.[tpu]'" in err, err


def test_every_phase_compiles_on_the_local_cpu_and_reports_memory():
    cfg = cfg_for()
    c = plan_compile.compile_plan(cfg)
    assert set(c["phases"]) == ALL_PHASES
    for name, r in c["phases"].items():
        assert "error" not in r, (name, r.get("error"))
        m = r["memory"]
        assert m["total"] > 0 and r["fits"], (name, m)
        assert m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["code"]
    b = plan_compile.batch_shape(cfg)
    assert (b["seq"], b["step_rows"], b["mini"], b["micro_batches"]) == (32, 8, 4, 2)
    text = plan_compile.format_compiled(c)
    assert text.count("FITS") == len(ALL_PHASES)


def test_a_phase_that_fails_is_reported_beside_the_others(monkeypatch):
    real = plan_compile.phases

    def broken(cfg, mesh):
        out = real(cfg, mesh)

        def fail():
            raise ValueError("no such program")

        return [plan_compile.Phase("actor update", "x", fail, 0)] + [p for p in out if p.name == "engine prefill"]

    monkeypatch.setattr(plan_compile, "phases", broken)
    c = plan_compile.compile_plan(cfg_for())
    assert "no such program" in c["phases"]["actor update"]["error"] and not c["fits"]
    assert c["phases"]["engine prefill"]["fits"]
    assert "DID NOT COMPILE" in plan_compile.format_compiled(c)


@pytest.mark.slow
@pytest.mark.skipif(not plan_compile.libtpu_available(), reason="needs libtpu (pip install -e '.[tpu]')")
def test_aot_compile_for_a_v5p_slice_on_a_cpu_host(tmp_path, capsys):
    # v5p:2x2x1 is 4 chips; the tiny model on fsdp=4 compiles for TPU v5 without any TPU here.
    # 64 + 64 tokens: splash attention (model.attention=auto on TPU) tiles by 128.
    rc = main(["plan", "configs/quickstart.yaml", "model.preset=tiny", "model.dtype=bfloat16",
               "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=1", "algo.kl_coef=0.01",
               "engine.max_prefill_length=64", "engine.max_new_tokens=64", "engine.max_cache_len=128",
               "plan.compile=true", "plan.topology=v5p:2x2x1", f"run.out_dir={tmp_path}", "run.name=p"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "compiled for v5p:2x2x1: 4 x TPU v5" in out
    for phase in ("actor scoring", "actor update", "reference scoring", "engine prefill", "engine generate"):
        line = next(l for l in out.splitlines() if l.startswith(phase))
        assert "FITS" in line, line


@pytest.mark.skipif(not plan_compile.libtpu_available(), reason="needs libtpu (pip install -e '.[tpu]')")
def test_auto_attention_lowers_the_splash_kernel_for_a_tpu_slice():
    # The host is a CPU, but the program is for TPU: model.attention=auto must pick splash, and
    # as a Mosaic kernel (not Pallas interpret mode), from the mesh's devices.
    cfg = load_config("configs/quickstart.yaml", [
        "model.preset=tiny", "model.dtype=bfloat16", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=1",
        "engine.max_prefill_length=64", "engine.max_new_tokens=64", "engine.max_cache_len=128",
        "sft.steps=0", "plan.topology=v5p:2x2x1"])
    mesh = plan_compile.compile_mesh(cfg, plan_compile.target_devices(cfg.plan.topology))
    scoring = next(p for p in plan_compile.phases(cfg, mesh) if p.name == "actor scoring")
    with jax.set_mesh(mesh):
        text = scoring.lower().as_text()
    assert "tpu_custom_call" in text
