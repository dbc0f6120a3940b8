"""specd.router: the cluster-level scheduler (LAPS-SD, goodput speculation control) and the public gRPC service."""
