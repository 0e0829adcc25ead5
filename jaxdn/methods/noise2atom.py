"""Noise2Atom inference: denoise STEM frames with a trained M_s2c generator.

`denoise(data, weights=...)` preprocesses the stack exactly as training did (optional polynomial
background removal, min–max of the stack to [−1, 1]), pads every frame to a multiple of 8 (reflect)
and crops back, runs the generator on batches of frames, and maps its tanh output to [0, 1].
The output is an *atom map* (clean-domain image: Gaussian columns on a dark background), not the
input's intensity scale.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import InputError

MIN_SIZE = 16


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float):
    """(generator module, meta) from a weights file; the model is built abstractly, never initialised."""
    from ..train.noise2atom import _trio
    from ..weights_io import load_weights, read_meta
    meta = read_meta(path)
    if meta.get("method") != "noise2atom" or "config" not in meta:
        raise InputError(f"{path} is not a noise2atom weights file")
    nets = load_weights(path, lambda: _trio(meta["config"]))
    return nets.s2c, meta


def load_generator(weights=None):
    """The M_s2c generator and the metadata of `weights` (None/"default": shipped; a workdir; a .npz)."""
    from ..train.noise2atom import resolve_weights
    path = resolve_weights(weights)
    return _load(str(path.resolve()), path.stat().st_mtime)


@functools.lru_cache(maxsize=8)
def _apply_fn(gen_id: int):
    import jax
    from flax import nnx
    gen = _GENS[gen_id]
    graphdef, state = nnx.split(gen)

    @jax.jit
    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    return lambda x: apply(state, x)


_GENS: dict[int, object] = {}


def denoise(data, *, weights=None, seed: int = 0, progress: bool = False, batch_size: int = 4,
            background_order: int | str | None = "auto", **options) -> np.ndarray:
    """Denoise (H, W) or (T, H, W) float32 frames with Noise2Atom.

    Args:
      data: float32 (H, W) or (T, H, W); every frame of a stack is normalised with the stack's range.
      weights: a weights `.npz`, a training workdir, or None/"default" for the shipped weights.
      seed: unused (inference is deterministic); accepted for the common method signature.
      progress: show a progress bar over batches.
      batch_size: frames per generator call.
      background_order: polynomial background removed before denoising; "auto" = as in training.
    Returns:
      float32 array of the input's shape, the atom map in [0, 1].
    """
    if options:
        raise InputError(f"noise2atom: unknown options {', '.join(sorted(options))}")
    arr = np.asarray(data, np.float32)
    if arr.ndim not in (2, 3):
        raise InputError(f"noise2atom expects (H, W) or (T, H, W), got shape {arr.shape}")
    h, w = arr.shape[-2:]
    if min(h, w) < MIN_SIZE:
        raise InputError(f"image is {h}x{w} pixels but noise2atom needs at least {MIN_SIZE}x{MIN_SIZE}")
    if not np.isfinite(arr).all():
        raise InputError("image has NaN/inf pixels; pass --fill-nonfinite")
    batch_size = max(1, int(batch_size))
    gen, meta = load_generator(weights)
    from ..train.noise2atom import preprocess
    order = meta.get("background_order") if background_order == "auto" else background_order
    order = None if order in (None, "none", "None") else int(order)
    frames = preprocess(arr.reshape((-1, h, w)), background_order=order)
    ph, pw = (-h) % 8, (-w) % 8
    mode = "reflect" if min(h, w) > 8 else "edge"
    padded = np.pad(frames, ((0, 0), (0, ph), (0, pw)), mode=mode)
    _GENS[id(gen)] = gen
    apply = _apply_fn(id(gen))
    out = np.empty_like(frames)
    n = frames.shape[0]
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="noise2atom", unit="batch")
    for s in starts:
        chunk = padded[s:s + batch_size]
        k = chunk.shape[0]
        if k < batch_size and n > batch_size:  # keep one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - k, axis=0)])
        y = np.asarray(apply(chunk[..., None]))[:k, :h, :w, 0]
        out[s:s + k] = (y + 1.0) * 0.5
    return out.reshape(arr.shape).astype(np.float32)
