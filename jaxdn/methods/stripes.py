"""Inference with the STM stripe-removal autoencoder (`stripes`).

Shipped weights `jaxdn/weights/stripes.npz`, trained on simulated STM topographies with the
thesis' stripe noise: `jaxdn train stripes --config configs/stripes.py:default`.

Intensity handling: each frame is min–max normalised to [0, 1] (the thesis' normalisation),
denoised (the sigmoid output is in (0, 1)) and mapped back to the frame's original range, so
heights keep their units. Large images are processed in overlapping, blended tiles.
`method="row-median"` runs the classical peer instead (Gwyddion's row alignment by median of
differences, `jaxdn.classical.align_rows_median_diff`).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .unet import apply_frames, load_model, weights_path

__all__ = ["denoise"]


def denoise(data, *, weights=None, seed: int = 0, progress: bool = False, normalize: str = "minmax",
            tile: int = 256, overlap: int = 32, batch_size: int = 8, method: str = "autoencoder") -> np.ndarray:
    """Remove horizontal scan stripes from an STM topography (or stack).

    Args:
      data: float32 (H, W) or (T, H, W); rows are scan lines.
      weights: None (shipped), a .npz from `jaxdn train stripes`, or a directory holding one.
      seed: unused (deterministic); progress: unused.
      normalize: "minmax" (default) or "none" (input already in [0, 1]).
      tile, overlap, batch_size: tiling of large images.
      method: "autoencoder" (default) or "row-median" (classical peer, no weights).
    Returns:
      float32 array of `data`'s shape.
    """
    del seed, progress
    if method == "row-median":
        from ..classical import align_rows_median_diff
        return align_rows_median_diff(np.asarray(data, np.float32))
    if method != "autoencoder":
        raise InputError(f"stripes method must be 'autoencoder' or 'row-median', got {method!r}")
    hint = "jaxdn train stripes --config configs/stripes.py:default --workdir runs/stripes"
    path = weights_path(weights, default_name="stripes.npz", train_hint=hint)
    fn = load_model(path, kind="stripes")
    return apply_frames(fn, data, normalize=normalize, tile=tile, overlap=overlap, batch_size=batch_size)
