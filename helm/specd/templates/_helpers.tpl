{{/* Name of the operator's Deployment, ServiceAccount and RBAC objects. */}}
{{- define "specd.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "specd.selectorLabels" -}}
app.kubernetes.io/name: specd-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "specd.labels" -}}
{{ include "specd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: specd
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

