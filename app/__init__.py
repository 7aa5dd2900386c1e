"""mnist-serve: the HTTP inference service."""
