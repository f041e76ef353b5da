#!/usr/bin/env bash
# For machines with Docker: the operator on a kind cluster, installed with the Helm chart.
# Not exercised in CI (CI has no Docker engine; it runs the same tests on hack/localcluster instead).
# Needs: docker, kind, helm, kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is required" >&2; exit 1; }
done
cluster=${KIND_CLUSTER:-modelyard}
image=modelyard/operator:dev
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster"
docker build -f runtime/operator/Dockerfile -t "$image" .
kind load docker-image "$image" --name "$cluster"
helm upgrade --install modelyard charts/modelyard --namespace modelyard-system --create-namespace \
  --set image.repository=modelyard/operator --set image.tag=dev --set image.pullPolicy=Never --wait
# kind nodes have no GPUs: serve the CPU example (its pods pull the Triton image and need a model repository
# the cluster can reach; without one they report CrashLoopBackOff in the Ready condition, which is the point).
kubectl apply -f examples/model-store-credentials.yaml -f examples/encoder-cpu.yaml
kubectl get mdep -o wide
echo "watch it with: kubectl get mdep -w; kubectl describe mdep text-encoder"
