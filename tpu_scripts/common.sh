# shellcheck shell=bash disable=SC2034  # the variables set here are read by the scripts that source it
# Shared by the tpu_scripts: flag parsing and the gcloud flags every call needs.
# Flags: --zone Z, --project P (else gcloud's configured compute/zone and core/project),
# --type, --version, --queued, --spot (create/delete); anything else is positional.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gflags=()
args=()
type=""
version=""
queued=0
spot=0

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

parse_args() {
  while (($#)); do
    case $1 in
      --zone | --project | --type | --version)
        (($# >= 2)) || die "$1 needs a value"
        set_flag "${1#--}" "$2"
        shift 2
        ;;
      --zone=* | --project=* | --type=* | --version=*)
        local key=${1%%=*}
        set_flag "${key#--}" "${1#*=}"
        shift
        ;;
      --queued) queued=1; shift ;;
      --spot) spot=1; shift ;;
      -h | --help) usage ;;
      --) shift; args+=("$@"); break ;;
      --*) die "unknown flag $1 (see --help)" ;;
      *) args+=("$1"); shift ;;
    esac
  done
  ((${#args[@]} >= 1)) || usage
  name=${args[0]}
}

set_flag() {
  case $1 in
    zone | project) gflags+=("--$1=$2") ;;
    type) type=$2 ;;
    version) version=$2 ;;
  esac
}

# Hosts (workers) of the slice: one network endpoint each.
worker_count() {
  local ips
  ips=$(gcloud compute tpus tpu-vm describe "$name" "${gflags[@]}" --format='value(networkEndpoints[].ipAddress)')
  [[ -n $ips ]] || die "TPU '$name' has no workers (is it READY? see: gcloud compute tpus tpu-vm list)"
  tr ';' '\n' <<<"$ips" | grep -c .
}

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" --worker=all --command="$1"
}
