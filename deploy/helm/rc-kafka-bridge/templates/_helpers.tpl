{{/*
The chart's name, or nameOverride.
*/}}
{{- define "rc-kafka-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the release's objects: fullnameOverride, else the release name when it already contains the
chart's name (release "rc-kafka-bridge" gives the kustomize base's names), else "<release>-<name>".
Truncated to 63 characters, the limit of DNS labels; the headless Service adds "-headless" to it.
*/}}
{{- define "rc-kafka-bridge.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "rc-kafka-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "rc-kafka-bridge.labels" -}}
helm.sh/chart: {{ include "rc-kafka-bridge.chart" . }}
{{ include "rc-kafka-bridge.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the release's pods. They never change for a release: the StatefulSet's selector and
its volumeClaimTemplates cannot be changed once created.
*/}}
{{- define "rc-kafka-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rc-kafka-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the pods run as: the chart's when it creates one, else serviceAccount.name, else ""
(the namespace's default ServiceAccount, without naming it).
*/}}
{{- define "rc-kafka-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rc-kafka-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the verification token, and its key: existingSecret's, or the one the chart creates.
*/}}
{{- define "rc-kafka-bridge.secretName" -}}
{{- default (include "rc-kafka-bridge.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "rc-kafka-bridge.secretKey" -}}
{{- if .Values.existingSecret }}
{{- required "existingSecretKey: the key of existingSecret that holds the verification token" .Values.existingSecretKey }}
{{- else -}}
verification-token
{{- end }}
{{- end }}

{{/*
The container image: repository:tag (the tag defaults to the chart's appVersion), or repository@digest.
*/}}
{{- define "rc-kafka-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}
