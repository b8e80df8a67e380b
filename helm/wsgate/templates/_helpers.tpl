{{/* Names and labels shared by every template. */}}
{{- define "wsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wsgate.fullname" -}}
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

{{- define "wsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The gateway pods (the chart's own Redis has component: redis). */}}
{{- define "wsgate.gatewaySelector" -}}
{{ include "wsgate.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "wsgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "wsgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret holding admin-token (and jwt-secret, redis-url when given). */}}
{{- define "wsgate.secretName" -}}
{{- default (include "wsgate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Whether the chart runs its own small Redis. */}}
{{- define "wsgate.ownRedis" -}}
{{- if and .Values.redis.deploy (not .Values.redis.url) (not .Values.redis.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "wsgate.redisName" -}}
{{- printf "%s-redis" (include "wsgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Seconds a pod may take to stop: preStop, the drain, its 2 s close grace, and a margin. */}}
{{- define "wsgate.gracePeriod" -}}
{{- add .Values.preStopSleepSeconds .Values.drain.delaySeconds .Values.drain.periodSeconds 2 10 -}}
{{- end -}}
