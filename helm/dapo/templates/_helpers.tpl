{{- define "dapo.fullname" -}}{{ printf "%s-dapo" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}

{{- define "dapo.labels" -}}
app.kubernetes.io/name: dapo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dapo.selector" -}}
app.kubernetes.io/name: dapo
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dapo.image" -}}{{ printf "%s:%s" .repository .tag }}{{- end -}}

{{- define "dapo.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{ printf "redis://%s-redis:6379/0" (include "dapo.fullname" .) }}
{{- else -}}
{{ required "redis.external.url is required when redis.enabled is false" .Values.redis.external.url }}
{{- end -}}
{{- end -}}

{{- define "dapo.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
