{{/* Names and labels shared by every template. */}}

{{- define "peak-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peak-router.fullname" -}}
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

{{- define "peak-router.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "peak-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "peak-router.driverSelectorLabels" -}}
app.kubernetes.io/name: {{ include "peak-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: driver
{{- end }}

{{- define "peak-router.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The RayCluster; KubeRay names its head service "<cluster>-head-svc". */}}
{{- define "peak-router.rayClusterName" -}}
{{- printf "%s-ray" (include "peak-router.fullname" .) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "peak-router.rayHeadService" -}}
{{- printf "%s-head-svc" (include "peak-router.rayClusterName" .) }}
{{- end }}

{{- define "peak-router.rayAddress" -}}
{{- .Values.router.rayAddress | default (printf "ray://%s:10001" (include "peak-router.rayHeadService" .)) }}
{{- end }}

{{/* The bundled NATS chart's service: its fullname, as that chart computes it. */}}
{{- define "peak-router.natsUrl" -}}
{{- $svc := printf "%s-nats" .Release.Name }}
{{- if .Values.nats.fullnameOverride }}
{{- $svc = .Values.nats.fullnameOverride }}
{{- else if contains "nats" .Release.Name }}
{{- $svc = .Release.Name }}
{{- end }}
{{- printf "nats://%s:4222" $svc }}
{{- end }}

{{- define "peak-router.secretName" -}}
{{- printf "%s-env" (include "peak-router.fullname" .) }}
{{- end }}

{{- define "peak-router.credentialsPath" -}}
/etc/router/nats/{{ .Values.natsCredentials.key }}
{{- end }}

{{/*
router.yaml: the config from values, with what the chart owns written in: the routes file, the
RayCluster's address (`ray.placement` stays yours), metrics on every interface of the pod (probes and Prometheus reach it
there), the bundled NATS's URL and the mounted credentials file.
*/}}
{{- define "peak-router.config" -}}
{{- $cfg := deepCopy .Values.router.config }}
{{- $_ := set $cfg "routes" "routes.yaml" }}
{{- $_ := set $cfg "metrics" (dict "host" "0.0.0.0" "port" (int .Values.metrics.port)) }}
{{- $ray := dict "address" (include "peak-router.rayAddress" .) "namespace" .Values.router.rayNamespace }}
{{- with (default (dict) $cfg.ray).placement }}
{{- $_ := set $ray "placement" . }}
{{- end }}
{{- $_ := set $cfg "ray" $ray }}
{{- $nats := deepCopy (default (dict) $cfg.nats) }}
{{- if .Values.nats.enabled }}
{{- $_ := set $nats "url" (include "peak-router.natsUrl" .) }}
{{- end }}
{{- if .Values.natsCredentials.existingSecret }}
{{- $_ := set $nats "credentials" (include "peak-router.credentialsPath" .) }}
{{- end }}
{{- $_ := set $cfg "nats" $nats }}
{{- toYaml $cfg }}
{{- end }}

{{/* The NATS TLS volume and mount, shared by the driver and every Ray pod. */}}
{{- define "peak-router.tlsVolume" -}}
{{- if .Values.natsTls.existingSecret }}
- name: nats-tls
  secret:
    secretName: {{ .Values.natsTls.existingSecret }}
{{- end }}
{{- end }}

{{- define "peak-router.tlsMount" -}}
{{- if .Values.natsTls.existingSecret }}
- name: nats-tls
  mountPath: {{ .Values.natsTls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* `ray start` flags as KubeRay takes them: a map of strings, `{}` when empty. */}}
{{- define "peak-router.rayStartParams" -}}
{{- $params := dict }}
{{- range $k, $v := . }}
{{- $_ := set $params $k (toString $v) }}
{{- end }}
{{- toJson $params }}
{{- end }}

{{- define "peak-router.rayAuthSecret" -}}
{{- .Values.ray.auth.existingSecret | default (printf "%s-ray-auth" (include "peak-router.fullname" .)) }}
{{- end }}

{{/* Ray token authentication: the same token for every Ray process and the driver. */}}
{{- define "peak-router.rayAuthEnv" -}}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "peak-router.rayAuthSecret" . }}
      key: token
{{- end }}
{{- end }}
