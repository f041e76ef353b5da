# shellcheck shell=bash
# Sourced by hack/*/build.sh: the cache every build lands in, and the steps each build takes around its own work.
#   cached DIR FILE...   print DIR and exit when every FILE is in it (built before)
#   build_start NAME     fail loudly without Go, say what is built, start the clock
#   build_done DIR       print the time taken (stderr) and DIR (stdout)
set -euo pipefail

MODELYARD_CACHE="${MODELYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelyard}"

cached() {
  local dir=$1 file
  shift
  for file in "$@"; do [ -e "$dir/$file" ] || return 0; done
  echo "$dir"
  exit 0
}

build_start() {
  BUILD_NAME=$1
  command -v go >/dev/null || { echo "$BUILD_NAME: 'go' is required to build it and was not found" >&2; exit 1; }
  echo "$BUILD_NAME: building from the Go module proxy (first run only)" >&2
  BUILD_START=$(date +%s)
}

build_done() {
  echo "$BUILD_NAME: ready in $(( $(date +%s) - BUILD_START ))s" >&2
  echo "$1"
}
