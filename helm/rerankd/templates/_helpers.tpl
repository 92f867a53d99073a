{{/* Names, labels and the pieces several templates share. */}}

{{- define "rerankd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rerankd.fullname" -}}
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

{{- define "rerankd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every object; the selector labels (instance, component) are added per object. */}}
{{- define "rerankd.commonLabels" -}}
helm.sh/chart: {{ include "rerankd.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rerankd
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "rerankd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rerankd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "rerankd.labels" -}}
{{ include "rerankd.commonLabels" . }}
{{ include "rerankd.selectorLabels" . }}
{{- end -}}

{{- define "rerankd.redis.fullname" -}}
{{- printf "%s-redis" (include "rerankd.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rerankd.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rerankd.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cache
{{- end -}}

{{- define "rerankd.redis.labels" -}}
{{ include "rerankd.commonLabels" . }}
{{ include "rerankd.redis.selectorLabels" . }}
{{- end -}}

{{- define "rerankd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rerankd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest. Args: (dict "image" .image "defaultTag" "x"). */}}
{{- define "rerankd.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .defaultTag .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "rerankd.image" -}}
{{- $flavour := ternary "gpu" "cpu" .Values.gpu.enabled -}}
{{- include "rerankd.imageRef" (dict "image" .Values.image "defaultTag" (printf "%s-%s" .Chart.AppVersion $flavour)) -}}
{{- end -}}

{{/* Where the config file, the keys file and the model cache sit inside the container. */}}
{{- define "rerankd.configDir" -}}/etc/rerankd/config{{- end -}}
{{- define "rerankd.configPath" -}}{{ include "rerankd.configDir" . }}/rerankd.yaml{{- end -}}

{{- define "rerankd.keysSecretName" -}}
{{- default (printf "%s-keys" (include "rerankd.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "rerankd.keysSecretKey" -}}{{ .Values.auth.secretKey }}{{- end -}}

{{/* The keys file is mounted when auth is on and a keys file is given inline or by Secret. */}}
{{- define "rerankd.keysMounted" -}}
{{- if and .Values.auth.enabled (or .Values.auth.keysFile .Values.auth.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* A static API key (Secret <fullname>-api-key) is kept when auth is on and no keys file is mounted. */}}
{{- define "rerankd.staticKey" -}}
{{- if and .Values.auth.enabled .Values.auth.generateKey (not (include "rerankd.keysMounted" .)) -}}true{{- end -}}
{{- end -}}

{{- define "rerankd.apiKeySecretName" -}}{{ include "rerankd.fullname" . }}-api-key{{- end -}}

{{- define "rerankd.hubSecretName" -}}
{{- default (printf "%s-hub" (include "rerankd.fullname" .)) .Values.hub.existingSecret -}}
{{- end -}}

{{- define "rerankd.hubSecretKey" -}}
{{- if .Values.hub.existingSecret -}}{{ .Values.hub.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* The Secret and key of the Redis password, or nothing when no password is used. */}}
{{- define "rerankd.redisPasswordSecret" -}}
{{- $b := .Values.redis.bundled -}}
{{- $e := .Values.redis.external -}}
{{- if and $b.enabled $b.auth.enabled -}}
{{- if $b.auth.existingSecret -}}{{ $b.auth.existingSecret }}:{{ $b.auth.existingSecretKey }}
{{- else -}}{{ include "rerankd.redis.fullname" . }}:redis-password{{- end -}}
{{- else if and $e.url $e.existingSecret -}}{{ $e.existingSecret }}:{{ $e.existingSecretKey }}
{{- else if and $e.url $e.password -}}{{ include "rerankd.redis.fullname" . }}:redis-password
{{- end -}}
{{- end -}}

{{/*
The Redis URL with "$(REDIS_PASSWORD)" where the password goes: Kubernetes expands it from
the env var defined just before, so the password never appears in the pod spec or the ConfigMap.
*/}}
{{- define "rerankd.redisUrl" -}}
{{- $withPassword := ne (include "rerankd.redisPasswordSecret" .) "" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- $host := printf "%s:6379" (include "rerankd.redis.fullname" .) -}}
{{- if $withPassword -}}redis://:$(REDIS_PASSWORD)@{{ $host }}/0{{- else -}}redis://{{ $host }}/0{{- end -}}
{{- else if .Values.redis.external.url -}}
{{- $u := urlParse .Values.redis.external.url -}}
{{- if $withPassword -}}
{{- $user := regexReplaceAll ":.*$" (default "" $u.userinfo) "" -}}
{{- $q := ternary (printf "?%s" $u.query) "" (ne $u.query "") -}}
{{- printf "%s://%s:$(REDIS_PASSWORD)@%s%s%s" $u.scheme $user $u.host $u.path $q -}}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* rerankd's config file: the free-form `config` map plus the keys the chart owns. */}}
{{- define "rerankd.configFile" -}}
{{- $cfg := deepCopy (default dict .Values.config) -}}
{{- if .Values.models -}}
{{- $_ := set $cfg "models" .Values.models -}}
{{- end -}}
{{- if include "rerankd.keysMounted" . -}}
{{- $_ := set $cfg "keys_file" (printf "%s/%s" .Values.auth.mountPath (include "rerankd.keysSecretKey" .)) -}}
{{- end -}}
{{- $_ := set $cfg "auth" (ternary "on" "off" (and .Values.auth.enabled true)) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Labels of this release's rerankd_queue_depth series in Prometheus (set by the ServiceMonitor's scrape). */}}
{{- define "rerankd.queueSeriesLabels" -}}
{{- if .Values.autoscaling.external.matchLabels -}}
{{- toYaml .Values.autoscaling.external.matchLabels -}}
{{- else -}}
service: {{ include "rerankd.fullname" . }}
{{- end -}}
{{- end -}}

{{/* The hub ids (owner/name[@revision]) of models[], for `rerankd download`; folders are skipped. */}}
{{- define "rerankd.hubModels" -}}
{{- range .Values.models -}}
{{- if regexMatch "^[A-Za-z0-9][\\w.-]*/[\\w.-]+$" .path }}
- {{ if .revision }}{{ printf "%s@%s" .path .revision | quote }}{{ else }}{{ .path | quote }}{{ end }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Render-time checks of combinations a JSON schema cannot express clearly. */}}
{{- define "rerankd.validate" -}}
{{- if and .Values.redis.bundled.enabled .Values.redis.external.url -}}
{{- fail "redis: set either redis.bundled.enabled or redis.external.url, not both" -}}
{{- end -}}
{{- if and (or .Values.redis.external.password .Values.redis.external.existingSecret) (not .Values.redis.external.url) -}}
{{- fail "redis.external: a password or existingSecret needs redis.external.url" -}}
{{- end -}}
{{- if .Values.redis.external.url -}}
{{- $u := urlParse .Values.redis.external.url -}}
{{- if not (has $u.scheme (list "redis" "rediss" "redis+sentinel" "rediss+sentinel" "redis+cluster" "rediss+cluster")) -}}
{{- fail "redis.external.url must start with redis://, rediss://, redis+sentinel:// or redis+cluster:// (rediss+ for TLS)" -}}
{{- end -}}
{{- if contains ":" (default "" $u.userinfo) -}}
{{- fail "redis.external.url holds a password, which would land in the pod spec: give it by redis.external.existingSecret (or redis.external.password)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.auth.enabled .Values.auth.keysFile .Values.auth.existingSecret -}}
{{- fail "auth: set either auth.keysFile or auth.existingSecret, not both" -}}
{{- end -}}
{{- $tp := int (default 1 (index .Values.config "tensor_parallel_size")) -}}
{{- if and .Values.gpu.enabled (gt $tp (int .Values.gpu.count)) -}}
{{- fail (printf "config.tensor_parallel_size (%d) needs at least as many GPUs per pod: raise gpu.count (%d)" $tp (int .Values.gpu.count)) -}}
{{- end -}}
{{- $devices := default list (index .Values.config "devices") -}}
{{- if and .Values.gpu.enabled (not (has "all" $devices)) (gt (len $devices) (int .Values.gpu.count)) -}}
{{- fail (printf "config.devices names %d devices, more than the pod's GPUs: raise gpu.count (%d) or use devices: [all]" (len $devices) (int .Values.gpu.count)) -}}
{{- end -}}
{{- $grace := int (default 30 (index .Values.config "shutdown_grace_s")) -}}
{{- $drain := add (int .Values.preStopSleepSeconds) $grace -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + rerankd's %d s drain, config.shutdown_grace_s (%d)" (int .Values.terminationGracePeriodSeconds) $grace $drain) -}}
{{- end -}}
{{- $a := .Values.autoscaling -}}
{{- if and $a.enabled $a.keda.enabled -}}
{{- if not $a.queueDepthPerPod -}}
{{- fail "autoscaling.keda scales on the queue depth: set autoscaling.queueDepthPerPod" -}}
{{- end -}}
{{- if not $a.keda.serverAddress -}}
{{- fail "autoscaling.keda.serverAddress: the URL of the Prometheus that scrapes rerankd" -}}
{{- end -}}
{{- end -}}
{{- if and $a.enabled (not $a.keda.enabled) (not (or $a.queueDepthPerPod $a.targetCPUUtilizationPercentage $a.metrics)) -}}
{{- fail "autoscaling: the HPA needs a metric: autoscaling.queueDepthPerPod, targetCPUUtilizationPercentage or metrics" -}}
{{- end -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if .Values.modelCache.download.enabled -}}
{{- if .Values.modelCache.readOnly -}}
{{- fail "modelCache.download writes to the model volume: it cannot be readOnly" -}}
{{- end -}}
{{- if not (include "rerankd.hubModels" .) -}}
{{- fail "modelCache.download: no models[].path is a hub id (owner/name) to download" -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.modelCache.type "existingClaim") (not .Values.modelCache.existingClaim) -}}
{{- fail "modelCache.type existingClaim needs modelCache.existingClaim" -}}
{{- end -}}
{{- range $k := list "host" "port" -}}
{{- if hasKey $.Values.config $k -}}
{{- fail (printf "config.%s is set by the chart (service.port / containerPort); remove it from config" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
