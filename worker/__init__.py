"""specd.worker: the model runtime (checkpoints, KV cache, batched forward, speculation, tensor
parallelism) and the worker gRPC servers."""
