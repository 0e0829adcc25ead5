"""Stand-in denoising methods for CLI/API mechanics tests (registered with monkeypatch)."""
import numpy as np

from jaxdn import validate


def identity(data, *, weights=None, seed=0, progress=False, **options):
    validate.check_shape(data, min_size=16)
    return data.copy()


def smooth(data, *, weights=None, seed=0, progress=False, **options):
    from scipy import ndimage
    validate.check_shape(data, min_size=16)
    sigma = (0, 1, 1) if data.ndim == 3 else 1
    return ndimage.gaussian_filter(data, sigma)


def crash(data, **kwargs):
    raise RuntimeError("simulated crash inside the method")
