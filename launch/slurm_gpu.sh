#!/usr/bin/env bash
# Multi-node GPU job under SLURM: one JAX process per node (driving its 8 GPUs) by default, or
# one per GPU with `--ntasks-per-node=8` (each process then pins its GPU via SLURM_LOCALID).
#
#   sbatch --nodes=2 launch/slurm_gpu.sh configs/quickstart.yaml mesh.fsdp=16
#   sbatch --nodes=2 --ntasks-per-node=8 launch/slurm_gpu.sh CONFIG [key=value ...]
#
# Submit from the rlx checkout (it must sit on a filesystem every node sees, with rlx and
# jax[cuda12] installed in the active environment). The coordinator is process 0 on the first
# node of the allocation. Logs: runs/<run.name>/logs/proc<i>.log, one per process.
#SBATCH --job-name=rlx
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=slurm-rlx-%j.out
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: sbatch [--nodes=N] [--ntasks-per-node=1|8] $0 CONFIG [key=value ...]" >&2
  exit 2
fi
# sbatch runs a copy of this script from a spool directory: the checkout is where we submitted.
cd "${SLURM_SUBMIT_DIR:?run this script with sbatch}"
python=${PYTHON:-python}

# Read every name (no `| head`: under pipefail its early exit would fail the job with SIGPIPE).
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]:?no nodes in SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST}
# A port derived from the job id, so that two jobs sharing a head node do not collide.
export RLX_COORDINATOR="$head_node:${RLX_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export RLX_NUM_PROCESSES="$SLURM_NTASKS"
# Without this, JAX reserves 75% of each GPU up front; rlx plans for 90% (plan.headroom=0.1).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

run_dir=$("$python" -m rlx.distributed run-dir "$@")
mkdir -p "$run_dir/logs"
echo "rlx: $SLURM_NTASKS processes on $SLURM_JOB_NUM_NODES nodes, coordinator $RLX_COORDINATOR, logs in $run_dir/logs"

per_gpu=0
if [[ ${SLURM_NTASKS_PER_NODE:-1} != 1 ]]; then
  per_gpu=1
fi
export RLX_PER_GPU=$per_gpu

# Each task sets its own process id (and GPU when one process per GPU) from SLURM's variables;
# single quotes on purpose: they must expand inside the task, not here.
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 --output="$run_dir/logs/proc%t.log" bash -c '
  export RLX_PROCESS_ID=$SLURM_PROCID
  if [[ $RLX_PER_GPU == 1 ]]; then export RLX_LOCAL_DEVICE_IDS=$SLURM_LOCALID; fi
  exec "$0" -m rlx.launch "$@"
' "$python" "$@"
