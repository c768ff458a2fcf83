#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice, directly or through a queued resource.
#
#   tpu_scripts/create.sh NAME --zone us-east5-a --type v5p-64 [--version V] [--queued] [--spot] [--project P]
#
# --version defaults from the type: v5p -> v2-alpha-tpuv5, v5e -> v2-alpha-tpuv5-lite,
# v6e -> v2-alpha-tpuv6e, v4 -> tpu-ubuntu2204-base. --queued waits in Cloud TPU's queue until
# the slice is provisioned (the usual way to get large slices); the node gets the same NAME.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
parse_args "$@"
[[ -n $type ]] || die "give the accelerator type, e.g. --type v5p-64 (v5p-N has N TensorCores = N/2 chips)"
if [[ -z $version ]]; then
  case $type in
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    v4-*) version=tpu-ubuntu2204-base ;;
    *) die "no default runtime version for --type $type; give --version" ;;
  esac
fi
extra=()
((spot)) && extra+=(--spot)

if ((queued)); then
  gcloud compute tpus queued-resources create "$name" --node-id="$name" "${gflags[@]}" \
    --accelerator-type="$type" --runtime-version="$version" "${extra[@]}"
  echo "queued $name ($type); waiting until it is ACTIVE (Ctrl-C stops waiting, not the request)" >&2
  while true; do
    state=$(gcloud compute tpus queued-resources describe "$name" "${gflags[@]}" --format='value(state.state)')
    case $state in
      ACTIVE) break ;;
      FAILED | SUSPENDED)
        die "queued resource $name is $state; see: gcloud compute tpus queued-resources describe $name" ;;
      *) echo "  $(date +%H:%M:%S) $state" >&2; sleep "${POLL_SECONDS:-60}" ;;
    esac
  done
else
  gcloud compute tpus tpu-vm create "$name" "${gflags[@]}" --accelerator-type="$type" \
    --version="$version" "${extra[@]}"
fi
echo "$name is up with $(worker_count) worker(s). Next: tpu_scripts/install.sh $name ${gflags[*]}" >&2
