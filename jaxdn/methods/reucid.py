"""REUCID entry point registered in `jaxdn.api.METHODS` (the default method).

`denoise` takes float32 (H, W) or (T, H, W) data; stacks are processed in batches of frames
(one compilation per batch shape) with a tqdm progress bar. Every frame of a stack uses the same
patch size (estimated once from the stack's mean ACF profile) and the same stack labels.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError, MethodNotAvailable
from ..reucid import pipeline, psf

__all__ = ["denoise", "load_classifier", "stream_options", "frames_per_batch"]

#: Upper bound on the pixels of one batch of frames (keeps peak memory O(batch image)).
BATCH_PIXELS = 8 * 512 * 512


def load_classifier(weights=None):
    """The eigenpatch classifier as a ``(patches, eigvals) -> probs`` callable.

    Args:
      weights: path to a classifier `.npz` (from `jaxdn train reucid-classifier`), or None for the
        shipped weights.
    """
    from ..models import eigenpatch_classifier as ec
    if weights is None:
        return ec.load_default()
    try:
        return ec.load(weights)
    except FileNotFoundError:
        raise InputError(f"REUCID classifier weights not found: {weights}") from None


def frames_per_batch(frame_shape) -> int:
    """Frames denoised together (vmapped) so one batch holds about `BATCH_PIXELS` pixels."""
    h, w = frame_shape
    return max(1, min(64, BATCH_PIXELS // max(1, h * w)))


def _max_patch(h, w):
    half = min(h, w) // 2
    return max(5, min(31, half if half % 2 else half - 1))


def stream_options(lazy, options):
    """Fix the patch size of a streamed stack from its first frames, so every chunk agrees."""
    options = dict(options)
    if options.get("patch_size") is None:
        n = int(lazy.shape[0]) if len(lazy.shape) == 3 else 1
        block = np.asarray(lazy.frames(0, min(n, 16)), np.float32)
        block = block[np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)]
        if block.shape[0]:
            h, w = block.shape[-2:]
            if min(h, w) >= 10:
                options["patch_size"] = psf.estimate_patch_size(block, max_size=_max_patch(h, w))
    return options


# Images above this many pixels are denoised in overlapping tiles (bounded memory: the whole-image
# path peaks at ~1 GB for 4096², measured in benchmarks/results/scale.md, and grows with the image).
MAX_WHOLE_PIXELS = 4096 * 4096
TILE, TILE_OVERLAP = 2048, 64


def _denoise_tiled(x, *, patch_size, progress, **kw):
    """REUCID on overlapping TILE² tiles blended by `jaxdn.tiling` (one patch size for the whole image).

    Each tile gets its own eigenpatches, so the result differs slightly from a whole-image run; peak
    memory depends on TILE, not on the image size.
    """
    from ..tiling import tiled_apply
    if patch_size is None:
        patch_size = psf.estimate_patch_size(x, max_size=_max_patch(*x.shape))
    fn = lambda tiles: pipeline.denoise(np.asarray(tiles, np.float32), patch_size=patch_size, **kw)
    return tiled_apply(fn, x, tile=TILE, overlap=TILE_OVERLAP, batch_size=1, jit=False, progress=progress)


def denoise(data, *, weights=None, seed=0, progress=False, patch_size=None, memory_budget=None,
            max_stacks=None, path="auto", n_stacks=None, n_keep=None, rank=25, **options):
    """Denoise with REUCID.

    Args:
      data: float32 (H, W) or (T, H, W), finite.
      weights: classifier `.npz` path, or None for the shipped classifier.
      seed: seeds the random stack labels.
      progress: progress bar over frames (stacks only).
      patch_size: odd patch size p (default: from the ACF of the image / the mean of the frames').
      memory_budget: bytes one patch stack may take (→ number of stacks).
      max_stacks: process only the first k stacks (interim result).
      path: "auto", "fast" or "faithful".
      n_stacks, n_keep, rank: see `jaxdn.reucid.pipeline.denoise`.

    Returns:
      float32 array of the same shape.
    """
    if options:
        raise InputError(f"unknown REUCID option(s): {', '.join(sorted(options))}")
    x = np.asarray(data, np.float32)
    if x.ndim not in (2, 3):
        raise InputError(f"expected an image (H, W) or a stack (T, H, W), got shape {x.shape}")
    classifier = None
    if n_keep is None:
        try:
            classifier = load_classifier(weights)
        except MethodNotAvailable:
            if weights is not None:
                raise
            classifier = None  # pipeline.denoise warns and falls back to the heuristic
    kw = dict(classifier=classifier, n_keep=n_keep, memory_budget=memory_budget, n_stacks=n_stacks,
              max_stacks=max_stacks, rank=rank, path=path, seed=seed)
    if x.ndim == 2:
        if x.size > MAX_WHOLE_PIXELS:
            return _denoise_tiled(x, patch_size=patch_size, progress=progress, **kw)
        return pipeline.denoise(x, patch_size=patch_size, **kw)
    t, h, w = x.shape
    if patch_size is None and min(h, w) >= 10:
        patch_size = psf.estimate_patch_size(x, max_size=_max_patch(h, w))
    k = frames_per_batch((h, w))
    out = np.empty_like(x)
    from tqdm import tqdm
    with tqdm(total=t, unit="frame", desc="reucid", disable=not progress, leave=False) as bar:
        for start in range(0, t, k):
            block = x[start:start + k]
            m = block.shape[0]
            if m < k and t > k:  # same batch shape for every call → one compilation
                block = np.concatenate([block, np.repeat(block[-1:], k - m, axis=0)])
            out[start:start + m] = pipeline.denoise(block, patch_size=patch_size, **kw)[:m]
            bar.update(m)
    return out
