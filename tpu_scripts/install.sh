#!/usr/bin/env bash
# Install rlx from this checkout, with jax[tpu], on every worker of a TPU VM / pod slice.
#
#   tpu_scripts/install.sh NAME [--zone Z] [--project P]
#
# Copies the checkout's files (tracked and untracked-but-not-ignored, as git lists them) to
# ~/rlx on each worker and installs it in the virtual environment ~/rlx-venv. Re-run it after
# changing code: it replaces ~/rlx.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
parse_args "$@"

tarball=$(mktemp "${TMPDIR:-/tmp}/rlx-src.XXXXXX")
trap 'rm -f "$tarball"' EXIT
(cd "$repo" && git ls-files -co --exclude-standard -z | tar --null -czf "$tarball" -T -)
gcloud compute tpus tpu-vm scp "$tarball" "$name:rlx-src.tar.gz" "${gflags[@]}" --worker=all

# Single quotes on purpose: ~ and $(hostname) expand on each worker.
# shellcheck disable=SC2016
on_all_workers '
set -e
rm -rf ~/rlx && mkdir -p ~/rlx && tar -xzf ~/rlx-src.tar.gz -C ~/rlx
if [ ! -x ~/rlx-venv/bin/python ]; then
  # Some images lack the venv module: install it and try again.
  python3 -m venv ~/rlx-venv \
    || { sudo apt-get update -q && sudo apt-get install -y -q python3-venv && python3 -m venv ~/rlx-venv; }
fi
~/rlx-venv/bin/pip install -q -U pip
~/rlx-venv/bin/pip install -q -e ~/rlx "jax[tpu]"
~/rlx-venv/bin/python -c "import jax, rlx; print(\"$(hostname): jax\", jax.__version__, \"rlx ok\")"
'
echo "installed on every worker of $name. Next: tpu_scripts/run.sh $name ${gflags[*]} CONFIG [key=value ...]" >&2
