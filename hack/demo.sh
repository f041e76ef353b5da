#!/usr/bin/env bash
# make demo: bring up the local control plane, run the operator with its own RBAC, apply examples/,
# wait until every ModelDeployment is Ready, print them. KEEP=1 leaves everything running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=${DEMO_DIR:-$root/.demo}
rm -rf "$state" && mkdir -p "$state"
py=$root/.venv/bin/python
bins=$(bash hack/control-plane/build.sh)
kubectl=("$bins/kubectl" --kubeconfig "$state/cluster/admin.kubeconfig")

pids=()
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "left running (pids ${pids[*]}); export KUBECONFIG=$state/cluster/admin.kubeconfig; stop with: kill ${pids[*]}"
    return
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
(cd hack && exec "$py" -m localcluster up --dir "$state/cluster") > "$state/cluster.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do [ -f "$state/cluster/ready" ] && break; kill -0 "${pids[0]}" 2>/dev/null || { cat "$state/cluster.log"; exit 1; }; sleep 0.5; done
[ -f "$state/cluster/ready" ] || { echo "the control plane did not come up:"; cat "$state/cluster.log"; exit 1; }
"${kubectl[@]}" get nodes -L modelyard.dev/accelerator

echo "== installing the CRD and the operator's RBAC"
"${kubectl[@]}" apply -f crds/
"${kubectl[@]}" wait --for=condition=Established crd/modeldeployments.modelyard.dev --timeout=60s
(cd hack && "$py" -m localcluster rbac) | "${kubectl[@]}" apply -f -

echo "== running the operator as user modelyard-operator (log: $state/operator.log)"
KUBECONFIG="$state/cluster/operator.kubeconfig" MODELYARD_METRICS_PORT=0 MODELYARD_RESYNC_SECONDS=10 \
  "$py" -m modelyard --liveness= > "$state/operator.log" 2>&1 &
pids+=($!)

echo "== kubectl apply -f examples/"
"${kubectl[@]}" apply -f examples/
if ! "${kubectl[@]}" wait --for=condition=Ready mdep --all -A --timeout=180s; then
  "${kubectl[@]}" get mdep -A -o wide
  tail -50 "$state/operator.log"
  exit 1
fi
echo
"${kubectl[@]}" get mdep -A -o wide
