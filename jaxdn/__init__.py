"""jaxdn: fast, trustworthy denoising of atomic-resolution microscopy images in JAX/Flax."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "denoise", "read", "write", "Image"]


def __getattr__(name):  # lazy: `import jaxdn` stays fast and does not import JAX
    if name == "denoise":
        from .api import denoise
        return denoise
    if name in ("read", "write", "Image"):
        from . import io
        return getattr(io, name)
    raise AttributeError(name)
