"""Noise models for microscopy images (pure JAX, key-driven, jit/vmap-able).

Each function takes a PRNG key and an image ``x`` of shape (..., H, W) (float, usually in [0, 1])
and returns a noisy array of the same shape, float32. Models follow the papers in
``shared/papers``:

* :func:`gaussian`, :func:`salt_pepper`, :func:`gaussian_salt_pepper`, :func:`background_gaussian`
  — TEM U-Net paper (eq. 3, the value-dependent salt-and-pepper rule, eqs. 4–5).
* :func:`stripes` — the STM autoencoder thesis's horizontal stripe model.
* :func:`poisson_gaussian` — electron shot noise at a dose (e/Å²) plus Gaussian detector noise.
* :func:`background_gradient` — slow background ramp and blob.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "gaussian",
    "salt_pepper",
    "gaussian_salt_pepper",
    "background_gaussian",
    "stripes",
    "poisson_gaussian",
    "background_gradient",
]


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def gaussian(key, x, *, c):
    """Additive Gaussian noise, truncated to [0, 1] (TEM paper eq. 3).

    ``I_noisy = clip(I_GT + c · N(0, 1), 0, 1)``.

    Args:
      key: PRNG key.
      x: (..., H, W) clean image in [0, 1].
      c: noise factor C_noise (standard deviation before truncation).

    Returns:
      Array like ``x``, float32 in [0, 1].
    """
    x = _f32(x)
    return jnp.clip(x + c * jax.random.normal(key, x.shape, jnp.float32), 0.0, 1.0)


def salt_pepper(key, x, *, p, return_mask=False):
    """Salt-and-pepper noise with the TEM paper's value-dependent rule.

    Each pixel is altered with probability ``p``; an altered pixel becomes 1 (white) if its value
    is below 0.5, else 0 (black).

    Args:
      key: PRNG key.
      x: (..., H, W) image in [0, 1].
      p: probability that a pixel is altered.
      return_mask: also return the boolean mask of altered pixels.

    Returns:
      Array like ``x`` (float32), and the mask if ``return_mask``.
    """
    x = _f32(x)
    hit = jax.random.uniform(key, x.shape) < p
    out = jnp.where(hit, jnp.where(x < 0.5, 1.0, 0.0), x).astype(jnp.float32)
    return (out, hit) if return_mask else out


def gaussian_salt_pepper(key, x, *, c, p=None):
    """Gaussian noise (truncated) followed by salt-and-pepper noise (TEM paper's G&SP).

    Args:
      key: PRNG key.
      x: (..., H, W) image in [0, 1].
      c: Gaussian noise factor C_noise.
      p: salt-and-pepper probability; defaults to ``c`` (the paper uses one noise factor C_noise
        per noisy set).

    Returns:
      Array like ``x``, float32 in [0, 1].
    """
    kg, ks = jax.random.split(key)
    return salt_pepper(ks, gaussian(kg, x, c=c), p=c if p is None else p)


# Background-brightness classes (TEM paper eq. 4): (u^a upper bound, u^b range in units of w1).
_BB_DARK, _BB_BRIGHT = 0.15, 0.85


def background_gaussian(key, x, *, c, w1=0.2, w2=0.02, patch=64, smooth=(0.3, 0.15, 0.05),
                        return_background=False):
    """Background brightness (TEM paper eqs. 4–5) followed by Gaussian noise ("BB+G").

    The image is cut into ``patch``² tiles (the paper's 8×8 tiles of a 512² image). For each tile:

    * ``u^a ~ U[0, 1]`` picks the class: dark (``u^a < 0.15``), high brightness (``u^a ≥ 0.85``),
      otherwise slightly bright;
    * ``u^b`` is uniform in ``[0.4, 0.6]·w1`` (dark), ``[0.8, 1.2]·w1`` (bright) or
      ``[0.6, 0.9]·w1`` (slightly bright) — eq. 4;
    * ``val_BB ~ N(u^b, w2²)``;
    * eq. 5: ``I_BB = val_BB`` where ``I_GT ≤ val_BB``, else ``I_GT − C_BB·val_BB``.

    The paper does not give ``w2`` nor ``C_BB`` numerically ("a variable parameter that depends on
    the pixel's intensity and u^a"). Here ``w2 = 0.02`` and ``C_BB = s(u^a)·(1 − I_GT)`` with
    ``s = smooth = (0.3, 0.15, 0.05)`` for (dark, slightly bright, bright) tiles: spots are dimmed
    more in dark areas and the peak (I_GT = 1) is unchanged. Gaussian noise (:func:`gaussian`,
    factor ``c``) is then added and the result clipped to [0, 1].

    Args:
      key: PRNG key.
      x: (..., H, W) image in [0, 1].
      c: Gaussian noise factor.
      w1: hyper-parameter w_1 of eq. 4 (paper: 0.2).
      w2: standard deviation of val_BB around u^b.
      patch: tile side in px (static); tiles at the right/bottom edge may be partial.
      smooth: ``s`` for (dark, slightly bright, bright) tiles.
      return_background: also return the per-pixel val_BB map (..., H, W).

    Returns:
      Array like ``x``, float32 in [0, 1] (and the val_BB map if requested).
    """
    x = _f32(x)
    h, w = x.shape[-2:]
    th, tw = -(-h // patch), -(-w // patch)
    lead = x.shape[:-2]
    ku, kv, kg = jax.random.split(key, 3)
    uab = jax.random.uniform(ku, lead + (2, th, tw))
    ua, ubu = uab[..., 0, :, :], uab[..., 1, :, :]
    dark = ua < _BB_DARK
    bright = ua >= _BB_BRIGHT
    lo = jnp.where(dark, 0.4, jnp.where(bright, 0.8, 0.6)) * w1
    hi = jnp.where(dark, 0.6, jnp.where(bright, 1.2, 0.9)) * w1
    ub = lo + (hi - lo) * ubu
    val = ub + w2 * jax.random.normal(kv, ua.shape)
    s = jnp.where(dark, smooth[0], jnp.where(bright, smooth[2], smooth[1]))
    # Expand tile values to pixels.
    expand = lambda t: jnp.repeat(jnp.repeat(t, patch, axis=-2), patch, axis=-1)[..., :h, :w]
    val_px, s_px = expand(val), expand(s)
    c_bb = s_px * (1.0 - x)
    i_bb = jnp.where(x <= val_px, val_px, x - c_bb * val_px)
    out = gaussian(kg, i_bb, c=c)
    return (out, val_px.astype(jnp.float32)) if return_background else out


def _n_stripes(h, row_fraction, max_width):
    """Stripe count whose expected covered-row fraction is ``row_fraction`` (starts wrap)."""
    if row_fraction <= 0:
        return 0
    if row_fraction >= 1:
        raise ValueError(f"row_fraction must be < 1, got {row_fraction}")
    mean_w = (1 + max_width) / 2.0
    # P(row uncovered by one stripe) = 1 - mean_w / h; coverage 1 - (1 - mean_w/h)^n.
    return max(1, round(math.log1p(-row_fraction) / math.log1p(-mean_w / h)))


def stripes(key, x, *, row_fraction=0.1, max_width=3, num_stripes=None, return_mask=False):
    """Horizontal stripe noise (STM autoencoder thesis, §1.2.5).

    ``num_stripes`` horizontal stripes, each with a uniform random starting row and a uniform
    random width in [1, ``max_width``] rows (a stripe running past the bottom wraps to the top);
    masked pixels are replaced by independent uniform random values in [0, 1], the others are kept.

    Args:
      key: PRNG key.
      x: (..., H, W) image in [0, 1].
      row_fraction: expected fraction of rows covered; sets ``num_stripes`` when that is None.
      max_width: maximum stripe width in rows (static).
      num_stripes: explicit number of stripes per image (static), overrides ``row_fraction``.
      return_mask: also return the boolean row mask (..., H) of replaced rows.

    Returns:
      Array like ``x`` (float32), and the row mask if ``return_mask``.
    """
    x = _f32(x)
    h = x.shape[-2]
    lead = x.shape[:-2]
    n = _n_stripes(h, row_fraction, max_width) if num_stripes is None else int(num_stripes)
    ks, kv = jax.random.split(key)
    us = jax.random.uniform(ks, lead + (2, n))
    start = jnp.clip(jnp.floor(us[..., 0, :] * h), 0, h - 1).astype(jnp.int32)
    width = jnp.clip(1 + jnp.floor(us[..., 1, :] * max_width), 1, max_width).astype(jnp.int32)
    rows = jnp.arange(h)
    d = jnp.mod(rows[..., None, :] - start[..., :, None], h)  # (..., n, H) offset into stripe
    mask = jnp.any(d < width[..., :, None], axis=-2) if n > 0 else jnp.zeros(lead + (h,), bool)
    vals = jax.random.uniform(kv, x.shape, jnp.float32)
    out = jnp.where(mask[..., :, None], vals, x)
    return (out, mask) if return_mask else out


def poisson_gaussian(key, clean, *, dose, pixel_size=0.2, detector_sigma=0.05):
    """Electron shot noise at a given dose plus Gaussian detector noise.

    Expected electrons per pixel ``λ = dose · pixel_size² · clean``; the result is
    ``Poisson(λ) + N(0, (detector_sigma · max λ)²)`` where ``max λ`` is taken per image (last two
    axes). Counts are not clipped (detector noise can make them negative).

    Args:
      key: PRNG key.
      clean: (..., H, W) non-negative clean image (typically in [0, 1]).
      dose: electron dose in e/Å² (for ``clean = 1``).
      pixel_size: pixel size in Å.
      detector_sigma: detector read-noise standard deviation relative to the peak expected count.

    Returns:
      Counts in electrons, same shape as ``clean``, float32. Divide by ``dose·pixel_size²`` to get
      back to the clean image's scale.
    """
    clean = _f32(clean)
    kp, kg = jax.random.split(key)
    lam = jnp.maximum(clean, 0.0) * (dose * pixel_size * pixel_size)
    counts = jax.random.poisson(kp, lam, dtype=jnp.int32).astype(jnp.float32)
    peak = jnp.max(lam, axis=(-2, -1), keepdims=True)
    return counts + detector_sigma * peak * jax.random.normal(kg, clean.shape, jnp.float32)


def background_gradient(key, x, *, strength, blob_sigma=(0.25, 0.6)):
    """Add a slowly varying background: a linear ramp plus one broad Gaussian blob.

    ``out = (x + strength · b) / (1 + strength)`` where ``b`` in [0, 1] is the min-max normalised sum
    of a ramp in a random direction and a Gaussian blob (random centre in the frame, width
    ``blob_sigma`` × image side, random relative weight). The division keeps [0, 1] inputs in
    [0, 1].

    Args:
      key: PRNG key.
      x: (..., H, W) image.
      strength: background amplitude relative to the image's [0, 1] range.
      blob_sigma: (min, max) blob width as a fraction of the image side.

    Returns:
      Array like ``x``, float32.
    """
    x = _f32(x)
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    u = jax.random.uniform(key, lead + (5,))
    phi = (2 * math.pi * u[..., 0])[..., None, None]
    centre = u[..., 1:3]
    sig = (blob_sigma[0] + (blob_sigma[1] - blob_sigma[0]) * u[..., 3])[..., None, None]
    wt = u[..., 4][..., None, None]
    r = jnp.linspace(0.0, 1.0, h)[:, None]
    cc = jnp.linspace(0.0, 1.0, w)[None, :]
    ramp = jnp.cos(phi) * r + jnp.sin(phi) * cc
    blob = jnp.exp(
        -(jnp.square(r - centre[..., 0, None, None]) + jnp.square(cc - centre[..., 1, None, None]))
        / (2 * sig * sig)
    )
    b = (1.0 - wt) * ramp + wt * blob
    lo = jnp.min(b, axis=(-2, -1), keepdims=True)
    hi = jnp.max(b, axis=(-2, -1), keepdims=True)
    b = (b - lo) / jnp.maximum(hi - lo, 1e-8)
    return ((x + strength * b) / (1.0 + strength)).astype(jnp.float32)
