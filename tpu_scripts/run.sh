#!/usr/bin/env bash
# Run `python -m rlx.launch CONFIG [key=value ...]` on every worker of a TPU slice at once.
#
#   tpu_scripts/run.sh NAME [--zone Z] [--project P] CONFIG [key=value ...]
#
# Each worker runs one process; RLX_DISTRIBUTED=auto lets jax.distributed.initialize find the
# slice's coordinator itself. Output streams here from all workers; each worker's log is then
# copied to runs/<run.name>/logs/worker<i>.log in this checkout (also when the run fails).
# The exit status is the run's. CONFIG must lie inside the checkout (install.sh copied it).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
parse_args "$@"
((${#args[@]} >= 2)) || die "give a CONFIG after the TPU name, e.g. $0 $name configs/quickstart.yaml"
launch_args=()
for arg in "${args[@]:1}"; do
  # A config file is read on the workers from their copy of this checkout (install.sh).
  if [[ $arg != *=* && -f $arg ]]; then
    rel=$(realpath --relative-to="$repo" "$arg")
    [[ $rel != ../* ]] || die "$arg is outside the checkout $repo; copy it in and re-run install.sh"
    arg=$rel
  fi
  launch_args+=("$arg")
done

# The run directory, resolved here with the same config code the workers use.
run_dir=$(cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" \
  -m rlx.distributed run-dir "${launch_args[@]}")
[[ $run_dir != *[[:space:]]* ]] || die "run directory '$run_dir' has spaces; choose a run.name without them"
# Workers run in ~/rlx; scp paths are relative to the home directory.
remote_dir=$run_dir
[[ $run_dir == /* ]] || remote_dir="rlx/$run_dir"

rc=0
on_all_workers "cd ~/rlx && mkdir -p $run_dir/logs && set -o pipefail && \
RLX_DISTRIBUTED=auto ~/rlx-venv/bin/python -m rlx.launch $(printf '%q ' "${launch_args[@]}")2>&1 \
| tee $run_dir/logs/worker.log" || rc=$?

local_dir="$repo/$run_dir"
[[ $run_dir == /* ]] && local_dir=$run_dir
mkdir -p "$local_dir/logs"
workers=$(worker_count)
for ((i = 0; i < workers; i++)); do
  gcloud compute tpus tpu-vm scp "$name:$remote_dir/logs/worker.log" "$local_dir/logs/worker$i.log" \
    "${gflags[@]}" --worker="$i" || echo "could not fetch worker $i's log" >&2
done
echo "logs in $local_dir/logs/ (exit $rc)" >&2
exit "$rc"
