#!/usr/bin/env bash
# End-to-end on the cluster made by hack/kind-up.sh: apply a sample MultimodalModel, wait for
# Ready, ask a question through Ray Serve, and find its request counter in Prometheus.
#
#   hack/e2e-kind.sh [SAMPLE]      # default manifests/samples/private-vqa.yaml
# Environment: CLUSTER (default mmo), NAMESPACE (default mmo-e2e), TAG (default dev),
# REGISTRY (default ghcr.io/mmo-dev), READY_TIMEOUT (default 20m).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${CLUSTER:-mmo}
namespace=${NAMESPACE:-mmo-e2e}
sample=${1:-${repo_root}/manifests/samples/private-vqa.yaml}
ready_timeout=${READY_TIMEOUT:-20m}
serving_image="${REGISTRY:-ghcr.io/mmo-dev}/mmo-serving:${TAG:-dev}"
pids=()

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  for pid in "${pids[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
}
trap cleanup EXIT

kubectl config use-context "kind-${cluster}" >/dev/null
name=$(kubectl create --dry-run=client -o jsonpath='{.metadata.name}' -f "${sample}")

echo ">> applying ${sample} as ${namespace}/${name} (serving image ${serving_image})"
kubectl create namespace "${namespace}" --dry-run=client -o yaml | kubectl apply -f -
# The image is set before the first apply: changing it later is a cluster change, which
# KubeRay rolls blue/green with twice the GPUs that kind-up fakes.
kubectl patch --local -f "${sample}" --type=merge -o yaml \
  -p "{\"spec\":{\"serving\":{\"image\":\"${serving_image}\"}}}" |
  kubectl -n "${namespace}" apply -f -

echo ">> waiting for Ready (${ready_timeout})"
if ! kubectl -n "${namespace}" wait "mmm/${name}" --for=condition=Ready --timeout="${ready_timeout}"; then
  kubectl -n "${namespace}" get mmm "${name}" -o yaml
  exit 1
fi
kubectl -n "${namespace}" get mmm "${name}"

serve_port=18000
prom_port=19090
kubectl -n "${namespace}" port-forward "svc/${name}-serve-svc" "${serve_port}:8000" >/dev/null 2>&1 &
pids+=("$!")
kubectl -n monitoring port-forward svc/kps-kube-prometheus-stack-prometheus "${prom_port}:9090" >/dev/null 2>&1 &
pids+=("$!")
sleep 5

echo ">> asking a question"
answer=$(curl -fsS --retry 10 --retry-delay 3 --retry-all-errors \
  -H 'Content-Type: application/json' \
  -d "{\"model\":\"${name}\",\"messages\":[{\"role\":\"user\",\"content\":\"what colour is the circle?\"}],\"max_tokens\":8}" \
  "http://127.0.0.1:${serve_port}/v1/chat/completions")
echo "${answer}"
grep -q '"choices"' <<< "${answer}" || { echo "no choices in the answer" >&2; exit 1; }

echo ">> waiting for mmo_requests_total in Prometheus"
query='sum(mmo_requests_total)'
for _ in $(seq 1 40); do
  result=$(curl -fsS --get --data-urlencode "query=${query}" "http://127.0.0.1:${prom_port}/api/v1/query" || true)
  if grep -q '"value"' <<< "${result}"; then
    echo "${result}"
    echo "e2e OK: ${namespace}/${name} is Ready, answered, and its metrics reach Prometheus"
    exit 0
  fi
  sleep 15
done
echo "mmo_requests_total never reached Prometheus" >&2
exit 1
