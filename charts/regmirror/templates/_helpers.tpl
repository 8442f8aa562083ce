{{/* Names and labels shared by every template. */}}

{{- define "regmirror.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: the release name, prefixed with the chart's unless it holds it. */}}
{{- define "regmirror.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "regmirror.operatorName" -}}
{{- printf "%s-operator" (include "regmirror.fullname" .) }}
{{- end }}

{{- define "regmirror.serviceAccountName" -}}
{{- default (include "regmirror.operatorName" .) .Values.serviceAccount.name }}
{{- end }}

{{/* A tag given as a number (--set image.tag=20250101, or unquoted in a values file, which Helm
reads as a float) is written as the digits; values.schema.json lets only whole numbers through. */}}
{{- define "regmirror.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if not (kindIs "string" $tag) }}{{ $tag = $tag | int64 | toString }}{{ end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "regmirror.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regmirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "regmirror.labels" -}}
{{ include "regmirror.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: regmirror
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}
