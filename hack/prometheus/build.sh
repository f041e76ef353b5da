#!/usr/bin/env bash
# Builds Prometheus from the Go module proxy into ~/.cache/modelyard/bin/prometheus-<version>/, unless it is there.
# Prints the binary's path on stdout; everything else goes to stderr.
#
# Why not Debian's package: Debian builds Prometheus without Kubernetes service discovery ("field
# kubernetes_sd_configs not found"), and the local cluster scrapes Triton pods exactly as a user's Prometheus
# would, through kubernetes_sd_configs. Prometheus publishes its Go module as v0.<minor*100>.<patch>:
# v0.307.3 is Prometheus 3.7.3 (pinned: it builds with the Go here; newer ones may answer 403 on this proxy).
# The web UI's assets are not in the module (npm builds them), so the UI is absent; the HTTP API is complete.
set -euo pipefail

VERSION="${MODELYARD_PROMETHEUS_VERSION:-v0.307.3}"
cache="${MODELYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelyard}"
out="$cache/bin/prometheus-$VERSION"
if [ -x "$out/prometheus" ]; then echo "$out/prometheus"; exit 0; fi

command -v go >/dev/null || { echo "prometheus: 'go' is required to build Prometheus and was not found" >&2; exit 1; }
echo "prometheus: building Prometheus $VERSION from the Go module proxy (first run only)" >&2
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/modelyard-prometheus.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
cd "$work"
go mod init modelyard.local/prometheusbin >/dev/null 2>&1
echo "require github.com/prometheus/prometheus $VERSION" >> go.mod
mkdir -p "$out"
minor=${VERSION#v0.}; minor=${minor%%.*}; release="$((minor / 100)).$((minor % 100)).${VERSION##*.}"
go build -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=${release}" \
  -o "$out/prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus
mv "$out/prometheus.tmp" "$out/prometheus"
echo "prometheus: built in $(( $(date +%s) - start ))s" >&2
echo "$out/prometheus"
