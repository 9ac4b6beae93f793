{{/* Chart name, overridable. */}}
{{- define "mmo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: RELEASE-mmo, or RELEASE when the release name already contains the chart name. */}}
{{- define "mmo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mmo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. */}}
{{- define "mmo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mmo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels on every object. */}}
{{- define "mmo.labels" -}}
helm.sh/chart: {{ include "mmo.chart" . }}
{{ include "mmo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mmo
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "mmo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mmo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mmo.image" -}}
{{- $img := .Values.operator.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mmo.webhookServiceName" -}}
{{- printf "%s-webhook" (include "mmo.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mmo.webhookSecretName" -}}
{{- if .Values.webhook.certManager.enabled -}}
{{- printf "%s-webhook-tls" (include "mmo.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- .Values.webhook.tls.secretName -}}
{{- end -}}
{{- end -}}

{{- define "mmo.certificateName" -}}
{{- printf "%s-webhook" (include "mmo.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fail early on value combinations the schema cannot express. */}}
{{- define "mmo.validate" -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.certManager.enabled) -}}
{{- if not (and .Values.webhook.tls.secretName .Values.webhook.tls.caBundle) -}}
{{- fail "webhook.enabled=true with webhook.certManager.enabled=false needs webhook.tls.secretName (a kubernetes.io/tls Secret) and webhook.tls.caBundle (base64 PEM of its CA); or set webhook.enabled=false" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.operator.watch.allNamespaces) (not .Values.operator.watch.namespaces) -}}
{{- fail "operator.watch.allNamespaces=false needs at least one namespace in operator.watch.namespaces" -}}
{{- end -}}
{{- end -}}
