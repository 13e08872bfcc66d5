{{- define "cliscale.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cliscale.labels" -}}
app.kubernetes.io/name: cliscale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "cliscale.selector" -}}
app.kubernetes.io/name: cliscale
app.kubernetes.io/instance: {{ .root.Release.Name }}
cliscale.dev/component: {{ .component }}
{{- end -}}

{{/* <operator|gateway|runner>.image if set (skaffold sets it), else <repository>/<component>:<tag>. */}}
{{- define "cliscale.image" -}}
{{- $own := (index .root.Values .component).image | default "" -}}
{{- $own | default (printf "%s/%s:%s" .root.Values.image.repository .component (.root.Values.image.tag | default .root.Chart.AppVersion)) -}}
{{- end -}}

{{- define "cliscale.sessionsNamespace" -}}
{{- .Values.sessionsNamespace | default .Release.Namespace -}}
{{- end -}}

{{- define "cliscale.apiKeySecret" -}}
{{- .Values.apiKey.existingSecret | default (printf "%s-api-key" (include "cliscale.fullname" .)) -}}
{{- end -}}

{{- define "cliscale.signingKeySecret" -}}
{{- .Values.signingKey.existingSecret | default (printf "%s-signing-key" (include "cliscale.fullname" .)) -}}
{{- end -}}

{{- define "cliscale.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "cliscale.fullname" .)) -}}
{{- end -}}

{{/* Whether the chart runs its own evaluation PostgreSQL: no database named, and allowed. */}}
{{- define "cliscale.evaluationDatabase" -}}
{{- if and .Values.database.evaluation.enabled (not .Values.database.url) (not .Values.database.existingSecret) -}}
true
{{- end -}}
{{- end -}}

{{/* An init container that waits for the evaluation database to take connections. */}}
{{- define "cliscale.waitForDatabase" -}}
{{- if include "cliscale.evaluationDatabase" . }}
initContainers:
  - name: wait-for-database
    image: {{ .Values.database.evaluation.image }}
    command: ["sh", "-c", "until pg_isready -q -h {{ include "cliscale.fullname" . }}-postgres -p 5432; do sleep 1; done"]
    securityContext: {{- include "cliscale.containerSecurityContext" . | nindent 6 }}
    resources:
      requests: { cpu: 10m, memory: 16Mi }
      limits: { cpu: 100m, memory: 64Mi }
{{- end }}
{{- end -}}

{{/* The restricted Pod Security Standard, for every pod of the chart. */}}
{{- define "cliscale.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cliscale.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cliscale.podAnnotations" -}}
{{- if .root.Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{- define "cliscale.signingKeyFiles" -}}
/etc/cliscale/signing/signing.pem{{ if .Values.signingKey.publishPrevious }},/etc/cliscale/signing/previous.pem{{ end }}
{{- end -}}
