{{/* RBAC rule lists used by rbac.yaml: exactly what `mmo operator` calls
(operator/mmo_operator/kube.py and kopf 1.45), nothing more. */}}
{{- define "mmo.namespacedRules" -}}
# The MultimodalModel: kopf watches it and patches its finalizer and annotations.
- apiGroups: ["serving.mmo.dev"]
  resources: ["multimodalmodels"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written through the status subresource (JSON patch guarded by generation).
- apiGroups: ["serving.mmo.dev"]
  resources: ["multimodalmodels/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["serving.mmo.dev"]
  resources: ["multimodalmodels/finalizers"]
  verbs: ["update"]
# The RayService: server-side apply (PATCH), listed by label, watched, removed.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# The RayService's running RayClusters: their worker groups' minReplicas/maxReplicas are
# JSON-patched, because KubeRay does not apply a change of them to a running cluster.
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "patch"]
# The other children: server-side apply, list by label, delete what is no longer wanted;
# the placement ConfigMap is also read by the rebalance timer.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["list", "create", "patch", "delete"]
# The site's Flower SuperNode Deployment (federated mode only).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "create", "patch", "delete"]
# Kubernetes Events for what the operator did (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
{{- define "mmo.clusterRules" -}}
# kopf's resource observer, and reacting when the KubeRay/prometheus-operator CRDs appear.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
