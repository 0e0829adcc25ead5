"""On-device training data for the supervised models (TEM U-Net, STM stripe autoencoder).

Everything is pure JAX and driven by an explicit PRNG key, so a batch is a function of
`(key, step)` and can be generated inside the jitted train step.

TEM U-Net (Chae et al. §II.C–F, III.A)
  * A *pool* of clean 512² images is made once: each is a lateral combination of 2×2, 3×3 or
    4×4 disordered-graphene tiles (`jaxdn.simulate.graphene.graphene_combined`), cycling through
    the three layouts as the paper mixed them. The pool is split 80/20 by image: the first 80 %
    of the images are for training, the rest are held out for validation (the paper held out
    one of six disordered structures).
  * Each training sample picks an image, a shift d ∈ {0, 8, 10, 12} px (d = 0 is the original,
    the others the paper's wrap-around shifted copies, §II.D) and one of the 8×8 grid of 64²
    patches of the shifted image; then one noise level C_noise from {0.1, 0.15, 0.2, 0.25} and
    the model's noise (G, SP, G&SP, BB+G; `jaxdn.simulate.noise`). BB+G draws its background
    class per 64² patch, as the paper does.

STM stripes (thesis §1.2)
  * Clean topographies: `jaxdn.simulate.stm.stm_topography` (random/hex/square/chain lattices)
    or, when given, crops of the user's clean images (`clean_dir`, read with `jaxdn.io.read`).
  * Augmentations (§1.2.2): rotation by U(−10°, 10°) with a central crop that removes the empty
    corners (§1.2.3), horizontal/vertical flips, inversion, Gaussian blur and sparse
    salt-and-pepper, each with probability `p_aug`; then per-image min–max normalisation to
    [0, 1] (§1.2.4) and the thesis' stripe noise (§1.2.5): random rows of random width replaced
    by uniform random values (`jaxdn.simulate.noise.stripes`), at a mix of stripe densities.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NOISE_MODELS", "make_graphene_pool", "split_pool", "add_tem_noise", "unet_batch", "unet_eval_pairs",
    "rotate_crop", "augment", "stripes_clean_batch", "stripes_batch", "load_clean_dir", "STRIPE_LEVELS",
]

NOISE_MODELS = ("g", "sp", "gsp", "bbg")

# Evaluation stripe levels: name -> (row_fraction, max_width).
STRIPE_LEVELS = {"mild": (0.03, 2), "moderate": (0.08, 3), "severe": (0.2, 6)}


# --------------------------------------------------------------------------------------------
# TEM U-Net
# --------------------------------------------------------------------------------------------

def make_graphene_pool(key, *, n_images: int, size: int = 512, layouts: Sequence[int] = (3, 4, 2)) -> jax.Array:
    """`n_images` clean combined graphene images (n, size, size) in [0, 1], layouts cycled.

    Image i uses `layouts[i % len(layouts)]`² tiles and key `fold_in(key, i)`, so image i does
    not depend on `n_images` (a larger pool extends a smaller one).
    """
    from jaxdn.simulate import graphene

    images = []
    for t in layouts:
        idx = [i for i in range(n_images) if layouts[i % len(layouts)] == t]
        if not idx:
            continue
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(idx))
        gen = jax.jit(jax.vmap(lambda k: graphene.graphene_combined(k, tiles=t, size=size)))
        images.append((idx, gen(keys)))
    out = [None] * n_images
    for idx, arr in images:
        for j, i in enumerate(idx):
            out[i] = arr[j]
    return jnp.stack(out).astype(jnp.float32)


def split_pool(pool: jax.Array, *, val_fraction: float = 0.2) -> tuple[jax.Array, jax.Array]:
    """Split a pool by image: first (1 − val_fraction) for training, the rest held out."""
    n = pool.shape[0]
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return pool[: n - n_val], pool[n - n_val:] if n_val else pool[:0]


def add_tem_noise(key, x, *, noise_model: str, c):
    """Apply one of the paper's four noise models to clean image(s) x (..., H, W) at C_noise `c`.

    `c` may be a scalar or broadcastable to the leading axes. SP uses p = C_noise; G&SP uses
    Gaussian C_noise followed by SP with p = C_noise; BB+G draws its background per 64² tile.
    """
    from jaxdn.simulate import noise

    c = jnp.asarray(c, jnp.float32)
    c = c.reshape(c.shape + (1, 1)) if c.ndim else c
    if noise_model == "g":
        return noise.gaussian(key, x, c=c)
    if noise_model == "sp":
        return noise.salt_pepper(key, x, p=c)
    if noise_model == "gsp":
        return noise.gaussian_salt_pepper(key, x, c=c)
    if noise_model == "bbg":
        return noise.background_gaussian(key, x, c=c)
    raise ValueError(f"unknown noise model {noise_model!r}; choose one of {NOISE_MODELS}")


def _patch(image, row, col, *, patch: int):
    """(H, W) image → (patch, patch) starting at (row, col) with wrap-around."""
    h, w = image.shape
    r = (row + jnp.arange(patch)) % h
    c = (col + jnp.arange(patch)) % w
    return image[r[:, None], c[None, :]]


def unet_batch(key, pool: jax.Array, *, batch: int, noise_model: str, c_values=(0.1, 0.15, 0.2, 0.25),
               shifts=(0, 8, 10, 12), patch: int = 64) -> tuple[jax.Array, jax.Array]:
    """One U-Net training batch: (noisy, clean), each (batch, patch, patch, 1) float32 in [0, 1].

    Args:
      key: PRNG key for this batch.
      pool: (n, S, S) clean images to draw from (the training split).
      batch: number of patches.
      noise_model: "g" | "sp" | "gsp" | "bbg".
      c_values: noise factors drawn uniformly per patch.
      shifts: wrap-around shifts d (px, same along x and y); 0 = the unshifted image.
      patch: patch side (the grid is S // patch per axis).
    """
    n, s, _ = pool.shape
    grid = s // patch
    ki, kd, kr, kc, kn, kz = jax.random.split(key, 6)
    img = jax.random.randint(ki, (batch,), 0, n)
    d = jnp.asarray(shifts)[jax.random.randint(kd, (batch,), 0, len(shifts))]
    gr = jax.random.randint(kr, (batch,), 0, grid)
    gc = jax.random.randint(kc, (batch,), 0, grid)
    clean = jax.vmap(lambda i, r, c: _patch(pool[i], r, c, patch=patch))(img, gr * patch + d, gc * patch + d)
    c = jnp.asarray(c_values, jnp.float32)[jax.random.randint(kz, (batch,), 0, len(c_values))]
    noisy = jax.vmap(lambda k, x, cc: add_tem_noise(k, x, noise_model=noise_model, c=cc))(
        jax.random.split(kn, batch), clean, c)
    return noisy[..., None], clean[..., None]


def unet_eval_pairs(key, clean: jax.Array, *, noise_model: str, c: float) -> jax.Array:
    """Noisy versions (n, H, W) of full clean test images (n, H, W) at one C_noise."""
    keys = jax.random.split(key, clean.shape[0])
    return jax.vmap(lambda k, x: add_tem_noise(k, x, noise_model=noise_model, c=c))(keys, clean)


# --------------------------------------------------------------------------------------------
# STM stripes
# --------------------------------------------------------------------------------------------

def rotate_crop(image, angle_deg, *, out: int):
    """Rotate (S, S) `image` by `angle_deg` about its centre (bilinear) and crop the central
    (out, out) square. With S ≥ out·(|cos|+|sin|) the crop has no empty corners."""
    s = image.shape[0]
    t = jnp.deg2rad(angle_deg)
    ct, st = jnp.cos(t), jnp.sin(t)
    half = (out - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(out) - half, jnp.arange(out) - half, indexing="ij")
    cen = (s - 1) / 2.0
    src_r = cen + ct * yy - st * xx
    src_c = cen + st * yy + ct * xx
    return jax.scipy.ndimage.map_coordinates(image, [src_r, src_c], order=1, mode="nearest")


def _gauss_blur(x, sigma, *, radius: int = 4):
    r = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    g = jnp.exp(-0.5 * (r / jnp.maximum(sigma, 1e-3)) ** 2)
    g = g / g.sum()
    xp = jnp.pad(x, radius, mode="reflect")
    y = jax.vmap(lambda row: jnp.convolve(row, g, mode="valid"))(xp)
    return jax.vmap(lambda col: jnp.convolve(col, g, mode="valid"), in_axes=1, out_axes=1)(y)


def _minmax(x, eps=1e-8):
    lo, hi = jnp.min(x), jnp.max(x)
    return (x - lo) / jnp.maximum(hi - lo, eps)


def augment(key, image, *, out: int, max_angle: float = 10.0, p_aug: float = 0.5,
            blur_sigma=(0.5, 1.5), sp_prob: float = 0.002):
    """The thesis' augmentations on one (S, S) clean image → (out, out) in [0, 1].

    Rotation U(−max_angle, max_angle) with crop (always), then each with probability `p_aug`:
    left-right flip, up-down flip, inversion (1 − x), Gaussian blur (σ ~ U(blur_sigma)), and
    salt-and-pepper (fraction `sp_prob` of pixels set to 0 or 1, at random).
    """
    ka, kf1, kf2, ki, kb, kbs, ks, ksm, ksv = jax.random.split(key, 9)
    x = _minmax(image)
    x = rotate_crop(x, jax.random.uniform(ka, (), minval=-max_angle, maxval=max_angle), out=out)
    x = jnp.where(jax.random.uniform(kf1) < p_aug, x[:, ::-1], x)
    x = jnp.where(jax.random.uniform(kf2) < p_aug, x[::-1, :], x)
    x = jnp.where(jax.random.uniform(ki) < p_aug, 1.0 - x, x)
    sig = jax.random.uniform(kbs, (), minval=blur_sigma[0], maxval=blur_sigma[1])
    x = jnp.where(jax.random.uniform(kb) < p_aug, _gauss_blur(x, sig), x)
    hit = (jax.random.uniform(ksm, x.shape) < sp_prob) & (jax.random.uniform(ks) < p_aug)
    x = jnp.where(hit, (jax.random.uniform(ksv, x.shape) < 0.5).astype(x.dtype), x)
    return _minmax(x).astype(jnp.float32)


def source_size(out: int, max_angle: float = 10.0) -> int:
    """Side of the square to rotate so that an (out, out) central crop has no empty corners."""
    t = math.radians(max_angle)
    return int(math.ceil(out * (abs(math.cos(t)) + abs(math.sin(t))))) + 2


def stripes_clean_batch(key, *, batch: int, size: int, kinds=("random", "hex", "square", "chain"),
                        clean_pool: jax.Array | None = None, p_user: float = 0.5, **aug) -> jax.Array:
    """`batch` augmented clean images (batch, size, size) in [0, 1].

    Simulated topographies of each kind in `kinds` (equal shares), mixed with random crops of
    `clean_pool` (n, Hp, Wp) — the user's clean images — with probability `p_user` when given.
    """
    from jaxdn.simulate import stm

    src = source_size(size, aug.get("max_angle", 10.0))
    ksim, kaug, kpool, kmix = jax.random.split(key, 4)
    bounds = np.linspace(0, batch, len(kinds) + 1).astype(int)
    sims = []
    for j, kind in enumerate(kinds):  # equal shares of each lattice kind
        nj = int(bounds[j + 1] - bounds[j])
        if nj:
            keys = jax.random.split(jax.random.fold_in(ksim, j), nj)
            sims.append(jax.vmap(lambda k: stm.stm_topography(k, size=src, kind=kind))(keys))
    raw = jnp.concatenate(sims, axis=0).astype(jnp.float32)
    if clean_pool is not None and clean_pool.shape[0] > 0:
        n, hp, wp = clean_pool.shape
        k1, k2, k3 = jax.random.split(kpool, 3)
        i = jax.random.randint(k1, (batch,), 0, n)
        r = jax.random.randint(k2, (batch,), 0, max(1, hp - src + 1))
        c = jax.random.randint(k3, (batch,), 0, max(1, wp - src + 1))
        user = jax.vmap(lambda ii, rr, cc: jax.lax.dynamic_slice(clean_pool[ii], (rr, cc), (src, src)))(i, r, c)
        raw = jnp.where((jax.random.uniform(kmix, (batch,)) < p_user)[:, None, None], user, raw)
    return jax.vmap(lambda k, x: augment(k, x, out=size, **aug))(jax.random.split(kaug, batch), raw)


def stripes_batch(key, *, batch: int, size: int, levels=((0.03, 2), (0.08, 3), (0.15, 4), (0.25, 6)),
                  clean_pool: jax.Array | None = None, **kw) -> tuple[jax.Array, jax.Array]:
    """One stripes training batch (noisy, clean), each (batch, size, size, 1) in [0, 1].

    The batch is split into equal groups, one per stripe level (row_fraction, max_width), so every
    batch mixes mild and severe striping.
    """
    from jaxdn.simulate import noise

    kc, kn = jax.random.split(key)
    clean = stripes_clean_batch(kc, batch=batch, size=size, clean_pool=clean_pool, **kw)
    bounds = np.linspace(0, batch, len(levels) + 1).astype(int)
    parts = []
    for j, (frac, width) in enumerate(levels):
        a, b = bounds[j], bounds[j + 1]
        if b > a:
            parts.append(noise.stripes(jax.random.fold_in(kn, j), clean[a:b], row_fraction=frac, max_width=width))
    noisy = jnp.concatenate(parts, axis=0)
    return noisy[..., None], clean[..., None]


def load_clean_dir(path, *, min_size: int) -> np.ndarray:
    """Read every image in `path` (jaxdn.io.read), min–max normalise, centre-crop to a common
    square side (the smallest image side, ≥ min_size). Returns (n, S, S) float32 in [0, 1]."""
    from pathlib import Path
    from jaxdn.errors import InputError
    from jaxdn import io as jio

    files = sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith("."))
    frames = []
    for f in files:
        try:
            img = jio.read(f).data
        except Exception:  # unreadable files are skipped, not fatal
            continue
        img = img.reshape((-1,) + img.shape[-2:])
        for fr in img:
            if np.all(np.isfinite(fr)) and min(fr.shape) >= min_size:
                lo, hi = fr.min(), fr.max()
                frames.append(((fr - lo) / max(hi - lo, 1e-12)).astype(np.float32))
    if not frames:
        raise InputError(f"no usable clean images (≥ {min_size}² px) in {path}")
    side = min(min(f.shape) for f in frames)
    out = []
    for f in frames:
        r0, c0 = (f.shape[0] - side) // 2, (f.shape[1] - side) // 2
        out.append(f[r0:r0 + side, c0:c0 + side])
    return np.stack(out)
