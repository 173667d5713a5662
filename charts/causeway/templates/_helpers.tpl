{{/*
The chart name, or nameOverride.
*/}}
{{- define "causeway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, else the release name (when it already contains the chart
name), else <release>-<chart>. Resource names derived from it add suffixes of up to 17
characters ("-sidecar-injector"), so it is cut at 46.
*/}}
{{- define "causeway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "causeway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "causeway.labels" -}}
helm.sh/chart: {{ include "causeway.chart" . }}
{{ include "causeway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: causeway
{{- end }}

{{/*
Labels that select the operator's pods (immutable in a Deployment's selector: never change them).
*/}}
{{- define "causeway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "causeway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "causeway.serviceAccountName" -}}
{{- include "causeway.fullname" . }}
{{- end }}

{{/*
The operator image (and, unless sidecar.image says otherwise, the sidecar image).
*/}}
{{- define "causeway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Names the operator is told about (its flags) and the RBAC restricts itself to.
*/}}
{{- define "causeway.webhookServiceName" -}}
{{- printf "%s-webhook" (include "causeway.fullname" .) }}
{{- end }}

{{- define "causeway.webhookConfigName" -}}
{{- printf "%s-sidecar-injector" (include "causeway.fullname" .) }}
{{- end }}

{{- define "causeway.leaseName" -}}
{{- printf "%s-operator" (include "causeway.fullname" .) }}
{{- end }}

{{/*
The Secret with the webhook's serving certificate: the operator's own (operator-managed mode),
cert-manager's, or the one brought by the user (webhook.tls.secretName).
*/}}
{{- define "causeway.webhookSecretName" -}}
{{- if .Values.webhook.tls.secretName }}
{{- .Values.webhook.tls.secretName }}
{{- else }}
{{- printf "%s-webhook-tls" (include "causeway.fullname" .) }}
{{- end }}
{{- end }}

{{/*
"true" when the operator creates the webhook certificate and keeps the caBundle itself (neither
cert-manager nor a certificate brought by the user). Fails on contradictory values.
*/}}
{{- define "causeway.webhookSelfManaged" -}}
{{- if and .Values.webhook.certManager.enabled (or .Values.webhook.tls.secretName .Values.webhook.tls.caBundle) }}
{{- fail "webhook.certManager.enabled and webhook.tls (bring your own certificate) exclude each other: choose one" }}
{{- end }}
{{- if and .Values.webhook.tls.secretName (not .Values.webhook.tls.caBundle) }}
{{- fail "webhook.tls.secretName needs webhook.tls.caBundle: the PEM of the CA that signed the certificate" }}
{{- end }}
{{- if and .Values.webhook.tls.caBundle (not .Values.webhook.tls.secretName) }}
{{- fail "webhook.tls.caBundle needs webhook.tls.secretName: the kubernetes.io/tls Secret with the certificate" }}
{{- end }}
{{- if and .Values.nodeCredentials.accountKeySecret.name .Values.sidecar.credentialsSecret }}
{{- fail "nodeCredentials.accountKeySecret (a credential per Node) and sidecar.credentialsSecret (one shared by every sidecar) exclude each other: choose one" }}
{{- end }}
{{- if not (or .Values.webhook.certManager.enabled .Values.webhook.tls.secretName) }}true{{ end }}
{{- end }}

{{/*
The cert-manager Certificate and its self-signed Issuer (when no issuerRef name is given).
*/}}
{{- define "causeway.certificateName" -}}
{{- printf "%s-webhook" (include "causeway.fullname" .) }}
{{- end }}

{{- define "causeway.issuerName" -}}
{{- printf "%s-selfsigned" (include "causeway.fullname" .) }}
{{- end }}
