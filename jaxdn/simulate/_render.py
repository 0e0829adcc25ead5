"""Shared rendering helpers for the simulators (pure JAX)."""

from __future__ import annotations

import jax.numpy as jnp


def render_gaussians(positions, weights, sigma, shape):
    """Sum of isotropic 2-D Gaussians, exact and separable.

    ``image[r, c] = Σ_k w_k exp(-((r - r_k)² + (c - c_k)²) / (2 σ_k²))`` evaluated as one matmul
    ``(w·G_row)ᵀ G_col`` with ``G_row (K, H)``, ``G_col (K, W)`` — O(K·H·W) flops, no scatter.

    Args:
      positions: (K, 2) float (row, col) in pixels (pixel centres at integers).
      weights: (K,) peak heights (0 for padded entries).
      sigma: scalar or (K,) Gaussian standard deviation in pixels.
      shape: static (H, W).

    Returns:
      (H, W) float32 image.
    """
    h, w = shape
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), weights.shape)
    inv = 1.0 / (2.0 * sigma * sigma)
    rows = jnp.arange(h, dtype=jnp.float32)
    cols = jnp.arange(w, dtype=jnp.float32)
    gr = jnp.exp(-jnp.square(rows[None, :] - positions[:, 0:1]) * inv[:, None])  # (K, H)
    gc = jnp.exp(-jnp.square(cols[None, :] - positions[:, 1:2]) * inv[:, None])  # (K, W)
    return ((gr * weights[:, None]).T @ gc).astype(jnp.float32)


def normalise01(x, *, eps=1e-8):
    """Min-max normalise the last two axes to [0, 1] (a constant image maps to 0)."""
    lo = jnp.min(x, axis=(-2, -1), keepdims=True)
    hi = jnp.max(x, axis=(-2, -1), keepdims=True)
    return ((x - lo) / jnp.maximum(hi - lo, eps)).astype(jnp.float32)


# Random draws: one ``jax.random.uniform`` call per function and slicing it keeps compile times
# low (each separate threefry call adds ~0.1 s of XLA compile on CPU).


def urange(u, lo, hi):
    """Map uniform [0, 1) draws to [lo, hi)."""
    return lo + (hi - lo) * u


def uint(u, lo, hi):
    """Map uniform [0, 1) draws to integers uniform in [lo, hi] (inclusive), int32."""
    return jnp.clip(lo + jnp.floor(u * (hi - lo + 1)), lo, hi).astype(jnp.int32)


def compact(mask, size):
    """Indices of the first ``size`` True entries of a 1-D mask, in order, and their validity.

    A stable argsort (cheaper to compile than ``jnp.nonzero(size=...)``). Returns
    (idx (size,) int32, keep (size,) bool); entries past the number of True values are padding.
    """
    idx = jnp.argsort(~mask, stable=True)[:size]
    keep = jnp.arange(size) < jnp.sum(mask)
    return idx, keep
