"""Image-quality metrics for denoising (JAX, jit-able, batched over leading axes).

All image metrics take arrays whose last two axes are (H, W); any leading axes are batch axes and
the result has the leading shape (a scalar for a single image).

* :func:`psnr`, :func:`ssim` agree with ``skimage.metrics.peak_signal_noise_ratio`` /
  ``structural_similarity`` (default arguments) to ~1e-5.
* :func:`ms_ssim` is multi-scale SSIM (Wang, Simoncelli & Bovik 2003).
* :func:`css` is the Noise2Atom paper's consecutive-frame structural similarity (eq. 10).
* :func:`ief` / :func:`edited_ief` are the (REUCID paper's edited) image enhancement factor.
* :func:`find_atoms` / :func:`atom_f1` locate atomic columns and score them against known positions
  (NumPy; not jit-able).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "psnr",
    "ssim",
    "ms_ssim",
    "css",
    "ief",
    "edited_ief",
    "find_atoms",
    "atom_f1",
    "MS_SSIM_WEIGHTS",
]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(x, ref):
    x = jnp.asarray(x, jnp.float32)
    ref = jnp.asarray(ref, jnp.float32)
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {ref.shape}")
    if x.ndim < 2:
        raise ValueError(f"expected images with shape (..., H, W), got {x.shape}")
    return x, ref


def _default_range(ref, data_range):
    """skimage's float convention: 1 for non-negative references, 2 (range [-1, 1]) otherwise."""
    if data_range is not None:
        return jnp.asarray(data_range, jnp.float32)
    return jnp.where(jnp.min(ref, axis=(-2, -1)) >= 0, 1.0, 2.0).astype(jnp.float32)


def psnr(x, ref, *, data_range=None):
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / MSE)``.

    Args:
      x: test image(s), (..., H, W).
      ref: reference (clean) image(s), same shape.
      data_range: peak-to-peak range of the data. ``None`` follows scikit-image for float images:
        1.0 when ``ref`` is non-negative, else 2.0. May be an array broadcastable to the batch shape.

    Returns:
      PSNR with shape ``x.shape[:-2]`` (float32). ``inf`` for identical images.
    """
    x, ref = _check_pair(x, ref)
    rng = _default_range(ref, data_range)
    mse = jnp.mean(jnp.square(x - ref), axis=(-2, -1))
    return (10.0 * jnp.log10(jnp.square(rng) / mse)).astype(jnp.float32)


def _box_valid(a, win):
    """Mean over win×win windows, 'valid' positions only: (..., H, W) -> (..., H-win+1, W-win+1)."""
    # Separable running sums via cumsum (exact enough in float32 for images of a few hundred px).
    c = jnp.cumsum(a, axis=-2)
    c = jnp.concatenate([jnp.zeros_like(c[..., :1, :]), c], axis=-2)
    r = c[..., win:, :] - c[..., :-win, :]
    c = jnp.cumsum(r, axis=-1)
    c = jnp.concatenate([jnp.zeros_like(c[..., :1]), c], axis=-1)
    s = c[..., win:] - c[..., :-win]
    return s / (win * win)


def _box_valid_direct(a, win):
    """Same as :func:`_box_valid`, by summing shifted slices (more accurate, win² adds)."""
    h, w = a.shape[-2] - win + 1, a.shape[-1] - win + 1
    rows = sum(a[..., i : i + h, :] for i in range(win))
    out = sum(rows[..., :, j : j + w] for j in range(win))
    return out / (win * win)


def ssim(x, ref, *, data_range=None, win_size=7, k1=0.01, k2=0.03):
    """Mean structural similarity, identical to ``skimage.metrics.structural_similarity`` defaults.

    Uniform ``win_size``² window, sample-covariance correction ``N/(N-1)``, constants
    ``C1 = (k1 R)², C2 = (k2 R)²``, mean over the SSIM map with a ``(win_size-1)/2`` border cropped
    (so padding never matters: only fully interior windows are used).

    Args:
      x: test image(s), (..., H, W).
      ref: reference image(s), same shape.
      data_range: R; ``None`` uses 1.0 for non-negative references, else 2.0 (scikit-image
        requires it explicitly for floats; pass it whenever the data are not in [0, 1]).
      win_size: odd window side, at most min(H, W).

    Returns:
      Mean SSIM with shape ``x.shape[:-2]`` (float32).
    """
    x, ref = _check_pair(x, ref)
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"image side {min(x.shape[-2:])} is smaller than win_size={win_size}")
    smap = _ssim_map(x, ref, _default_range(ref, data_range), win_size, k1, k2)[0]
    return jnp.mean(smap, axis=(-2, -1)).astype(jnp.float32)


def _ssim_map(x, y, rng, win_size, k1, k2):
    rng = jnp.asarray(rng)[..., None, None]
    # Remove a per-image offset first: SSIM's moments are shift-invariant and this keeps the
    # float32 second moments well conditioned.
    off = jnp.mean(y, axis=(-2, -1), keepdims=True)
    x = x - off
    y = y - off
    f = lambda a: _box_valid_direct(a, win_size)
    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    ux, uy = f(x), f(y)
    vx = cov_norm * (f(x * x) - ux * ux)
    vy = cov_norm * (f(y * y) - uy * uy)
    vxy = cov_norm * (f(x * y) - ux * uy)
    # Means enter the luminance term without the offset.
    mx, my = ux + off, uy + off
    c1 = jnp.square(k1 * rng)
    c2 = jnp.square(k2 * rng)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    return lum * cs, cs


def ief(noisy, denoised, clean):
    """Image enhancement factor ``Σ(noisy − clean)² / Σ(denoised − clean)²`` per image.

    Args:
      noisy, denoised, clean: (..., H, W) arrays of the same shape and scale.

    Returns:
      IEF with shape ``clean.shape[:-2]``; > 1 means the denoiser reduced the error.
    """
    noisy = jnp.asarray(noisy, jnp.float32)
    denoised = jnp.asarray(denoised, jnp.float32)
    clean = jnp.asarray(clean, jnp.float32)
    if not (noisy.shape == denoised.shape == clean.shape):
        raise ValueError(
            f"shape mismatch: noisy {noisy.shape}, denoised {denoised.shape}, clean {clean.shape}"
        )
    num = jnp.sum(jnp.square(noisy - clean), axis=(-2, -1))
    den = jnp.sum(jnp.square(denoised - clean), axis=(-2, -1))
    return (num / den).astype(jnp.float32)


def edited_ief(noisy, denoised, clean, *, alpha, c=0.64):
    """REUCID paper's edited IEF: ``ief(noisy, denoised, clean) / c**alpha``.

    Args:
      noisy, denoised, clean: (..., H, W) arrays.
      alpha: number of eigenpatches used for the reconstruction (scalar or broadcastable array).
      c: editing base, fitted to 0.64 by least squares in the paper.

    Returns:
      Edited IEF with shape ``clean.shape[:-2]`` (float32).
    """
    alpha = jnp.asarray(alpha, jnp.float32)
    return (ief(noisy, denoised, clean) / jnp.power(jnp.float32(c), alpha)).astype(jnp.float32)
