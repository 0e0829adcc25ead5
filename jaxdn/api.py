"""The one Python entry point: `denoise(image_or_array, method=..., **options)`.

Every method lives behind the same call: a float32 (H, W) or (T, H, W) array goes in, an array of
the same shape comes out. The CLI is a thin layer over this module.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import InputError, MethodNotAvailable
from . import validate

DEFAULT_METHOD = "reucid"

# name -> (module, function, fixed keyword options). Each function has the signature
# `fn(data: np.ndarray float32 (H, W) | (T, H, W), *, weights=None, seed=0, progress=False, **options)
#  -> np.ndarray of the same shape, float32`.
METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "reucid": ("jaxdn.methods.reucid", "denoise", {}),
    "unet-g": ("jaxdn.methods.unet", "denoise", {"noise_model": "g"}),
    "unet-sp": ("jaxdn.methods.unet", "denoise", {"noise_model": "sp"}),
    "unet-gsp": ("jaxdn.methods.unet", "denoise", {"noise_model": "gsp"}),
    "unet-bbg": ("jaxdn.methods.unet", "denoise", {"noise_model": "bbg"}),
    "stripes": ("jaxdn.methods.stripes", "denoise", {}),
    "noise2atom": ("jaxdn.methods.noise2atom", "denoise", {}),
}


# Shipped default weights per method (files in jaxdn/weights/), recorded in provenance.
DEFAULT_WEIGHTS = {
    "reucid": "reucid_classifier.npz",
    "unet-g": "unet_g.npz", "unet-sp": "unet_sp.npz", "unet-gsp": "unet_gsp.npz", "unet-bbg": "unet_bbg.npz",
    "stripes": "stripes.npz",
    "noise2atom": "noise2atom.npz",
}


def weights_path(method: str, weights=None):
    """The weights file a method will use: `weights` if given, else the shipped default (may not exist)."""
    from pathlib import Path
    from .weights_io import shipped
    if weights is not None:
        return Path(weights)
    name = DEFAULT_WEIGHTS.get(method)
    return shipped(name) if name else None


def method_function(method: str):
    """Return the denoising function registered for `method`, or raise `MethodNotAvailable`."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    module_name, fn_name, fixed = METHODS[method]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (err.name == module_name or module_name.startswith(err.name + ".")):
            raise MethodNotAvailable(f"method {method!r} is not implemented in this version of jaxdn yet") from None
        raise
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise MethodNotAvailable(f"method {method!r} is not implemented in this version of jaxdn yet")
    if fixed:
        import functools
        fn = functools.partial(fn, **fixed)
    return fn


def _options_for(fn, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Keep the options `fn` names explicitly; refuse the others with a clear message.

    `memory_budget` is a global setting: a method that does not use one ignores it (with a warning).
    """
    import inspect
    import warnings
    target = fn.func if hasattr(fn, "func") else fn
    named = {n for n, p in inspect.signature(target).parameters.items()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    out = {}
    for key, value in options.items():
        if key in named:
            out[key] = value
        elif key == "memory_budget":
            warnings.warn(f"method {method!r} does not use a memory budget; ignoring it", stacklevel=3)
        else:
            flag = "--" + key.replace("_", "-")
            raise InputError(f"option {key!r} ({flag}) does not apply to method {method!r}")
    return out


def available_methods() -> list[str]:
    """Names of the methods that are implemented in this installation."""
    out = []
    for name in METHODS:
        try:
            method_function(name)
        except MethodNotAvailable:
            continue
        out.append(name)
    return out


def denoise(image, method: str = DEFAULT_METHOD, *, weights=None, seed: int = 0,
            fill_nonfinite: bool = False, progress: bool = False, **options):
    """Denoise an image or a stack of frames.

    Args:
      image: `jaxdn.io.Image`, or an array (H, W) or (T, H, W) of any real dtype.
      method: one of `METHODS` (default "reucid").
      weights: path to non-default weights (file or directory), or None for the shipped ones.
      seed: PRNG seed for every random choice the method makes (results are deterministic per seed).
      fill_nonfinite: replace NaN/inf pixels by the local median instead of refusing them.
      progress: show a progress bar for long work.
      **options: method-specific options (e.g. `patch_size`, `memory_budget` for REUCID).
    Returns:
      Same type as `image`: an `Image` with the same calibration and metadata, or a float32 array
      of the same shape.
    """
    from .io import Image  # local import keeps `import jaxdn.api` light

    fn = method_function(method)
    data = image.data if isinstance(image, Image) else image
    data = validate.to_float32(np.asarray(data))
    data = validate.check_shape(data)
    data, _ = validate.fill_nonfinite(data, fill=fill_nonfinite)
    options = _options_for(fn, method, options)
    out = fn(data, weights=weights, seed=seed, progress=progress, **options)
    out = np.asarray(out, dtype=np.float32)
    if out.shape != data.shape:
        raise RuntimeError(f"method {method!r} returned shape {out.shape} for input {data.shape}")
    if isinstance(image, Image):
        return replace(image, data=out)
    return out
