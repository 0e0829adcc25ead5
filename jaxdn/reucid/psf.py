"""Patch size from the point-spread-function width (REUCID step 1).

The width of the PSF is read from the radially averaged autocorrelation function (ACF) of the
mean-subtracted image (circular ACF by FFT, as in the paper):

* the **first minimum** ``r_min`` of the radial profile (one the profile rises from again by at
  least 5 % of its value at r = 1, so that noise wiggles in a flat tail do not count) is where the
  blobs of one copy sit between the blobs of the other — half a nearest-neighbour distance in a
  lattice — so ``width = 2 r_min`` (sub-pixel by a parabola through the three bins around it).
  The factor 2 was calibrated on simulated HAADF lattices (`jaxdn.simulate.atoms.haadf_lattice`,
  dose 100–1000 e/Å²): the best-PSNR reconstruction improved monotonically with p from p ≈ r_min
  (≈ 5 px) to p ≈ 2–3 r_min, by 1.5–5 dB;
* if the profile has no minimum within the search radius (aperiodic image), the **first
  inflection** ``r_inf`` (where the profile turns from concave to convex) is used; for a Gaussian
  PSF of standard deviation σ the ACF is a Gaussian of standard deviation σ√2 whose inflection is
  at σ√2, so ``width = 2 r_inf`` (≈ 2.8σ ≈ 1.2 FWHM);
* if neither exists the largest allowed size is returned.

The ACF is computed on the largest centred crop with an FFT-friendly (2·3·5-smooth) size.
The patch size is the odd integer nearest to ``width``, clamped to ``[min_size, max_size]``.

Only lags up to ``2 * max_size`` px (and at most half the image) enter the radial average, so the
binning is O(1) after the FFT; everything is jit-able with static shapes.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["acf_radial", "estimate_patch_size", "patch_size_from_profile", "acf_width"]


#: Minimum rise after an ACF minimum, relative to the profile at r = 1 (see `acf_width`).
MIN_PROMINENCE = 0.05


def _max_lag(shape, max_size):
    h, w = shape
    return int(max(2, min(2 * max_size, h // 2, w // 2)))


def _radius_table(max_lag):
    """Integer radius (rounded) of every lag in the (2L+1)² window, and the bin counts."""
    d = np.arange(-max_lag, max_lag + 1)
    r = np.rint(np.hypot(d[:, None], d[None, :])).astype(np.int32)
    r = np.where(r <= max_lag, r, max_lag + 1)  # corners go to an overflow bin
    counts = np.bincount(r.ravel(), minlength=max_lag + 2)[: max_lag + 1]
    return r, counts.astype(np.float32)


def _smooth_floor(n):
    """Largest 2·3·5-smooth integer ≤ n (an FFT-friendly length)."""
    best = 1
    p2 = 1
    while p2 <= n:
        p3 = p2
        while p3 <= n:
            p5 = p3
            while p5 <= n:
                best = max(best, p5)
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


@functools.partial(jax.jit, static_argnames=("max_lag",))
def _acf_profile(image, max_lag):
    # Centre crop to an FFT-friendly size (e.g. 890 → 864): the circular ACF of the crop, at a
    # fraction of the cost of a prime-factor FFT; at most a few per cent of the rows/cols dropped.
    h, w = image.shape
    hc, wc = _smooth_floor(h), _smooth_floor(w)
    r0, c0 = (h - hc) // 2, (w - wc) // 2
    x = image[r0:r0 + hc, c0:c0 + wc].astype(jnp.float32)
    x = x - jnp.mean(x)
    spec = jnp.fft.rfft2(x)
    acf = jnp.fft.irfft2(spec * jnp.conj(spec), s=x.shape)
    # Window of lags [-L, L]² gathered from the four corners of the circular ACF.
    idx_r = jnp.arange(-max_lag, max_lag + 1) % x.shape[0]
    idx_c = jnp.arange(-max_lag, max_lag + 1) % x.shape[1]
    win = acf[idx_r][:, idx_c]
    r, counts = _radius_table(max_lag)
    sums = jnp.zeros(max_lag + 2, jnp.float32).at[jnp.asarray(r).ravel()].add(win.ravel())[: max_lag + 1]
    prof = sums / jnp.asarray(counts)
    return prof / jnp.maximum(prof[0], jnp.finfo(jnp.float32).tiny)


def acf_radial(image, *, max_lag=None):
    """Radially averaged circular autocorrelation of the mean-subtracted image.

    Args:
      image: (H, W) or (T, H, W) array; for a stack the frames' profiles are averaged.
      max_lag: largest radius in px (default: min(62, H // 2, W // 2)).

    Returns:
      (radii (L+1,) float32 px, profile (L+1,) float32 normalised to 1 at r = 0; all zeros for a
      constant image).
    """
    image = jnp.asarray(image, jnp.float32)
    if max_lag is None:
        max_lag = _max_lag(image.shape[-2:], 31)
    if image.ndim == 3:
        prof = jnp.mean(jax.vmap(lambda f: _acf_profile(f, max_lag))(image), axis=0)
    else:
        prof = _acf_profile(image, max_lag)
    return jnp.arange(max_lag + 1, dtype=jnp.float32), prof


def acf_width(profile):
    """PSF width in px from a radial ACF profile: twice the first minimum, else twice the first inflection.

    Args:
      profile: (L+1,) array, profile[r] for integer radius r.

    Returns:
      (width: float, kind: "minimum" | "inflection" | "none").
    """
    p = np.asarray(profile, np.float64)
    n = p.size
    if n < 4 or not np.all(np.isfinite(p)) or np.allclose(p, 0):
        return float("nan"), "none"
    # A minimum counts only if the profile rises again by `MIN_PROMINENCE` × p[1] afterwards
    # (a real next-neighbour peak), so flat noisy tails of aperiodic images are not minima.
    rise = MIN_PROMINENCE * abs(p[1])
    for r in range(1, n - 1):
        if p[r] < p[r - 1] and p[r] <= p[r + 1] and p[r:].max() - p[r] >= rise:
            den = p[r - 1] - 2 * p[r] + p[r + 1]
            off = 0.5 * (p[r - 1] - p[r + 1]) / den if den > 0 else 0.0
            return float(2.0 * (r + np.clip(off, -0.5, 0.5))), "minimum"
    d2 = p[2:] - 2 * p[1:-1] + p[:-2]  # d2[k] = second difference at r = k + 1
    # Skip r = 1: white noise puts a spike at r = 0 that makes the profile convex there.
    for k in range(1, d2.size):
        if d2[k] >= 0 and d2[k - 1] < 0:
            r = k + 1
            frac = -d2[k - 1] / (d2[k] - d2[k - 1])
            return float(2.0 * (r - 1 + frac)), "inflection"
    return float("nan"), "none"


def patch_size_from_profile(profile, *, min_size=5, max_size=31):
    """Odd patch size nearest to the ACF width, clamped to [min_size, max_size]."""
    width, _ = acf_width(profile)
    if not np.isfinite(width):
        return int(max_size if max_size % 2 else max_size - 1)
    p = 2 * int(np.floor(width / 2.0)) + 1
    lo = min_size if min_size % 2 else min_size + 1
    hi = max_size if max_size % 2 else max_size - 1
    return int(min(max(p, lo), hi))


def estimate_patch_size(image, *, min_size=5, max_size=31):
    """Odd patch size ≈ PSF diameter, from the radial ACF (see the module docstring).

    Args:
      image: (H, W) image, or (T, H, W) stack (the frames' ACF profiles are averaged).
      min_size, max_size: clamp range (px); the result is odd.

    Returns:
      Patch size p (int, odd). A constant image gives ``min_size`` (nothing to resolve).
    """
    image = jnp.asarray(image, jnp.float32)
    _, prof = acf_radial(image, max_lag=_max_lag(image.shape[-2:], max_size))
    prof = np.asarray(prof)
    if np.allclose(prof, 0):
        return int(min_size if min_size % 2 else min_size + 1)
    return patch_size_from_profile(prof, min_size=min_size, max_size=max_size)
