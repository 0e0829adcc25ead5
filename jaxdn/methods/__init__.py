"""Inference entry points, one module per method; see `jaxdn.api.METHODS`."""
