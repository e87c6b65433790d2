{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "llmjob.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "llmjob.fullname" -}}
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

{{- define "llmjob.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "llmjob.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "llmjob.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "llmjob.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llmjob.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llmjob.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Name of the metrics Service; also the `job` label Prometheus gives the operator's series. */}}
{{- define "llmjob.metricsServiceName" -}}
{{- printf "%s-metrics" (include "llmjob.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespaces where worker pods run and the chart's namespaced objects for them go:
the watched namespaces, or networkPolicy.jobNamespaces when the operator watches all. */}}
{{- define "llmjob.jobNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson .Values.watchNamespaces -}}
{{- else -}}
{{- toJson .Values.networkPolicy.jobNamespaces -}}
{{- end -}}
{{- end -}}

{{/* Labels every worker pod carries (set by the operator's render.py). */}}
{{- define "llmjob.workerSelector" -}}
matchLabels:
  app.kubernetes.io/name: llmjob-worker
  app.kubernetes.io/managed-by: llmjob-operator
matchExpressions:
  - key: training.llmjob.dev/job-name
    operator: Exists
{{- end -}}

{{/* The webhook's Service and the Secret holding its serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "llmjob.webhookServiceName" -}}
{{- printf "%s-webhook" (include "llmjob.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmjob.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "llmjob.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
