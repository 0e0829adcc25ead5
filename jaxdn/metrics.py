"""Image-quality metrics for denoising (JAX, jit-able, batched over leading axes).

All image metrics take arrays whose last two axes are (H, W); any leading axes are batch axes and
the result has the leading shape (a scalar for a single image).

* :func:`psnr`, :func:`ssim` agree with ``skimage.metrics.peak_signal_noise_ratio`` /
  ``structural_similarity`` (default arguments) to ~1e-5.
* :func:`ms_ssim` is multi-scale SSIM (Wang, Simoncelli & Bovik 2003).
* :func:`css` is the Noise2Atom paper's consecutive-frame structural similarity (eq. 10).
* :func:`ief` / :func:`edited_ief` are the (REUCID paper's edited) image enhancement factor.
* :func:`find_atoms` / :func:`atom_f1` locate atomic columns and score them against known positions
  (NumPy; not jit-able); :func:`column_consistency` scores a movie without ground truth: do the
  columns of consecutive frames match after drift correction.
"""

from __future__ import annotations

from functools import partial

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
    "column_consistency",
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


def _sep_valid(a, g):
    """Separable 'valid' correlation of the last two axes with the 1-D kernel ``g`` (K,).

    (..., H, W) -> (..., H-K+1, W-K+1), two ``lax.conv_general_dilated`` calls.
    """
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    k = g.shape[0]
    x = a.reshape((-1, 1, h, w))
    dn = ("NCHW", "OIHW", "NCHW")
    hi = jax.lax.Precision.HIGHEST
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, k, 1), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=hi)
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, 1, k), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=hi)
    return x.reshape(lead + x.shape[-2:])


def _moments(x, y, g):
    """Filtered means, variances and covariance of x and y with the normalised 1-D kernel g.

    A per-image offset is removed first: the moments are shift-invariant and this keeps the float32
    second moments well conditioned. Returns (mx, my, vx, vy, vxy) on the valid grid.
    """
    off = jnp.mean(y, axis=(-2, -1), keepdims=True)
    xs, ys = x - off, y - off
    st = _sep_valid(jnp.stack([xs, ys, xs * xs, ys * ys, xs * ys], axis=0), g)
    ux, uy = st[0], st[1]
    return ux + off, uy + off, st[2] - ux * ux, st[3] - uy * uy, st[4] - ux * uy


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


@partial(jax.jit, static_argnames=("win_size", "k1", "k2"))
def _ssim_map(x, y, rng, win_size, k1, k2):
    rng = jnp.asarray(rng)[..., None, None]
    g = jnp.full((win_size,), 1.0 / win_size, jnp.float32)
    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    mx, my, vx, vy, vxy = _moments(x, y, g)
    vx, vy, vxy = cov_norm * vx, cov_norm * vy, cov_norm * vxy
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


# ---------------------------------------------------------------------------------------------
# Multi-scale SSIM
# ---------------------------------------------------------------------------------------------


def _gauss1d(win, sigma):
    r = jnp.arange(win, dtype=jnp.float32) - (win - 1) / 2.0
    g = jnp.exp(-r * r / (2.0 * sigma * sigma))
    return g / jnp.sum(g)


def _ssim_terms_gauss(x, y, rng, win, sigma, k1, k2):
    """Mean luminance and contrast-structure terms with a Gaussian window (valid positions)."""
    mx, my, vx, vy, vxy = _moments(x, y, _gauss1d(win, sigma))
    c1 = jnp.square(k1 * rng)[..., None, None]
    c2 = jnp.square(k2 * rng)[..., None, None]
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    return jnp.mean(lum, axis=(-2, -1)), jnp.mean(cs, axis=(-2, -1))


def _down2(a):
    h, w = (a.shape[-2] // 2) * 2, (a.shape[-1] // 2) * 2
    a = a[..., :h, :w]
    return 0.25 * (a[..., 0::2, 0::2] + a[..., 1::2, 0::2] + a[..., 0::2, 1::2] + a[..., 1::2, 1::2])


def ms_ssim(x, ref, *, data_range=1.0, weights=MS_SSIM_WEIGHTS, win_size=11, sigma=1.5,
            k1=0.01, k2=0.03):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003).

    ``MS-SSIM = l_M^{w_M} · Π_{j=1..M} cs_j^{w_j}`` over M = ``len(weights)`` scales (default 5,
    weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333). At each scale the contrast-structure term cs
    is the mean over 'valid' positions of an ``win_size``² Gaussian window (σ = ``sigma``); the
    luminance term l only at the coarsest scale; between scales a 2×2 average downsamples (odd
    rows/columns dropped). When a scale is smaller than the window, the window shrinks to the
    largest odd size that fits (same σ), so 128² inputs work. Negative terms are clipped to 0
    before the fractional powers (as in common implementations), so the result is in [0, 1].

    Args:
      x: test image(s), (..., H, W).
      ref: reference image(s), same shape.
      data_range: R in ``C1 = (k1 R)², C2 = (k2 R)²``.
      weights: per-scale exponents, finest first.

    Returns:
      MS-SSIM with shape ``x.shape[:-2]`` (float32).
    """
    x, ref = _check_pair(x, ref)
    m = len(weights)
    if min(x.shape[-2:]) >> (m - 1) < 3:
        raise ValueError(f"image side {min(x.shape[-2:])} too small for {m} scales (need >= {3 << (m - 1)})")
    rng = jnp.broadcast_to(jnp.asarray(data_range, jnp.float32), x.shape[:-2])
    return _ms_ssim(x, ref, rng, tuple(float(w) for w in weights), win_size, sigma, k1, k2)


@partial(jax.jit, static_argnames=("weights", "win_size", "sigma", "k1", "k2"))
def _ms_ssim(x, ref, rng, weights, win_size, sigma, k1, k2):
    m = len(weights)
    out = jnp.ones(x.shape[:-2], jnp.float32)
    for j, wj in enumerate(weights):
        side = min(x.shape[-2:])
        win = min(win_size, side if side % 2 else side - 1)
        lum, cs = _ssim_terms_gauss(x, ref, rng, win, sigma, k1, k2)
        out = out * jnp.power(jnp.maximum(cs, 0.0), wj)
        if j == m - 1:
            out = out * jnp.power(jnp.maximum(lum, 0.0), wj)
        else:
            x, ref = _down2(x), _down2(ref)
    return out.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Consecutive-frame similarity (Noise2Atom eq. 10)
# ---------------------------------------------------------------------------------------------


def css(movie, *, c1=1e-4, c2=9e-4):
    """Consecutive similarity (CSS), Noise2Atom paper eq. 10, between frames n and n+1.

    ``CSS = (2 E_n E_{n+1} + C1)(2 σ_{n,n+1} + C2) / ((E_n² + E_{n+1}² + C1)(σ_n² + σ_{n+1}² + C2))``
    with whole-frame means E, (population) variances σ² and covariance σ_{n,n+1}, C1 = 1e-4,
    C2 = 9e-4 (images in [0, 1]). Note the paper's caveat: a constant output also scores 1.

    Args:
      movie: (..., T, H, W) frames, T ≥ 2.

    Returns:
      (..., T-1) CSS per consecutive pair, float32.
    """
    movie = jnp.asarray(movie, jnp.float32)
    if movie.ndim < 3 or movie.shape[-3] < 2:
        raise ValueError(f"expected a movie (..., T, H, W) with T >= 2, got {movie.shape}")
    a, b = movie[..., :-1, :, :], movie[..., 1:, :, :]
    ea = jnp.mean(a, axis=(-2, -1))
    eb = jnp.mean(b, axis=(-2, -1))
    da = a - ea[..., None, None]
    db = b - eb[..., None, None]
    va = jnp.mean(da * da, axis=(-2, -1))
    vb = jnp.mean(db * db, axis=(-2, -1))
    cov = jnp.mean(da * db, axis=(-2, -1))
    out = (2 * ea * eb + c1) * (2 * cov + c2) / ((ea * ea + eb * eb + c1) * (va + vb + c2))
    return out.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Atom-column finding (NumPy)
# ---------------------------------------------------------------------------------------------


def find_atoms(image, *, min_distance=3, threshold_rel=0.3, smooth=1.0, refine=True):
    """Locate bright atomic columns as local maxima.

    Gaussian smoothing (σ = ``smooth`` px, 0 to skip), then ``skimage.feature.peak_local_max``
    (``min_distance``, ``threshold_rel``, peaks at the border allowed); with ``refine`` each peak is
    moved to the intensity-weighted centroid of its 3×3 neighbourhood (background-subtracted) for
    sub-pixel positions.

    Args:
      image: (H, W) array.
      min_distance: minimum peak separation in px.
      threshold_rel: minimum peak height as a fraction of the (smoothed) maximum above minimum.

    Returns:
      (N, 2) float64 NumPy array of (row, col) positions in px.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"find_atoms expects one (H, W) image, got shape {img.shape}")
    if smooth > 0:
        img = ndimage.gaussian_filter(img, smooth, mode="nearest")
    lo = img.min()
    rel_img = img - lo
    peaks = peak_local_max(rel_img, min_distance=int(min_distance), threshold_rel=threshold_rel,
                           exclude_border=False)
    peaks = peaks.astype(np.float64)
    if refine and len(peaks):
        pad = np.pad(rel_img, 1, mode="edge")
        r = peaks[:, 0].astype(int) + 1
        c = peaks[:, 1].astype(int) + 1
        off = np.array([-1, 0, 1])
        nb = pad[r[:, None, None] + off[None, :, None], c[:, None, None] + off[None, None, :]]
        wts = nb - nb.min(axis=(1, 2), keepdims=True)
        tot = wts.sum(axis=(1, 2))
        ok = tot > 0
        dr = (wts * off[None, :, None]).sum(axis=(1, 2))
        dc = (wts * off[None, None, :]).sum(axis=(1, 2))
        peaks[ok, 0] += dr[ok] / tot[ok]
        peaks[ok, 1] += dc[ok] / tot[ok]
    return peaks


def atom_f1(found, truth, *, tolerance=2.0):
    """Precision, recall and F1 of found atom positions against known ones.

    Positions are matched one-to-one (optimal assignment, ``scipy.optimize.linear_sum_assignment``,
    maximising the number of pairs closer than ``tolerance`` px, then their total distance).

    Args:
      found: (N, 2) detected (row, col) positions.
      truth: (M, 2) true (row, col) positions.
      tolerance: maximum matching distance in px.

    Returns:
      (precision, recall, f1) as Python floats. Both empty → (1, 1, 1); an empty side with the
      other non-empty gives 0 for the undefined ratios.
    """
    from scipy.optimize import linear_sum_assignment

    found = np.asarray(found, np.float64).reshape(-1, 2)
    truth = np.asarray(truth, np.float64).reshape(-1, 2)
    n, m = len(found), len(truth)
    if n == 0 and m == 0:
        return 1.0, 1.0, 1.0
    matches = 0
    if n and m:
        d = np.linalg.norm(found[:, None, :] - truth[None, :, :], axis=-1)
        big = tolerance * (n + m + 1) + 1.0
        cost = np.where(d <= tolerance, d, big)
        ri, ci = linear_sum_assignment(cost)
        matches = int(np.sum(d[ri, ci] <= tolerance))
    precision = matches / n if n else 0.0
    recall = matches / m if m else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def column_consistency(movie, *, tolerance=2.0, margin=4, **find_kwargs):
    """Atom-column consistency of a (denoised) movie without ground truth.

    Columns are found in every frame (:func:`find_atoms`, `find_kwargs`), consecutive frames are
    registered by phase correlation (`jaxdn.columns.lattice_drift`: steps below half the median column
    spacing, a lattice-vector alias would match the wrong columns), and frame t's columns, shifted by
    the drift, are matched to frame t + 1's (:func:`atom_f1` at `tolerance` px; columns within
    `margin` px of the border are left out, they may drift out of view).

    Args:
      movie: (T, H, W) with T ≥ 2.
    Returns:
      {"f1": mean F1 over the T − 1 pairs, "columns_per_frame": mean number of columns found}.
      A frame without columns scores 0 against any frame (a constant output is not consistent).
    """
    from .columns import lattice_drift
    m = np.asarray(movie, np.float64)
    if m.ndim != 3 or m.shape[0] < 2:
        raise ValueError(f"column_consistency expects (T, H, W) with T >= 2, got shape {m.shape}")
    h, w = m.shape[1:]
    found = [find_atoms(f, **find_kwargs) for f in m]
    drift = lattice_drift(m, found)

    def inside(p):
        return p[np.all((p >= margin) & (p <= np.array([h, w]) - 1 - margin), axis=1)]

    scores = []
    for t in range(len(m) - 1):
        a, b = inside(found[t] + (drift[t + 1] - drift[t])), inside(found[t + 1])
        scores.append(atom_f1(a, b, tolerance=tolerance)[2] if len(a) and len(b) else 0.0)
    return {"f1": float(np.mean(scores)), "columns_per_frame": float(np.mean([len(f) for f in found]))}
