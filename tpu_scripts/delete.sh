#!/usr/bin/env bash
# Delete a TPU VM / pod slice (and, with --queued, its queued resource) so it stops billing.
#
#   tpu_scripts/delete.sh NAME [--zone Z] [--project P] [--queued]
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
parse_args "$@"

if ((queued)); then
  # --force deletes the node first, then the request.
  gcloud compute tpus queued-resources delete "$name" "${gflags[@]}" --force --quiet
else
  gcloud compute tpus tpu-vm delete "$name" "${gflags[@]}" --quiet
fi
