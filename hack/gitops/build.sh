#!/usr/bin/env bash
# Builds gitops-check (hack/gitops/main.go: the kstatus library Flux and kpt use, and gopher-lua as Argo CD runs
# health.lua scripts) into ~/.cache/modelyard/bin/gitops-check-<hash of its sources>/, unless it is there. Prints
# the directory on stdout; the rest goes to stderr.
#
# Pinned in hack/gitops/go.mod and go.sum: github.com/fluxcd/cli-utils v0.36.0-flux.13 (Flux's fork of kstatus)
# and github.com/yuin/gopher-lua v1.1.1 (the interpreter Argo CD embeds). About 30 s on 2 cores.
. "$(dirname "$0")/../lib/build.sh"

here="$(cd "$(dirname "$0")" && pwd)"
out="$MODELYARD_CACHE/bin/gitops-check-$(cat "$here/main.go" "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
cached "$out" gitops-check
build_start gitops-check
mkdir -p "$out"
(cd "$here" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
  go build -trimpath -ldflags "-s -w" -o "$out/gitops-check.tmp" .)
mv "$out/gitops-check.tmp" "$out/gitops-check"
build_done "$out"
