"""Atomic-column STEM image simulators (pure JAX, key-driven, jit/vmap-able).

Shape arguments (``size``, ``frames``, ``max_atoms``, the ranges) are static Python values: wrap
with ``jax.jit(functools.partial(f, size=...))`` or ``jax.jit(f, static_argnames=...)``, and
``jax.vmap`` over keys for batches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._render import normalise01, render_gaussians, uint, urange

__all__ = ["noise2atom_clean", "haadf_lattice", "drift_movie"]


# ---------------------------------------------------------------------------------------------
# Noise2Atom clean domain
# ---------------------------------------------------------------------------------------------


def noise2atom_clean(key, *, size=128, canvas=256, n_positions=(75, 150), max_atoms_per_site=4,
                     kernel=33, variance=(1.0, 10.0)):
    """The Noise2Atom paper's clean domain image.

    75–150 random integer positions on a 256² lattice, 1–4 atoms stacked on each (intensity =
    atom count), convolved with a 33×33 Gaussian kernel of random variance in [1, 10] (px²), then
    the centre ``size``² crop, min-max normalised to [0, 1].

    The convolution with the truncated kernel is evaluated exactly as a sum of truncated Gaussians
    (separable, one matmul), equivalent to a 'same' convolution with zero padding.

    Args:
      key: PRNG key.
      size: side of the centre crop (static), ≤ ``canvas``.
      canvas: side of the lattice the positions are drawn on (static).
      n_positions: inclusive (min, max) number of positions (static).
      max_atoms_per_site: atoms per position are uniform in [1, max_atoms_per_site].
      kernel: side of the (odd) Gaussian kernel in px; contributions beyond ±kernel//2 are cut.
      variance: (min, max) of the kernel variance σ² in px².

    Returns:
      (size, size) float32 image in [0, 1].
    """
    if size > canvas:
        raise ValueError(f"size={size} must not exceed canvas={canvas}")
    lo, hi = n_positions
    u = jax.random.uniform(key, (2 + 3 * hi,))
    n = uint(u[0], lo, hi)
    var = urange(u[1], variance[0], variance[1])
    pos = uint(u[2 : 2 + 2 * hi], 0, canvas - 1).reshape(hi, 2).astype(jnp.float32)
    counts = uint(u[2 + 2 * hi :], 1, max_atoms_per_site).astype(jnp.float32)
    weights = jnp.where(jnp.arange(hi) < n, counts, 0.0)
    # Shift into crop coordinates.
    off = (canvas - size) // 2
    pos = pos - off
    half = kernel // 2
    rows = jnp.arange(size, dtype=jnp.float32)
    dr = rows[None, :] - pos[:, 0:1]
    dc = rows[None, :] - pos[:, 1:2]
    gr = jnp.where(jnp.abs(dr) <= half, jnp.exp(-dr * dr / (2 * var)), 0.0)
    gc = jnp.where(jnp.abs(dc) <= half, jnp.exp(-dc * dc / (2 * var)), 0.0)
    img = (gr * weights[:, None]).T @ gc
    return normalise01(img)


# ---------------------------------------------------------------------------------------------
# HAADF lattices
# ---------------------------------------------------------------------------------------------

_RATIO = (0.8, 1.25)  # |a2| / |a1|
_GAMMA = (math.radians(60.0), math.radians(120.0))  # angle between a1 and a2
_SIN_GAMMA_MIN = math.sin(_GAMMA[0])


def _lattice(key, *, spacing, max_basis=2):
    """Random Bravais lattice + basis. Returns (a1, a2 (2,), basis (B, 2) px, basis_on (B,), basis_int (B,))."""
    nb = max_basis - 1
    u = jax.random.uniform(key, (4 + 3 * nb + max_basis,))
    a = urange(u[0], *spacing)
    ratio = urange(u[1], *_RATIO)
    theta = urange(u[2], 0.0, math.pi)
    gamma = urange(u[3], *_GAMMA)
    a1 = a * jnp.stack([jnp.cos(theta), jnp.sin(theta)])
    a2 = a * ratio * jnp.stack([jnp.cos(theta + gamma), jnp.sin(theta + gamma)])
    # Basis: site 0 at the origin; extra sites near the cell centre (fractional 0.4–0.6 along each
    # vector), each present with probability 1/2.
    frac = urange(u[4 : 4 + 2 * nb].reshape(nb, 2), 0.4, 0.6)
    extra = frac[:, 0:1] * a1 + frac[:, 1:2] * a2
    basis = jnp.concatenate([jnp.zeros((1, 2)), extra], axis=0)
    on = jnp.concatenate([jnp.ones((1,), bool), u[4 + 2 * nb : 4 + 3 * nb] < 0.5])
    # Z-contrast: each sublattice has its own column intensity in [0.5, 1].
    inten = urange(u[4 + 3 * nb :], 0.5, 1.0)
    return a1, a2, basis, on, inten


def _nearest_distance(a1, a2, basis, on):
    """Smallest distance between two distinct sites of the crystal (px)."""
    ij = jnp.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], jnp.float32)  # (9, 2)
    cells = ij[:, 0:1] * a1 + ij[:, 1:2] * a2  # (9, 2)
    # Differences between basis site p and basis site q translated by every neighbouring cell.
    d = cells[None, None] + basis[None, :, None] - basis[:, None, None]  # (B, B, 9, 2)
    dist = jnp.linalg.norm(d, axis=-1)
    both = on[:, None, None] & on[None, :, None]
    same = dist < 1e-6
    return jnp.min(jnp.where(both & ~same, dist, jnp.inf))


def _n_cells(radius, spacing_min):
    """Static half-range of lattice indices so |i|,|j| ≤ n covers a disc of ``radius``."""
    return int(math.ceil(radius / (spacing_min * min(1.0, _RATIO[0]) * _SIN_GAMMA_MIN))) + 1


def _sites(key, *, size, spacing, extent, max_atoms, margin):
    """Lattice sites around the frame centre, compacted to ``max_atoms`` entries.

    Keeps the sites that can touch the frame over a box of half-width ``size/2 + extent + margin``
    around the centre (``extent`` for drift). Returns positions (max_atoms, 2), keep (max_atoms,),
    intensity (max_atoms,).
    """
    k_lat, k_u = jax.random.split(key)
    uu = jax.random.uniform(k_u, (max_atoms + 2,))
    a1, a2, basis, on, inten = _lattice(k_lat, spacing=spacing)
    half = size / 2.0 + extent + margin
    n = _n_cells(half * math.sqrt(2.0), spacing[0])
    idx = jnp.arange(-n, n + 1, dtype=jnp.float32)
    ii, jj = jnp.meshgrid(idx, idx, indexing="ij")
    # Random lattice origin: uniform within one unit cell (the lattice is periodic).
    u = uu[:2]
    cells = (ii.reshape(-1, 1) + u[0]) * a1 + (jj.reshape(-1, 1) + u[1]) * a2  # (M, 2)
    centre = jnp.array([(size - 1) / 2.0, (size - 1) / 2.0])
    pts = cells[:, None, :] + basis[None, :, :] + centre  # (M, B, 2)
    ok = jnp.broadcast_to(on[None, :], pts.shape[:2])
    ints = jnp.broadcast_to(inten[None, :], pts.shape[:2])
    pts = pts.reshape(-1, 2)
    ok = ok.reshape(-1)
    ints = ints.reshape(-1)
    if pts.shape[0] < max_atoms:  # fewer candidate sites than slots: pad with disabled far-away sites
        pad = max_atoms - pts.shape[0]
        pts = jnp.concatenate([pts, jnp.full((pad, 2), -1.0e4, pts.dtype)])
        ok = jnp.concatenate([ok, jnp.zeros((pad,), bool)])
        ints = jnp.concatenate([ints, jnp.zeros((pad,), ints.dtype)])
    cheb = jnp.max(jnp.abs(pts - centre), axis=-1)
    inside = (cheb <= half) & ok
    # Nearest to the centre first, so if capacity runs out the outermost (margin) sites go first.
    sel = jnp.argsort(jnp.where(inside, cheb, jnp.inf))[:max_atoms]
    keep = jnp.arange(max_atoms) < jnp.sum(inside)
    pos = jnp.where(keep[:, None], pts[sel], -1.0e4)
    # Small per-column intensity jitter (thickness / occupancy variation), ±5 %.
    jitter = urange(uu[2:], 0.95, 1.05)
    amp = jnp.where(keep, ints[sel] * jitter, 0.0)
    d_nn = _nearest_distance(a1, a2, basis, on)
    return pos.astype(jnp.float32), keep, amp.astype(jnp.float32), d_nn


def _finish(img, background):
    """Scale so the brightest pixel is 1, add background, keep in [0, 1]."""
    peak = jnp.max(img)
    return jnp.clip(background + (1.0 - background) * img / jnp.maximum(peak, 1e-6), 0.0, 1.0)


def haadf_lattice(key, *, size=256, spacing=(7.0, 14.0), sigma=(1.0, 2.5), max_atoms=4096,
                  background=(0.0, 0.1)):
    """HAADF-STEM-like image of atomic columns on a random 2-D lattice.

    A random Bravais lattice (``|a1|`` uniform in ``spacing`` px, ``|a2|/|a1|`` in [0.8, 1.25],
    angle between them in [60°, 120°], random orientation and origin) with a basis of one or two
    sites (second site near the cell centre, present with probability 1/2). Each sublattice has a
    Z-contrast intensity in [0.5, 1], each column ±5 % jitter. Columns are Gaussian probes of width
    σ uniform in ``sigma`` px, capped at 0.4 × the nearest-neighbour distance so columns stay
    resolved. The image is scaled so its brightest pixel is 1, then a constant background uniform
    in ``background`` is added (``bg + (1 - bg)·img``, so the range stays [0, 1]).

    Args:
      key: PRNG key.
      size: image side in px (static).
      spacing: (min, max) length of the first lattice vector in px (static).
      sigma: (min, max) probe standard deviation in px.
      max_atoms: static capacity of the position arrays. If more sites exist, those farthest from
        the centre are dropped (from the image too); the default covers every in-frame column of
        256² at the densest default lattice.
      background: (min, max) constant background level.

    Returns:
      image: (size, size) float32 in [0, 1].
      positions: (max_atoms, 2) float32 (row, col) in px; pixel centres at integers.
      valid: (max_atoms,) bool, True for columns whose centre lies inside the frame
        ``[-0.5, size - 0.5)²``. Other entries are padding (-1e4) or columns just outside the frame
        that still contribute to the image edge.
    """
    k_sites, k_u = jax.random.split(key)
    u = jax.random.uniform(k_u, (2,))
    margin = 4.0 * sigma[1]
    pos, _, amp, d_nn = _sites(k_sites, size=size, spacing=spacing, extent=0.0,
                               max_atoms=max_atoms, margin=margin)
    sig = _probe_sigma(u[0], sigma, d_nn)
    img = render_gaussians(pos, amp, sig, (size, size))
    valid = _in_frame(pos, size)
    bg = urange(u[1], *background)
    return _finish(img, bg), pos, valid


def _probe_sigma(u, sigma, d_nn):
    """σ uniform in ``sigma`` (from a uniform draw u), capped at d_nn / 2.5 (columns resolved)."""
    sig = urange(u, *sigma)
    return jnp.minimum(sig, d_nn / 2.5)


def _in_frame(pos, size):
    return jnp.all((pos >= -0.5) & (pos < size - 0.5), axis=-1)


def drift_movie(key, *, frames, size=128, drift_px=(1.0, 2.0), spacing=(7.0, 14.0),
                sigma=(1.0, 2.5), max_atoms=4096, background=(0.0, 0.1)):
    """A movie of one :func:`haadf_lattice`-style crystal drifting rigidly.

    The lattice moves by a constant velocity per frame with speed uniform in ``drift_px`` px/frame
    and uniform random direction; frame ``t`` shows the lattice translated by ``t·v``.

    Args:
      key: PRNG key.
      frames: number of frames T (static).
      size: frame side in px (static).
      drift_px: (min, max) drift speed in px per frame (static max).
      spacing, sigma, max_atoms, background: as in :func:`haadf_lattice`.

    Returns:
      movie: (T, size, size) float32 in [0, 1].
      positions: (T, max_atoms, 2) float32 (row, col) px per frame.
      valid: (max_atoms,) bool, True for columns inside the frame in *every* frame (so
        ``positions[t][valid]`` is in frame ``t`` for all t; columns entering or leaving the field of
        view are rendered but not marked valid).
    """
    k_sites, k_u = jax.random.split(key)
    u = jax.random.uniform(k_u, (4,))
    phi = urange(u[0], 0.0, 2 * math.pi)
    speed = urange(u[1], *drift_px)
    v = speed * jnp.stack([jnp.cos(phi), jnp.sin(phi)])
    extent = (frames - 1) * float(drift_px[1])
    margin = 4.0 * sigma[1]
    pos0, _, amp, d_nn = _sites(k_sites, size=size, spacing=spacing, extent=extent,
                                max_atoms=max_atoms, margin=margin)
    sig = _probe_sigma(u[2], sigma, d_nn)
    # Start the crystal half the total drift behind so it stays centred over the movie.
    t = jnp.arange(frames, dtype=jnp.float32)
    shifts = (t - (frames - 1) / 2.0)[:, None] * v[None, :]  # (T, 2)
    pos = pos0[None] + shifts[:, None, :]  # (T, K, 2)
    movie = jax.vmap(lambda p: render_gaussians(p, amp, sig, (size, size)))(pos)
    in_frame = jax.vmap(lambda p: _in_frame(p, size))(pos)  # (T, K)
    valid = jnp.all(in_frame, axis=0)
    bg = urange(u[3], *background)
    return _finish(movie, bg), pos.astype(jnp.float32), valid
