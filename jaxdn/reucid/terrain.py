"""Patch terrain (REUCID step 6): how many processed patches cover each pixel.

The paper's "rolling" sum over the p × p trigger region above-left of each pixel is computed with
a 2-D cumulative sum (summed-area table) of the processed-top-left indicator: O(H W), independent
of p, never by adding windows of ones.
"""
from __future__ import annotations

import jax.numpy as jnp

__all__ = ["patch_terrain"]


def patch_terrain(processed_mask, patch_size, shape):
    """Number of processed patches covering each pixel.

    terrain[u, v] = Σ_{i ∈ (u−p, u], j ∈ (v−p, v]} mask[i, j]  (mask zero outside its grid).

    Args:
      processed_mask: (H − p + 1, W − p + 1) bool/float, 1 where the patch with that top-left
        pixel has been processed.
      patch_size: p.
      shape: (H, W) of the image.

    Returns:
      (H, W) float32 patch counts.
    """
    h, w = shape[-2:]
    p = int(patch_size)
    m = jnp.asarray(processed_mask, jnp.float32)
    hv, wv = m.shape[-2:]
    if (hv, wv) != (h - p + 1, w - p + 1):
        raise ValueError(f"mask shape {m.shape} does not match image {shape} with patch size {p}")
    # Summed-area table with p zero rows/columns in front: z[a, b] = Σ_{i < a−p, j < b−p} m[i, j]
    # (zero-padded on the far side so that indices up to H + p are valid).
    pad = [(0, 0)] * (m.ndim - 2) + [(p, p - 1), (p, p - 1)]
    z = jnp.cumsum(jnp.cumsum(jnp.pad(m, pad), axis=-2), axis=-1)  # (..., H + p, W + p)
    # Window rows (u − p, u] ↔ z rows [u, u + p).
    return (z[..., p:, p:] - z[..., :h, p:] - z[..., p:, :w] + z[..., :h, :w])
