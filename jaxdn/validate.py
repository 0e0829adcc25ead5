"""Input validation and conversion shared by I/O, the API and every method.

All functions work on NumPy arrays on the host and raise `InputError` with a one-line message.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError


def to_float32(array: np.ndarray) -> np.ndarray:
    """Convert any real dtype to float32 without integer overflow or wrap-around.

    Integers are converted through float64 (exact for every 32-bit integer) and then rounded to
    float32; booleans become 0/1. Complex input is refused.
    """
    array = np.asarray(array)
    if np.iscomplexobj(array):
        raise InputError("complex-valued images are not supported; pass the magnitude or a real part")
    if array.dtype == np.float32:
        return array
    if array.dtype.kind == "b" or (array.dtype.kind in "iu" and array.dtype.itemsize <= 2):
        return array.astype(np.float32)  # exact for 8/16-bit integers
    if array.dtype.kind in "iu":
        return array.astype(np.float64).astype(np.float32)
    if array.dtype.kind == "f":
        with np.errstate(over="ignore"):
            out = array.astype(np.float32)
        if np.isfinite(array).all() and not np.isfinite(out).all():
            raise InputError("image values exceed the float32 range; rescale the data first")
        return out
    raise InputError(f"unsupported pixel dtype {array.dtype}")


def is_color(array: np.ndarray) -> bool:
    """True when the trailing axis looks like RGB/RGBA channels of an (H, W, C) or (T, H, W, C) array."""
    return array.ndim in (3, 4) and array.shape[-1] in (3, 4) and min(array.shape[-3:-1]) > 4


def select_channel(array: np.ndarray, channel: int | None) -> np.ndarray:
    """Refuse colour images unless `channel` picks one of their channels.

    Args:
      array: (H, W), (T, H, W), (H, W, C) or (T, H, W, C) pixel array.
      channel: index of the colour channel to keep, or None.
    Returns:
      The grayscale array, (H, W) or (T, H, W).
    """
    if is_color(array):
        n = array.shape[-1]
        if channel is None:
            raise InputError(f"image has {n} colour channels (RGB/RGBA); choose one with --channel 0..{n - 1}")
        if not 0 <= channel < n:
            raise InputError(f"--channel {channel} out of range for an image with {n} channels")
        return array[..., channel]
    if channel not in (None, 0):
        raise InputError(f"--channel {channel} given but the image is grayscale")
    return array


def check_shape(array: np.ndarray, *, min_size: int = 1) -> np.ndarray:
    """Check an image is (H, W) or (T, H, W), not empty, with H and W at least `min_size`."""
    if array.ndim not in (2, 3):
        raise InputError(f"expected an image (H, W) or a stack (T, H, W), got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"image is empty (shape {array.shape})")
    h, w = array.shape[-2:]
    if min(h, w) < min_size:
        raise InputError(f"image is {h}x{w} pixels but this method needs at least {min_size}x{min_size}")
    return array


def fill_nonfinite(array: np.ndarray, *, fill: bool) -> tuple[np.ndarray, int]:
    """Refuse NaN/inf pixels, or replace each by the median of its finite 3x3..neighbourhood.

    Args:
      array: float32 (H, W) or (T, H, W).
      fill: replace instead of refusing.
    Returns:
      (array, number of replaced pixels). The input array is never modified.
    """
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return array, 0
    if not fill:
        raise InputError(f"image has {n_bad} NaN/inf pixels; pass --fill-nonfinite to replace them by the local median")
    if n_bad == array.size:
        raise InputError("every pixel is NaN/inf; nothing to denoise")
    out = array.copy()
    frames = out.reshape((-1,) + out.shape[-2:])
    bad_frames = bad.reshape(frames.shape)
    for frame, mask in zip(frames, bad_frames):
        if not mask.any():
            continue
        if mask.all():
            frame[...] = np.nanmedian(np.where(np.isfinite(out), out, np.nan))
            continue
        size = 3
        while mask.any():
            vals = np.where(mask, np.nan, frame)
            med = ndimage.generic_filter(vals, np.nanmedian, size=size, mode="reflect") if frame.size < 65536 \
                else _nanmedian_filter(vals, size)
            fixable = mask & np.isfinite(med)
            frame[fixable] = med[fixable]
            mask = mask & ~fixable
            size += 2
    return out, n_bad


def _nanmedian_filter(vals: np.ndarray, size: int) -> np.ndarray:
    """Median of finite values in a size x size window, evaluated only where needed (large images)."""
    out = np.full(vals.shape, np.nan, dtype=vals.dtype)
    r = size // 2
    padded = np.pad(vals, r, mode="reflect")
    ys, xs = np.nonzero(~np.isfinite(vals))
    for y, x in zip(ys, xs):
        win = padded[y:y + size, x:x + size]
        if np.isfinite(win).any():
            out[y, x] = np.nanmedian(win)
    return out
