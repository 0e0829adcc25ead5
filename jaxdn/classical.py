"""Classical (non-learned) peers for the trained denoisers, in NumPy.

`align_rows_median_diff` is Gwyddion's "Align rows → Median of differences": each scan line is
shifted by a constant so that the median of its pixel-wise difference to the previous line is
zero. It removes row offsets (the usual STM/AFM/STEM scan-line streaks) and keeps everything that
varies smoothly between lines.
"""
from __future__ import annotations

import numpy as np

__all__ = ["align_rows_median_diff"]


def align_rows_median_diff(data: np.ndarray) -> np.ndarray:
    """Row alignment by median of differences (Gwyddion), for (H, W) or (T, H, W) float data.

    offset_0 = 0, offset_i = offset_{i−1} + median(row_i − row_{i−1}); row_i ← row_i − offset_i.
    The image mean is preserved (a constant is added back). NaNs are ignored in the medians.

    Returns:
      float32 array of the input's shape. An image g(col) + o(row) becomes g(col) + const exactly.
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (T, H, W), got shape {x.shape}")
    d = np.nanmedian(np.diff(x, axis=-2), axis=-1)  # (..., H-1)
    off = np.concatenate([np.zeros(x.shape[:-2] + (1,)), np.cumsum(d, axis=-1)], axis=-1)  # (..., H)
    off = off - off.mean(axis=-1, keepdims=True)
    return (x - off[..., None]).astype(np.float32)
