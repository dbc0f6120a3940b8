"""gRPC servers of the two worker roles (draft and target) around the model runtime."""
