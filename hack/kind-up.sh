#!/usr/bin/env bash
# A kind cluster with everything mmo needs, for trying it and for hack/e2e-kind.sh:
# cert-manager, KubeRay, kube-prometheus-stack (Prometheus, Grafana with the dashboard
# sidecar), the mmo images (built here and loaded) and the mmo chart.
#
# Needs: docker (a running engine), kind, kubectl, helm (v3.8+ or v4). Network for the charts.
#   hack/kind-up.sh                # cluster "mmo"
#   CLUSTER=dev hack/kind-up.sh    # another name
# kind nodes have no GPU: the node is given a fake nvidia.com/gpu capacity of 8 and the
# A100 product label, so that the GPU worker group schedules; the model runs on CPU.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${CLUSTER:-mmo}
tag=${TAG:-dev}
registry=${REGISTRY:-ghcr.io/mmo-dev}
cert_manager_version=${CERT_MANAGER_VERSION:-v1.16.2}
kuberay_version=${KUBERAY_VERSION:-1.7.0}
kps_version=${KPS_VERSION:-66.3.1}
gpu_product=${GPU_PRODUCT:-NVIDIA-A100-SXM4-80GB}

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "kind-up: $1 is required" >&2; exit 1; }
}
for tool in docker kind kubectl helm; do
  need "${tool}"
done
docker info >/dev/null 2>&1 || { echo "kind-up: no Docker engine answers (docker info failed)" >&2; exit 1; }

if ! kind get clusters | grep -qx "${cluster}"; then
  kind create cluster --name "${cluster}" --wait 120s
fi
kubectl config use-context "kind-${cluster}"

echo ">> fake GPUs on the kind nodes"
for node in $(kubectl get nodes -o name); do
  kubectl label --overwrite "${node}" "nvidia.com/gpu.product=${gpu_product}"
  kubectl patch "${node}" --subresource=status --type=json \
    -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"}]'
done

echo ">> Helm repositories"
helm repo add jetstack https://charts.jetstack.io --force-update >/dev/null
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm repo update >/dev/null

echo ">> cert-manager ${cert_manager_version}"
helm upgrade --install cert-manager jetstack/cert-manager \
  --namespace cert-manager --create-namespace --version "${cert_manager_version}" \
  --set crds.enabled=true --wait --timeout 10m

# KubeRay is a prerequisite with its own chart, not a dependency of the mmo chart.
echo ">> KubeRay ${kuberay_version}"
helm upgrade --install kuberay-operator kuberay/kuberay-operator \
  --namespace kuberay --create-namespace --version "${kuberay_version}" --wait --timeout 10m

echo ">> kube-prometheus-stack ${kps_version}"
helm upgrade --install kps prometheus-community/kube-prometheus-stack \
  --namespace monitoring --create-namespace --version "${kps_version}" \
  --set grafana.sidecar.dashboards.enabled=true \
  --set grafana.sidecar.dashboards.label=grafana_dashboard \
  --set grafana.sidecar.dashboards.searchNamespace=ALL \
  --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false \
  --set alertmanager.enabled=false \
  --wait --timeout 15m

echo ">> mmo images (${registry}/mmo-*:${tag})"
REGISTRY="${registry}" TAG="${tag}" "${repo_root}/hack/build-images.sh" --kind "${cluster}"

echo ">> mmo chart"
helm upgrade --install mmo "${repo_root}/charts/mmo" \
  --namespace mmo-system --create-namespace \
  --set operator.image.repository="${registry}/mmo-operator" \
  --set operator.image.tag="${tag}" \
  --set operator.image.pullPolicy=IfNotPresent \
  --set metrics.serviceMonitor.enabled=true \
  --set prometheusRule.enabled=true \
  --wait --timeout 10m

kubectl -n mmo-system rollout status deploy/mmo --timeout=5m
echo "kind cluster ${cluster} is ready: hack/e2e-kind.sh applies a sample and checks it"
