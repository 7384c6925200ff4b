{{/* Names, labels and images shared by the templates. */}}

{{/* Prefix of every namespaced object's name: the release name ("vdrive"). */}}
{{- define "vdrive.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The node plugin's ServiceAccount (and DaemonSet) name. */}}
{{- define "vdrive.nodePluginName" -}}
{{- printf "%s-node" (include "vdrive.fullname" .) -}}
{{- end -}}

{{/* The CSI driver name: fixed, it is what the plugin reports in GetPluginInfo. */}}
{{- define "vdrive.driverName" -}}csi.vdrive.io{{- end -}}

{{- define "vdrive.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: vdrive
{{- end -}}

{{/* Labels of one component; call with (dict "root" $ "component" "controller"). */}}
{{- define "vdrive.componentLabels" -}}
{{ include "vdrive.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Pod selector of one component; same arguments. */}}
{{- define "vdrive.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* "repository:tag" of an images.* entry; call with (dict "root" $ "image" .Values.images.x). */}}
{{- define "vdrive.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The kubelet directory without a trailing slash. */}}
{{- define "vdrive.kubeletDir" -}}
{{- .Values.node.kubeletDir | trimSuffix "/" -}}
{{- end -}}

{{/* The driver's plugin directory under kubelet's, where the node socket lives. */}}
{{- define "vdrive.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "vdrive.kubeletDir" .) (include "vdrive.driverName" .) -}}
{{- end -}}

{{/* Security context of the controller pod's containers: non-root, nothing writable. */}}
{{- define "vdrive.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* A StorageClass parameter value as a string; whole numbers never in exponent form. */}}
{{- define "vdrive.paramValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
