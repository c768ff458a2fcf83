#!/usr/bin/env bash
# Run N processes on this machine as one multi-process JAX job.
#
#   launch/local.sh N CONFIG [key=value ...]    N copies of `python -m rlx.launch CONFIG ...`
#   launch/local.sh N -- COMMAND [ARG ...]      N copies of any command (tests, benchmarks)
#
# Each process gets RLX_COORDINATOR=localhost:PORT, RLX_NUM_PROCESSES=N and RLX_PROCESS_ID=i,
# which rlx.distributed.maybe_initialize() turns into jax.distributed.initialize (with gloo
# collectives on CPU). Logs: runs/<run.name>/logs/proc<i>.log, or $RLX_LOG_DIR/proc<i>.log.
# Exits non-zero if any process fails, after stopping the others: they would otherwise wait
# in a collective for a peer that is gone.
#
# CPU emulation of 2 hosts x 2 devices:
#   JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 \
#     launch/local.sh 2 configs/quickstart.yaml mesh.data=4
# Environment: RLX_PORT (default: a free port), PYTHON (default: python).
set -euo pipefail

usage() {
  echo "usage: $0 N CONFIG [key=value ...]  |  $0 N -- COMMAND [ARG ...]" >&2
  exit 2
}
[[ $# -ge 2 && $1 =~ ^[1-9][0-9]*$ ]] || usage
n=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
# rlx imports from the checkout even when it is not pip-installed.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

if [[ $1 == "--" ]]; then
  shift
  [[ $# -ge 1 ]] || usage
  cmd=("$@")
  log_dir=${RLX_LOG_DIR:-runs/local/logs}
else
  cmd=("$python" -m rlx.launch "$@")
  run_dir=$("$python" -m rlx.distributed run-dir "$@")
  log_dir=${RLX_LOG_DIR:-$run_dir/logs}
fi
mkdir -p "$log_dir"

port=${RLX_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
export RLX_COORDINATOR="localhost:$port" RLX_NUM_PROCESSES="$n"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < n; i++)); do
  RLX_PROCESS_ID=$i "${cmd[@]}" >"$log_dir/proc$i.log" 2>&1 &
  pids+=("$!")
done
echo "local.sh: $n processes (coordinator localhost:$port), logs in $log_dir/proc*.log" >&2

# Poll rather than `wait -n` so that the first failure, whichever process it is, stops the rest.
status=0
running=$n
declare -A finished=()
while ((running > 0)); do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -n ${finished[$i]:-} ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    finished[$i]=1
    running=$((running - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "local.sh: process $i failed (exit $rc); stopping the others. Last lines of $log_dir/proc$i.log:" >&2
      tail -n 20 "$log_dir/proc$i.log" >&2
      stop_all
    fi
  done
  if ((running > 0)); then sleep 0.2; fi
done
exit "$status"
