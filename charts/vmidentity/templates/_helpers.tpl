{{/* Chart name, truncated to 63 characters. */}}
{{- define "vmidentity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it already contains the chart name. */}}
{{- define "vmidentity.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vmidentity.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vmidentity.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmidentity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vmidentity.labels" -}}
helm.sh/chart: {{ include "vmidentity.chart" . }}
{{ include "vmidentity.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: vmidentity
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vmidentity.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vmidentity.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vmidentity.leaseName" -}}
{{- default (printf "%s-leader" (include "vmidentity.fullname" .)) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{- define "vmidentity.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Fails rendering on combinations values.schema.json cannot express. */}}
{{- define "vmidentity.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.controller.leaderElection.enabled) }}
{{- fail "replicas > 1 needs controller.leaderElection.enabled=true (otherwise every replica writes to ARM)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled" }}
{{- end }}
{{- end }}
