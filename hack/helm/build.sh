#!/usr/bin/env bash
# Builds helm from the Go module proxy into ~/.cache/modelyard/bin/helm-<version>/, unless it is there. Prints the
# directory on stdout; the rest goes to stderr. The chart's tests lint, render and install the chart with it.
#
# Pinned: helm.sh/helm/v3 v3.22.0 builds with the Go here (its go.mod has no replace lines, so `go install`
# builds it as it is): about 2 minutes on 2 cores with the modules downloaded.
. "$(dirname "$0")/../lib/build.sh"

VERSION="${MODELYARD_HELM_VERSION:-v3.22.0}"
out="$MODELYARD_CACHE/bin/helm-$VERSION"
cached "$out" helm
build_start "helm $VERSION"
CGO_ENABLED=0 GOFLAGS="-buildvcs=false" GOBIN="$out/tmp" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$VERSION" "helm.sh/helm/v3/cmd/helm@$VERSION"
mv "$out/tmp/helm" "$out/helm" && rmdir "$out/tmp"
build_done "$out"
