"""A discrete-event simulator of the router over simulated workers (`specd bench simulate`).

It runs the router's own decision code (`specd.router.decisions`: policies, speculation control,
batch picking, commit) on a virtual clock; only the workers are models: step times from a
profile (`profiles`), acceptance and lengths from a workload (`workloads`).
"""
