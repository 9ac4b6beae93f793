{{/* RBAC rule lists used by rbac.yaml. */}}
{{- define "mmo.namespacedRules" -}}
# The MultimodalModel: watch it, keep its finalizer and kopf's annotations, write status.
- apiGroups: ["serving.mmo.dev"]
  resources: ["multimodalmodels"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["serving.mmo.dev"]
  resources: ["multimodalmodels/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["serving.mmo.dev"]
  resources: ["multimodalmodels/finalizers"]
  verbs: ["update"]
# Children the operator creates, reads back and removes.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Kubernetes Events for what the operator did.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
{{- define "mmo.clusterRules" -}}
# Discovery of the CRDs the operator depends on (KubeRay, prometheus-operator).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
