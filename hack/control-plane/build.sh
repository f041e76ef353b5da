#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok)
# from the Go module proxy into ~/.cache/modelyard/bin/<versions>/, unless it is already there.
# Prints the directory on stdout. Everything else goes to stderr.
#
# Why wrapper modules: k8s.io/kubernetes replaces its ~31 staging modules with local paths, so
# `go install k8s.io/kubernetes/cmd/...@v1.X` fails. A throwaway module that requires k8s.io/kubernetes and
# replaces each staging module with its published v0.X counterpart builds the real binaries.
set -euo pipefail

K8S_VERSION="${MODELYARD_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${MODELYARD_ETCD_VERSION:-v3.6.5}"
KWOK_VERSION="${MODELYARD_KWOK_VERSION:-v0.7.0}"

cache="${MODELYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelyard}"
out="$cache/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

have_all() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if have_all; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "control-plane: 'go' is required to build the control plane binaries and was not found on PATH" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/modelyard-cp-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0

log() { echo "control-plane: $*" >&2; }

# --- Kubernetes components -------------------------------------------------------------------------------------
if ! { [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ] && [ -x "$out/kubectl" ]; }; then
  log "building Kubernetes $K8S_VERSION (first run only; takes a while on 2 cores)"
  staging_version="v0.${K8S_VERSION#v1.}"
  mkdir -p "$work/k8s" && cd "$work/k8s"
  go mod init modelyard.local/k8sbins >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "require k8s.io/kubernetes $K8S_VERSION"
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
  } >> go.mod
  ldflags="-s -w"
  major=1 minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    log "  go build $b"
    go build -trimpath -ldflags "$ldflags" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$out/$b.tmp" "$out/$b"
  done
fi

# --- etcd ------------------------------------------------------------------------------------------------------
if [ ! -x "$out/etcd" ]; then
  log "building etcd $ETCD_VERSION"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  go mod init modelyard.local/etcdbin >/dev/null 2>&1
  cat >> go.mod <<MOD
require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
MOD
  go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$out/etcd.tmp" "$out/etcd"
fi

# --- kwok ------------------------------------------------------------------------------------------------------
if [ ! -x "$out/kwok" ]; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$work/gobin/kwok" "$out/kwok"
fi

have_all || { log "build finished but binaries are missing in $out"; exit 1; }
echo "$out"
