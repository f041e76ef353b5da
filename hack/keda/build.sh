#!/usr/bin/env bash
# Builds KEDA (operator and external-metrics adapter) from the Go module proxy into
# ~/.cache/modelyard/bin/keda-<version>/, with KEDA's CRDs from the same module, unless they are there. Prints the
# directory (keda-operator, keda-adapter, crds/) on stdout; the rest goes to stderr.
#
# Why a wrapper module: KEDA's go.mod has `replace` and `exclude` lines, which count only in the main module, so
# `go install github.com/kedacore/keda/v2/cmd/operator@...` does not build. A throwaway module that requires KEDA
# and copies those lines does. Pinned: v2.21.0 builds with the Go here: 12.5 minutes on 2 cores with empty Go module
# and build caches (1.7 GB of modules), about 9 with the modules already downloaded.
set -euo pipefail

VERSION="${MODELYARD_KEDA_VERSION:-v2.21.0}"
cache="${MODELYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelyard}"
out="$cache/bin/keda-$VERSION"
# Every CRD of config/crd/bases: the operator waits for the eventing.keda.sh ones too, and exits without them.
have_all() { [ -x "$out/keda-operator" ] && [ -x "$out/keda-adapter" ] && [ -f "$out/crds/keda.sh_scaledobjects.yaml" ] \
  && [ -f "$out/crds/eventing.keda.sh_cloudeventsources.yaml" ]; }
if have_all; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "keda: 'go' is required to build KEDA and was not found" >&2; exit 1; }
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/modelyard-keda.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
cd "$work"
go mod init modelyard.local/kedabin >/dev/null 2>&1
module=$(go mod download -json "github.com/kedacore/keda/v2@$VERSION")
gomod=$(echo "$module" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
src=$(echo "$module" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
mkdir -p "$out"
{
  echo "require github.com/kedacore/keda/v2 $VERSION"
  grep -E '^(replace|exclude) [^(]' "$gomod" || true
  sed -n '/^replace (/,/^)/p; /^exclude (/,/^)/p' "$gomod"
} >> go.mod
ldflags="-s -w -X github.com/kedacore/keda/v2/version.Version=$VERSION"
for part in operator adapter; do
  if [ ! -x "$out/keda-$part" ]; then
    echo "keda: building KEDA $VERSION cmd/$part from the Go module proxy (first run only)" >&2
    go build -trimpath -ldflags "$ldflags" -o "$out/keda-$part.tmp" "github.com/kedacore/keda/v2/cmd/$part"
    mv "$out/keda-$part.tmp" "$out/keda-$part"
  fi
done
rm -rf "$out/crds.tmp" && mkdir "$out/crds.tmp"
cp "$src"/config/crd/bases/*.yaml "$out/crds.tmp/"
rm -rf "$out/crds" && mv "$out/crds.tmp" "$out/crds"
have_all || { echo "keda: finished but parts are missing in $out" >&2; exit 1; }
echo "keda: ready in $(( $(date +%s) - start ))s" >&2
echo "$out"
