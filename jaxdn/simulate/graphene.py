"""Disordered graphene images after the TEM U-Net paper (pure JAX, key-driven, jit/vmap-able).

Atoms of a honeycomb lattice (bond 1.42 Å, lattice constant 2.46 Å) are displaced in x and y by
``0.284 Å · C_G`` with the paper's eq. 1 rule for ``C_G``, then rendered as a charge-density-like
map (see :func:`graphene`). :func:`graphene_combined` builds the paper's laterally combined
2×2 / 3×3 / 4×4 maps and :func:`shift_wrap` its wrap-around shifted copies.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._render import compact, normalise01, render_gaussians

__all__ = ["displacement_coefficient", "graphene", "graphene_combined", "shift_wrap",
           "shifted_copies", "BOND", "LATTICE", "MAX_SHIFT"]

BOND = 1.42  # C–C bond length, Å
LATTICE = BOND * math.sqrt(3.0)  # 2.46 Å
MAX_SHIFT = 0.284  # Å, 20 % of the bond length


def displacement_coefficient(val):
    """TEM paper eq. 1: map standard-normal draws ``val_G`` to ``C_G`` in [-1, 1].

    ``val/5`` for ``|val| ≤ 1``, ``val/4`` for ``1 < |val| ≤ 2``, ``val/3`` for ``2 < |val| ≤ 3``,
    ``±1`` beyond 3 σ.
    """
    a = jnp.abs(val)
    c = jnp.where(a <= 1.0, val / 5.0, jnp.where(a <= 2.0, val / 4.0, val / 3.0))
    return jnp.where(a > 3.0, jnp.sign(val), c)


def _grid_half(extent_a):
    """Static lattice-index half range covering a disc of radius ``extent_a`` Å."""
    return int(math.ceil(extent_a / (LATTICE * math.sin(math.pi / 3)))) + 2


def _capacity(size, pixel_size, margin_px):
    side_a = (size + 2 * margin_px) * pixel_size
    cell = LATTICE * LATTICE * math.sin(math.pi / 3)  # 2 atoms per cell
    return int(1.3 * 2 * side_a * side_a / cell) + 64


def _atoms(key, *, size, pixel_size, origin, phase, margin_px):
    """Disordered honeycomb near a tile. Returns positions (K, 2) px, amplitude (K,), sigma scale (K,)."""
    half_px = size / 2.0 + margin_px
    n = _grid_half(half_px * math.sqrt(2.0) * pixel_size)
    idx = jnp.arange(-n, n + 1, dtype=jnp.float32)
    ii, jj = jnp.meshgrid(idx, idx, indexing="ij")  # (m, m)
    # Lattice in Å, x along a1 (zigzag); (x, y) -> (col, row).
    a1 = jnp.array([LATTICE, 0.0])
    a2 = jnp.array([LATTICE / 2.0, LATTICE * math.sqrt(3.0) / 2.0])
    centre_px = origin + (size - 1) / 2.0  # (row, col) of tile centre in global px
    centre_a = centre_px[::-1] * pixel_size  # (x, y) Å
    # Snap the grid to the lattice point nearest the tile centre so tiles share one global lattice.
    basis_inv = jnp.linalg.inv(jnp.stack([a1, a2], axis=1))
    f0 = jnp.round(basis_inv @ (centre_a - phase))
    cell = (ii[..., None] + f0[0]) * a1 + (jj[..., None] + f0[1]) * a2 + phase  # (m, m, 2)
    sites = jnp.stack([cell, cell + (a1 + a2) / 3.0], axis=0)  # (2, m, m, 2): A, B
    vals = jax.random.normal(key, sites.shape)
    pos = sites + MAX_SHIFT * displacement_coefficient(vals)
    a, b = pos[0], pos[1]
    # Honeycomb bonds: A(i,j) – B(i,j), B(i-1,j), B(i,j-1); B(i,j) – A(i,j), A(i+1,j), A(i,j+1).
    d = lambda p, q: jnp.linalg.norm(p - q, axis=-1)
    bl_a = (d(a, b) + d(a, jnp.roll(b, 1, axis=0)) + d(a, jnp.roll(b, 1, axis=1))) / 3.0
    bl_b = (d(b, a) + d(b, jnp.roll(a, -1, axis=0)) + d(b, jnp.roll(a, -1, axis=1))) / 3.0
    mean_bond = jnp.stack([bl_a, bl_b], axis=0).reshape(-1)
    pos_px = pos.reshape(-1, 2)[:, ::-1] / pixel_size  # (row, col) global px
    local = pos_px - origin
    inside = jnp.all((local >= -margin_px) & (local <= size - 1 + margin_px), axis=-1)
    cap = _capacity(size, pixel_size, margin_px)
    sel, keep = compact(inside, cap)
    return local[sel], keep, mean_bond[sel]


def _render_tile(key, *, size, pixel_size, origin, phase, sigma, contrast):
    margin_px = 4.0 * sigma * 1.3 / pixel_size
    pos, keep, mean_bond = _atoms(key, size=size, pixel_size=pixel_size, origin=origin,
                                  phase=phase, margin_px=margin_px)
    strain = (BOND - mean_bond) / BOND  # > 0 for compressed bonds
    amp = jnp.where(keep, 1.0 + contrast * strain, 0.0)
    sig = sigma * (mean_bond / BOND) / pixel_size
    return render_gaussians(pos, amp, sig, (size, size))


def graphene(key, *, size=128, pixel_size=0.125, sigma=0.4, contrast=3.0):
    """Charge-density-like image of a disordered graphene monolayer.

    Honeycomb lattice (bond 1.42 Å, zigzag along the columns, random lattice phase); every atom is
    displaced independently in x and y by ``0.284 Å · C_G`` with ``C_G`` from eq. 1
    (:func:`displacement_coefficient`). Each atom is rendered as a Gaussian whose

    * peak height is ``1 + contrast · (1.42 − b̄) / 1.42`` and
    * width is ``sigma · b̄ / 1.42`` (Å),

    where ``b̄`` is the mean length of its three bonds: atoms with compressed bonds appear brighter
    and tighter, stretched ones dimmer and wider — mimicking the brightness/size variation of the
    paper's DFT charge-density maps (a model, not a DFT calculation). Min-max normalised to [0, 1].

    Args:
      key: PRNG key.
      size: image side in px (static).
      pixel_size: Å per px (static; 0.125 gives the paper's 6.4 nm across 512 px).
      sigma: Gaussian width in Å for an unstrained atom.
      contrast: strain-to-brightness factor.

    Returns:
      (size, size) float32 image in [0, 1].
    """
    k_phase, k_atoms = jax.random.split(key)
    phase = _random_phase(k_phase)
    img = _render_tile(k_atoms, size=size, pixel_size=pixel_size, origin=jnp.zeros(2),
                       phase=phase, sigma=sigma, contrast=contrast)
    return normalise01(img)


def _random_phase(key):
    u = jax.random.uniform(key, (2,))
    return u[0] * jnp.array([LATTICE, 0.0]) + u[1] * jnp.array([LATTICE / 2, LATTICE * math.sqrt(3) / 2])


def graphene_combined(key, *, tiles, size=512, pixel_size=0.125, sigma=0.4, contrast=3.0,
                      n_structures=None):
    """Laterally combined disordered-graphene map (TEM paper Fig. 1b).

    ``n_structures`` (default ``tiles²``) independent disordered structures are drawn; each of the
    ``tiles × tiles`` grid cells shows one of them, chosen at random with replacement, on one
    common global lattice so the hexagonal pattern continues across seams (only the disorder
    changes). Cells are ``ceil(size / tiles)`` px; the mosaic is cropped to ``size`` and min-max
    normalised to [0, 1] as a whole.

    Args:
      key: PRNG key.
      tiles: 2, 3, 4, … cells per side (static).
      size: output side in px (static).
      pixel_size, sigma, contrast: as in :func:`graphene`.
      n_structures: number of distinct disordered structures (static).

    Returns:
      (size, size) float32 image in [0, 1].
    """
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    ns = tiles * tiles if n_structures is None else int(n_structures)
    tile = -(-size // tiles)
    k_phase, k_choice, k_struct = jax.random.split(key, 3)
    phase = _random_phase(k_phase)
    struct_keys = jax.random.split(k_struct, ns)
    choice = jax.random.randint(k_choice, (tiles * tiles,), 0, ns)
    ti, tj = jnp.meshgrid(jnp.arange(tiles), jnp.arange(tiles), indexing="ij")
    origins = jnp.stack([ti.reshape(-1), tj.reshape(-1)], axis=-1).astype(jnp.float32) * tile

    # A structure is its displacement field in lattice-index space, so the same key reused in
    # another cell gives the same local disorder pattern.
    def one(k, o):
        return _render_tile(k, size=tile, pixel_size=pixel_size, origin=o, phase=phase,
                            sigma=sigma, contrast=contrast)

    cells = jax.vmap(one)(struct_keys[choice], origins)  # (tiles², tile, tile)
    mosaic = cells.reshape(tiles, tiles, tile, tile).transpose(0, 2, 1, 3)
    mosaic = mosaic.reshape(tiles * tile, tiles * tile)[:size, :size]
    return normalise01(mosaic)


def shift_wrap(x, d):
    """Wrap-around shift by ``d`` px along both axes (TEM paper Fig. 1c).

    ``out[..., r, c] = x[..., (r − d) mod H, (c − d) mod W]``: the four regions i–iv are rearranged
    assuming a repeated structure.

    Args:
      x: (..., H, W) image.
      d: shift in px (int, may be traced).

    Returns:
      Array like ``x``.
    """
    return jnp.roll(jnp.asarray(x), (d, d), axis=(-2, -1))


def shifted_copies(x, ds=(8, 10, 12)):
    """Stack of :func:`shift_wrap` copies for each shift in ``ds``: (len(ds), ..., H, W)."""
    return jnp.stack([shift_wrap(x, d) for d in ds], axis=0)
