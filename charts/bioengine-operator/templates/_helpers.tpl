{{/*
Names, labels and the few computed settings every template shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "bioengine-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object: "<release>-<chart>", or just the release name when it already
contains the chart name; 63 characters at most (some names become DNS labels).
*/}}
{{- define "bioengine-operator.fullname" -}}
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

{{/*
Name of a cluster-scoped object (ClusterRole, ClusterRoleBinding): the full name plus the
release namespace, so the chart can be installed once per namespace without two releases
claiming the same cluster-wide object. Call with (dict "ctx" . "suffix" "operator").
*/}}
{{- define "bioengine-operator.clusterName" -}}
{{- printf "%s-%s-%s" (include "bioengine-operator.fullname" .ctx) .ctx.Release.Namespace .suffix -}}
{{- end -}}

{{- define "bioengine-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. Call with (dict "ctx" . "component" "operator"). */}}
{{- define "bioengine-operator.labels" -}}
helm.sh/chart: {{ include "bioengine-operator.chart" .ctx }}
{{ include "bioengine-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: bioengine
{{- end -}}

{{/* The immutable subset used in Deployment selectors. Same arguments as labels. */}}
{{- define "bioengine-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bioengine-operator.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "bioengine-operator.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "bioengine-operator.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bioengine-operator.bridge.serviceAccountName" -}}
{{- if .Values.bridge.serviceAccount.create -}}
{{- default (printf "%s-bridge" (include "bioengine-operator.fullname" .)) .Values.bridge.serviceAccount.name -}}
{{- else -}}
{{- required "bridge.serviceAccount.name is required when bridge.serviceAccount.create is false" .Values.bridge.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator/bridge/dataset-server image: repository@digest, else repository:tag. */}}
{{- define "bioengine-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Name and URL of the bundled Hypha server. */}}
{{- define "bioengine-operator.hypha.name" -}}
{{- printf "%s-hypha" (include "bioengine-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bioengine-operator.hypha.secretName" -}}
{{- default (include "bioengine-operator.hypha.name" .) .Values.hypha.existingSecret -}}
{{- end -}}

{{/* The Hypha server URL the bridge uses: the configured one, else the bundled server. */}}
{{- define "bioengine-operator.bridge.serverUrl" -}}
{{- if .Values.bridge.hypha.serverUrl -}}
{{- .Values.bridge.hypha.serverUrl -}}
{{- else if .Values.hypha.enabled -}}
{{- printf "http://%s.%s.svc:%v" (include "bioengine-operator.hypha.name" .) .Release.Namespace .Values.hypha.service.port -}}
{{- end -}}
{{- end -}}

{{/* The bridge's Hypha client id: bridge.clientId, else bioengine-bridge[-<clusterName>]. */}}
{{- define "bioengine-operator.bridge.clientId" -}}
{{- if .Values.bridge.clientId -}}
{{- .Values.bridge.clientId -}}
{{- else -}}
{{- join "-" (compact (list "bioengine-bridge" .Values.clusterName)) -}}
{{- end -}}
{{- end -}}

{{/* The namespace the worker service deploys apps to: worker.namespace, else the release's. */}}
{{- define "bioengine-operator.worker.namespace" -}}
{{- default .Release.Namespace .Values.bridge.worker.namespace -}}
{{- end -}}

{{/* "true" when the bridge is deployed: enabled and a Hypha server is known. */}}
{{- define "bioengine-operator.bridge.deployed" -}}
{{- if and .Values.bridge.enabled (include "bioengine-operator.bridge.serverUrl" .) -}}
true
{{- end -}}
{{- end -}}

{{/*
The Secret holding the bridge's own Hypha token, if it has one; empty when the bridge mints
its token from the bundled server (see bridge-deployment.yaml).
*/}}
{{- define "bioengine-operator.bridge.tokenSecretName" -}}
{{- if .Values.bridge.hypha.existingSecret -}}
{{- .Values.bridge.hypha.existingSecret -}}
{{- else if .Values.bridge.hypha.token -}}
{{- printf "%s-hypha-token" (include "bioengine-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else if not .Values.hypha.enabled -}}
{{- fail "the bridge needs a Hypha token: set bridge.hypha.existingSecret (preferred) or bridge.hypha.token, or enable the bundled server (hypha.enabled)" -}}
{{- end -}}
{{- end -}}

{{/* The Secret (private key) and ConfigMap (public key) of the dataset tokens. */}}
{{- define "bioengine-operator.tokenSigning.name" -}}
{{- printf "%s-dataset-tokens" (include "bioengine-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* prometheus.io annotations of a pod serving metrics. */}}
{{- define "bioengine-operator.scrapeAnnotations" -}}
{{- if .Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The read-only root FS needs a writable /tmp. */}}
{{- define "bioengine-operator.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{- define "bioengine-operator.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
Scheduling fields of a pod spec. Call with (dict "values" .Values.operator "pull" .Values.imagePullSecrets).
*/}}
{{- define "bioengine-operator.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{- define "bioengine-operator.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
What kopf itself needs, for the operator and the bridge alike (cluster-scoped by nature):
it watches CRDs to find the resources it serves, and, when it watches only some namespaces,
it lists and watches namespaces to follow them. Nothing more (checked against the API
server's audit log by the chart tests).
*/}}
{{- define "bioengine-operator.frameworkRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}
