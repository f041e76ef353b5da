#!/usr/bin/env bash
# Builds Traefik (the local cluster's Gateway API implementation) from the Go module proxy into
# ~/.cache/modelyard/bin/traefik-<version>/, with the Gateway API CRDs of the version Traefik is built against,
# unless they are there. Prints the directory (traefik, gateway-api-crds/) on stdout; the rest goes to stderr.
#
# Why a wrapper module: Traefik's go.mod replaces three modules with forks, and a `replace` is ignored unless it
# is in the main module, so `go install github.com/traefik/traefik/v3/cmd/traefik@...` does not build. A
# throwaway module that requires Traefik and copies its replace block does. Pinned: v3.6.12 builds with the Go
# here; v3.7.x does not resolve on this proxy. Its go.mod names sigs.k8s.io/gateway-api v1.4.0: the CRDs come
# from that module's config/crd/standard, so the API the cluster serves is the one Traefik speaks.
set -euo pipefail

VERSION="${MODELYARD_TRAEFIK_VERSION:-v3.6.12}"
cache="${MODELYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelyard}"
out="$cache/bin/traefik-$VERSION"
have_all() { [ -x "$out/traefik" ] && [ -d "$out/gateway-api-crds" ] && [ -f "$out/kubernetes-gateway-rbac.yml" ]; }
if have_all; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "traefik: 'go' is required to build Traefik and was not found" >&2; exit 1; }
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/modelyard-traefik.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
cd "$work"
go mod init modelyard.local/traefikbin >/dev/null 2>&1
module=$(go mod download -json "github.com/traefik/traefik/v3@$VERSION")
gomod=$(echo "$module" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
src=$(echo "$module" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
mkdir -p "$out"
if [ ! -x "$out/traefik" ]; then
  echo "traefik: building Traefik $VERSION from the Go module proxy (first run only)" >&2
  {
    echo "require github.com/traefik/traefik/v3 $VERSION"
    sed -n '/^replace (/,/^)/p' "$gomod"
  } >> go.mod
  go build -trimpath -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$VERSION" \
    -o "$out/traefik.tmp" github.com/traefik/traefik/v3/cmd/traefik
  mv "$out/traefik.tmp" "$out/traefik"
fi
if [ ! -d "$out/gateway-api-crds" ]; then
  gateway=$(sed -n 's/^[[:space:]]*sigs.k8s.io\/gateway-api \(v[^ ]*\).*/\1/p' "$gomod" | head -1)
  crds=$(go mod download -json "sigs.k8s.io/gateway-api@$gateway" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  rm -rf "$out/gateway-api-crds.tmp" && mkdir "$out/gateway-api-crds.tmp"
  cp "$crds"/config/crd/standard/*.yaml "$out/gateway-api-crds.tmp/"
  mv "$out/gateway-api-crds.tmp" "$out/gateway-api-crds"
  echo "traefik: Gateway API $gateway CRDs (standard channel)" >&2
fi
# Traefik's own ClusterRole for its Gateway provider, as its docs ship it in the module.
cp "$src/docs/content/reference/dynamic-configuration/kubernetes-gateway-rbac.yml" "$out/"
have_all || { echo "traefik: finished but parts are missing in $out" >&2; exit 1; }
echo "traefik: ready in $(( $(date +%s) - start ))s" >&2
echo "$out"
