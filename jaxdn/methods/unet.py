"""Inference with the TEM U-Nets (`unet-g`, `unet-sp`, `unet-gsp`, `unet-bbg`).

Each noise model has its own shipped weights `jaxdn/weights/unet_<model>.npz`, trained on
simulated graphene with `jaxdn train unet-<model> --config configs/unet.py:<model>`.

Intensity handling: the nets were trained on images in [0, 1] (paper §II.E). Each frame is
min–max normalised to [0, 1] (`normalize="minmax"`, default), denoised, and mapped back to the
frame's original range (out · (max − min) + min), so the result has the input's units. Use
`normalize="none"` for data already in [0, 1] (e.g. the simulated test images). Full images of
any size are processed in overlapping tiles blended with a smooth window (`jaxdn.tiling`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..weights_io import resolve as weights_path  # re-exported: None/'default', a .npz, or a folder

__all__ = ["denoise", "load_model", "weights_path", "apply_frames", "NOISE_MODELS"]

NOISE_MODELS = ("g", "sp", "gsp", "bbg")


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float, kind: str):
    from flax import nnx
    from ..weights_io import load_weights, read_meta

    meta = read_meta(path)
    model_cfg = (meta.get("config") or {}).get("model") or {}
    if kind == "unet":
        from ..models.unet import UNet
        widths = tuple(model_cfg.get("widths", (32, 64, 128)))
        build = lambda: UNet(widths=widths, rngs=nnx.Rngs(0))
    else:
        from ..models.stripe_autoencoder import StripeAutoencoder
        features = int(model_cfg.get("features", 32))
        build = lambda: StripeAutoencoder(features=features, rngs=nnx.Rngs(0))
    model = load_weights(path, build)
    model.eval()
    graphdef, state = nnx.split(model)

    import jax

    @jax.jit
    def fn(x):  # (N, h, w) -> (N, h, w)
        return nnx.merge(graphdef, state)(x[..., None])[..., 0]

    return fn


def load_model(path: Path, *, kind: str) -> Callable:
    """A jitted function (N, h, w) float32 → (N, h, w) for the weights at `path` (cached)."""
    path = Path(path)
    return _load_cached(str(path.resolve()), os.path.getmtime(path), kind)


def apply_frames(fn: Callable, data: np.ndarray, *, normalize: str = "minmax", tile: int = 256,
                 overlap: int = 32, batch_size: int = 8) -> np.ndarray:
    """Normalise each frame, run `fn` over overlapping tiles, undo the normalisation.

    Args:
      fn: (N, t, t) → (N, t, t) network on images in [0, 1].
      data: float32 (H, W) or (T, H, W).
      normalize: "minmax" (per frame to [0, 1] and back) or "none".
    Returns:
      float32 array of `data`'s shape.
    """
    if normalize not in ("minmax", "none"):
        raise InputError(f"normalize must be 'minmax' or 'none', got {normalize!r}")
    x = np.asarray(data, np.float32)
    single = x.ndim == 2
    x = x[None] if single else x
    if normalize == "minmax":
        lo = x.min(axis=(1, 2), keepdims=True)
        span = np.maximum(x.max(axis=(1, 2), keepdims=True) - lo, np.float32(1e-12))
        x = (x - lo) / span
    from ..tiling import tiled_apply
    y = np.asarray(tiled_apply(fn, x, tile=tile, overlap=overlap, batch_size=batch_size))
    if normalize == "minmax":
        y = y * span + lo
    y = y.astype(np.float32)
    return y[0] if single else y


def denoise(data, *, noise_model: str, weights=None, seed: int = 0, progress: bool = False,
            normalize: str = "minmax", tile: int = 256, overlap: int = 32, batch_size: int = 8) -> np.ndarray:
    """Denoise a TEM image or stack with the U-Net trained on `noise_model` noise.

    Args:
      data: float32 (H, W) or (T, H, W).
      noise_model: "g" (Gaussian), "sp" (salt-and-pepper), "gsp" (both), "bbg" (background
        brightness + Gaussian).
      weights: None (shipped), a .npz written by `jaxdn train`, or a directory holding one.
      seed: unused (inference is deterministic); accepted for API uniformity.
      progress: unused for now.
      normalize: "minmax" (default) or "none" (input already in [0, 1]).
      tile, overlap, batch_size: tiling of large images (px, px, tiles per call).
    Returns:
      float32 array of `data`'s shape, in the input's intensity range.
    """
    del seed, progress
    if noise_model not in NOISE_MODELS:
        raise InputError(f"unknown U-Net noise model {noise_model!r}; choose one of {NOISE_MODELS}")
    hint = f"jaxdn train unet-{noise_model} --config configs/unet.py:{noise_model} --workdir runs/unet-{noise_model}"
    path = weights_path(weights, default_name=f"unet_{noise_model}.npz", train_hint=hint)
    fn = load_model(path, kind="unet")
    return apply_frames(fn, data, normalize=normalize, tile=tile, overlap=overlap, batch_size=batch_size)
