{{- /*
Exactly what the operator calls (operator/llmjob_operator/kube.py, handlers.py) and what
kopf needs for on.event handlers. No Secrets, no wildcards, no update of specs.
*/}}
{{- define "llmjob.operatorRules" -}}
# kopf watches jobs; the operator reads one before writing its status, and deletes
# finished jobs whose ttlSecondsAfterFinished has passed.
- apiGroups: ["training.llmjob.dev"]
  resources: ["llmtrainingjobs"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["training.llmjob.dev"]
  resources: ["llmtrainingjobs/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin allow only with this.
- apiGroups: ["training.llmjob.dev"]
  resources: ["llmtrainingjobs/finalizers"]
  verbs: ["update"]
# Worker pods are created once and deleted, never patched (a pod spec is immutable).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Created when missing (get: whose is a same-named object that is already there),
# server-side applied only when the operator controls them. Deletion is left to the
# garbage collector (ownerReferences).
- apiGroups: [""]
  resources: ["services", "configmaps", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The gang schedulers' PodGroups (scheduling.gang; scheduling.k8s.io for Native), the same
# way; not watched.
- apiGroups: ["scheduling.x-k8s.io", "scheduling.volcano.sh", "scheduling.k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "create", "patch"]
# Kueue's Workload of a Queued gang, read for its reason (the Queued condition's message).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get"]
# The operator's and kopf's events about jobs.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
