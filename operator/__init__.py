"""specd.operator: the Kopf operator that turns SpecDecodingService resources into workloads.

Modules, each with one job:
  crd          the CustomResourceDefinition (single source of truth) and schema defaulting
  names        child names, labels and ports shared by builders, status and discovery
  model        model URIs (pvc://claim/path, absolute paths) -> volumes, mounts, paths
  builders     pure functions: a SpecDecodingService -> the list of child objects (dicts)
  status       pure functions: observed Deployments -> status, conditions, transitions
  kube         a small REST client: server-side apply, list, delete, status patch, events
  reconcile    one reconciliation pass: apply children, prune, observe, write status
  handlers     the Kopf handlers that call `reconcile`
  cli          `specd operator`
"""
