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

{{- define "dapo.secretName" -}}
{{ .Values.auth.existingSecret | default (printf "%s-secrets" (include "dapo.fullname" .)) }}
{{- end -}}

{{- /* The deployment's secrets and TLS files, in the environment of every dapo container. */}}
{{- define "dapo.secretEnv" -}}
- name: DAPO_SERVICE_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "dapo.secretName" . }}, key: service-token}}
{{- if or .Values.redis.enabled .Values.redis.password .Values.auth.existingSecret }}
- name: DAPO_REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "dapo.secretName" . }}, key: redis-password, optional: {{ not .Values.redis.enabled }}}}
{{- end }}
{{- if .Values.tls.enabled }}
- {name: DAPO_TLS_CERT_FILE, value: /etc/dapo/tls/tls.crt}
- {name: DAPO_TLS_KEY_FILE, value: /etc/dapo/tls/tls.key}
{{- if .Values.tls.mutual }}
- {name: DAPO_TLS_CA_FILE, value: /etc/dapo/tls/ca.crt}
{{- end }}
{{- with .Values.tls.serverName }}
- {name: DAPO_TLS_SERVER_NAME, value: {{ . | quote }}}
{{- end }}
{{- end }}
{{- end -}}

{{- define "dapo.tlsVolumeMounts" -}}
{{- if .Values.tls.enabled }}
- {name: tls, mountPath: /etc/dapo/tls, readOnly: true}
{{- end }}
{{- end -}}

{{- define "dapo.tlsVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret: {secretName: {{ required "tls.secretName is required when tls.enabled is true" .Values.tls.secretName }}}
{{- end }}
{{- end -}}

{{- /* A gRPC health probe: the kubelet's own for plain text, `dapo health` (TLS-aware) under TLS. */}}
{{- define "dapo.grpcProbe" -}}
{{- if .root.Values.tls.enabled -}}
exec: {command: ["dapo", "health", "grpc", "127.0.0.1:{{ .port }}"]}
{{- else -}}
grpc: {port: {{ .port }}}
{{- end -}}
{{- end -}}

{{- define "dapo.httpScheme" -}}{{ if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}{{- end -}}

{{- /* The pod securityContext of the dapo images (uid 10001): runAsUser and fsGroup. */}}
{{- define "dapo.podSecurityContext" -}}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
