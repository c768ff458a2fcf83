"""A multi-process RL run (2 processes x 2 CPU devices, gloo collectives) equals the same run
in one process with 4 devices: the same rewards and losses step by step, the same exported
weights, written once, and a collective checkpoint.

Both runs go through `python -m rlx.launch`'s train job (`rlx.train.rl.run`): held-out
evaluation, 2 GRPO steps on a data=2 x fsdp=2 mesh, checkpoint, Hugging Face export. The
reward is a toy one registered in the child (the parity of the count of '1's in the response),
so that an untrained model gets mixed rewards, non-zero advantages and a real update.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_rl_loop import SMALL

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys
from rlx.distributed import maybe_initialize
maybe_initialize()
from rlx.config import load_config
from rlx.rewards import REWARD_FNS
from rlx.train import rl

REWARD_FNS["toy"] = lambda prompts, responses, **_: [float(r.count("1") % 2) for r in responses]
rl.run(load_config(None, sys.argv[1:]))
"""

OVERRIDES = [o for o in SMALL if not o.startswith("trainer.steps")] + [
    "trainer.steps=2", "mesh.data=2", "mesh.fsdp=2", "rewards.fns=[{name: toy}]",
    "trainer.mini_batches=2", "algo.kl_coef=0.01", "checkpoint.every=1", "sft.steps=0"]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLX_")}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def _weights(run_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(run_dir / "final" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("algo", [
    [],  # GRPO with a KL reference
    # PURE on the implicit PRM: the PRM role, its update and its checkpointed state as well.
    ["algo.advantage=pure", 'pure.separators=["\\n"]', "prime.prm_lr=1e-3"],
], ids=["grpo", "pure"])
def test_two_processes_match_one_process(tmp_path, algo):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    common = OVERRIDES + algo + [f"run.out_dir={tmp_path}"]
    one = subprocess.run([sys.executable, str(script), *common, "run.name=one"], env=_env(4),
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    logs = tmp_path / "logs"
    two = subprocess.run(["bash", "launch/local.sh", "2", "--", sys.executable, str(script), *common,
                          "run.name=two"], env=_env(2, RLX_LOG_DIR=str(logs)),
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    proc_logs = {i: (logs / f"proc{i}.log").read_text() for i in range(2)}
    assert two.returncode == 0, two.stderr[-3000:] + proc_logs[0][-3000:] + proc_logs[1][-3000:]

    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in b] == [1, 2]  # one line per step: only process 0 writes
    assert any(r["reward/mean"] > 0 for r in a) and a[0]["actor/grad_norm"] > 0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ("reward/mean", "reward/toy", "response/length_mean", "rollout/sequences"):
            assert ra[key] == rb[key], (key, ra[key], rb[key])
        for key in ("actor/loss", "actor/pg_loss", "actor/kl", "actor/grad_norm", "actor/entropy",
                    *(k for k in ra if k.startswith(("prm/", "pure/")))):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), key

    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=0, atol=1e-5, err_msg=name)
    summary_a = json.loads((tmp_path / "one" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary_a["reward_curve"] == summary_b["reward_curve"]
    assert summary_a["heldout_accuracy_after"] == summary_b["heldout_accuracy_after"]
    # The collective checkpoint: steps 1 and 2, each complete (orbax renames a finished save).
    steps = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["1", "2"]
