"""Join a multi-process JAX job described by environment variables.

`rlx.launch` calls `maybe_initialize()` before anything touches a device. The launchers set:

  RLX_COORDINATOR       host:port of process 0 (JAX_COORDINATOR_ADDRESS is read as well)
  RLX_NUM_PROCESSES     processes in the job
  RLX_PROCESS_ID        this process, 0 .. RLX_NUM_PROCESSES-1
  RLX_LOCAL_DEVICE_IDS  optional, e.g. "3": the GPUs this process drives (one process per GPU)
  RLX_DISTRIBUTED=auto  instead of the above: let JAX find the cluster itself (Cloud TPU pod
                        slices, SLURM, Open MPI); tpu_scripts/run.sh sets this

Nothing set (or one process) means a single-process run and nothing happens.

`python -m rlx.distributed run-dir [KIND] [CONFIG] [key=value ...]` prints the run directory
`python -m rlx.launch` would use with the same arguments; the launch scripts put logs there.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r} is not an integer; set it to a whole number") from None


def _use_gloo() -> None:
    import jax

    # CPU processes need a cross-process collectives backend for psum & co; the setting only
    # affects the CPU client, so it is harmless on TPU and GPU hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def settings(env: Mapping[str, str] | None = None) -> dict | None:
    """The `jax.distributed.initialize` arguments the environment asks for; None = one process."""
    env = os.environ if env is None else env
    if env.get("RLX_DISTRIBUTED", "").lower() == "auto":
        return {}
    if "RLX_NUM_PROCESSES" not in env:
        return None
    num = _int(env, "RLX_NUM_PROCESSES")
    if num < 1:
        raise ValueError(f"RLX_NUM_PROCESSES={num} must be >= 1")
    if num == 1:
        return None
    coordinator = env.get("RLX_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator or ":" not in coordinator:
        raise ValueError(f"RLX_NUM_PROCESSES={num} but RLX_COORDINATOR={coordinator!r}; set it to "
                         f"host:port of process 0, e.g. RLX_COORDINATOR=localhost:12355")
    if "RLX_PROCESS_ID" not in env:
        raise ValueError(f"RLX_NUM_PROCESSES={num} but RLX_PROCESS_ID is not set; give each process "
                         f"its index 0..{num - 1}")
    pid = _int(env, "RLX_PROCESS_ID")
    if not 0 <= pid < num:
        raise ValueError(f"RLX_PROCESS_ID={pid} is outside 0..{num - 1} (RLX_NUM_PROCESSES={num})")
    args = {"coordinator_address": coordinator, "num_processes": num, "process_id": pid}
    if env.get("RLX_LOCAL_DEVICE_IDS"):
        args["local_device_ids"] = [int(x) for x in env["RLX_LOCAL_DEVICE_IDS"].split(",")]
    return args


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
    """Call `jax.distributed.initialize` when the environment describes a multi-process job.

    Returns True when this process is (now) part of one. Must run before the first use of a
    device: JAX refuses to initialise after its backends have started.
    """
    import jax  # here, so that `run-dir` (a shell helper) does not pay for importing jax

    if jax.distributed.is_initialized():
        return True
    args = settings(env)
    if args is None:
        return False
    _use_gloo()
    jax.distributed.initialize(**args)
    return True


def run_dir(argv: list[str]):
    """The run directory of `python -m rlx.launch *argv`."""
    from rlx.config import load_config
    from rlx.launch import DEFAULT_CONFIG, parse_args

    ns = parse_args(argv)
    overrides = list(ns.overrides) + ([f"run.kind={ns.kind}"] if ns.kind else [])
    return load_config(ns.config or DEFAULT_CONFIG, overrides).run_dir


if __name__ == "__main__":
    if sys.argv[1:2] != ["run-dir"]:
        sys.exit("usage: python -m rlx.distributed run-dir [KIND] [CONFIG] [key=value ...]")
    print(run_dir(sys.argv[2:]))
