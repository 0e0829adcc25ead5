"""STM-like topographies (pure JAX, key-driven, jit/vmap-able)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._render import normalise01, compact, render_gaussians, uint, urange

__all__ = ["stm_topography", "KINDS"]

KINDS = ("hex", "square", "chain")


def _lattice_vectors(kind_idx, a, chain_ratio, theta):
    """(a1, a2) in px for hex (0), square (1) or chain (2) lattices, rotated by ``theta``."""
    hex2 = jnp.array([0.5, math.sqrt(3.0) / 2.0])
    sq2 = jnp.array([0.0, 1.0])
    ch2 = jnp.array([0.0, 1.0]) * chain_ratio
    u2 = jnp.where(kind_idx == 0, hex2, jnp.where(kind_idx == 1, sq2, ch2))
    rot = jnp.array([[jnp.cos(theta), -jnp.sin(theta)], [jnp.sin(theta), jnp.cos(theta)]])
    return a * (rot @ jnp.array([1.0, 0.0])), a * (rot @ u2)


def stm_topography(key, *, size=256, kind="random", spacing=(8.0, 16.0), vacancies=(0.0, 0.05),
                   max_adatoms=8, max_steps=3, step_height=(0.3, 1.0), chain_ratio=(2.0, 3.0),
                   max_atoms=None):
    """Constant-current STM topography of a crystalline surface.

    Atoms are Gaussian bumps (σ = 0.2–0.3 × spacing) on a randomly rotated lattice:

    * ``"hex"``: hexagonal, spacing a;
    * ``"square"``: square, spacing a;
    * ``"chain"``: atoms spaced a along chains, chains ``chain_ratio`` × a apart, plus a continuous
      ridge along each chain (quasi-1-D surfaces such as ZrTe₃);
    * ``"random"``: one of the three, uniformly, per key.

    Point defects: a fraction of sites uniform in ``vacancies`` is removed; 0…``max_adatoms``
    adatoms (1.5–2.5× brighter, wider bumps) at random positions. Step edges: 0…``max_steps``
    roughly parallel, slightly wavy steps of height ``step_height`` × the atomic corrugation form a
    staircase of terraces. The result is min-max normalised to [0, 1].

    Args:
      key: PRNG key.
      size: image side in px (static).
      kind: ``"hex"``, ``"square"``, ``"chain"`` or ``"random"`` (static).
      spacing: (min, max) nearest-neighbour spacing a in px (static min).
      vacancies: (min, max) vacancy fraction.
      max_adatoms: maximum adatom count (static).
      max_steps: maximum number of step edges (static).
      step_height: (min, max) step height relative to the atomic corrugation.
      chain_ratio: (min, max) chain separation / a for ``"chain"``.
      max_atoms: static site capacity (default: enough for the densest lattice).

    Returns:
      (size, size) float32 image in [0, 1].
    """
    if kind not in KINDS + ("random",):
        raise ValueError(f"kind must be one of {KINDS + ('random',)}, got {kind!r}")
    # Static geometry: index range and capacity from the densest case (hex, min spacing).
    margin = 4.0 * 0.3 * spacing[1]
    half = size / 2.0 + margin
    n = int(math.ceil(half * math.sqrt(2.0) / (spacing[0] * math.sqrt(3.0) / 2.0))) + 1
    if max_atoms is None:
        cell = spacing[0] ** 2 * math.sqrt(3.0) / 2.0
        max_atoms = int(1.2 * (2 * half) ** 2 / cell) + 64
    ms, na = max(max_steps, 1), max(max_adatoms, 1)

    # All random numbers from one uniform draw (cheap to compile), sliced below.
    u = jax.random.uniform(key, (11 + max_atoms + 3 * na + 5 * ms,))
    us, u_site, u_ad, u_st = jnp.split(u, [11, 11 + max_atoms, 11 + max_atoms + 3 * na])
    kind_idx = uint(us[0], 0, 2) if kind == "random" else jnp.asarray(KINDS.index(kind))
    a = urange(us[1], *spacing)
    theta = urange(us[2], 0.0, math.pi)
    ratio = urange(us[3], *chain_ratio)
    sig = a * urange(us[4], 0.2, 0.3)
    org = us[5:7]  # lattice origin, fractional
    vac = urange(us[7], *vacancies)
    n_ad = uint(us[8], 0, max_adatoms)
    n_steps = uint(us[9], 0, max_steps)
    phi = urange(us[10], 0.0, 2 * math.pi)
    a1, a2 = _lattice_vectors(kind_idx, a, ratio, theta)

    # Lattice sites with vacancies.
    idx = jnp.arange(-n, n + 1, dtype=jnp.float32)
    ii, jj = jnp.meshgrid(idx, idx, indexing="ij")
    centre = jnp.full((2,), (size - 1) / 2.0)
    pts = ((ii.reshape(-1, 1) + org[0]) * a1 + (jj.reshape(-1, 1) + org[1]) * a2) + centre
    inside = jnp.all(jnp.abs(pts - centre) <= half, axis=-1)
    sel, keep = compact(inside, max_atoms)
    present = keep & (u_site >= vac)
    img = render_gaussians(pts[sel], jnp.where(present, 1.0, 0.0), sig, (size, size))

    # Chain ridges: a Gaussian line profile across each chain (along a1), only for "chain".
    rows = jnp.arange(size, dtype=jnp.float32)[:, None]
    cols = jnp.arange(size, dtype=jnp.float32)[None, :]
    normal = jnp.array([-a1[1], a1[0]]) / a  # unit normal to the chains
    period = jnp.abs(jnp.dot(a2, normal))  # chain separation
    o = centre + org[0] * a1 + org[1] * a2  # a site on chain 0
    sn = (rows - o[0]) * normal[0] + (cols - o[1]) * normal[1]
    dist = sn - period * jnp.round(sn / period)
    ridge = jnp.exp(-dist * dist / (2.0 * (1.3 * sig) ** 2))
    img = img + jnp.where(kind_idx == 2, 0.5, 0.0) * ridge
    corrugation = jnp.maximum(jnp.max(img) - jnp.min(img), 1e-6)

    # Adatoms: brighter, wider bumps at random positions.
    u_ad = u_ad.reshape(na, 3)
    ad_amp = jnp.where(jnp.arange(na) < n_ad, urange(u_ad[:, 2], 1.5, 2.5), 0.0)
    img = img + render_gaussians(u_ad[:, :2] * (size - 1.0), ad_amp, 1.6 * sig, (size, size))

    # Step edges: a staircase of roughly parallel (±0.15 rad), slightly wavy steps.
    u_st = u_st.reshape(ms, 5)
    phis = phi + urange(u_st[:, 0], -0.15, 0.15)
    offs = urange(u_st[:, 1], -0.4, 0.4) * size
    heights = urange(u_st[:, 2], *step_height)
    on = jnp.arange(ms) < n_steps
    r0, c0 = rows - centre[0], cols - centre[1]

    def step(i):
        d = r0 * jnp.cos(phis[i]) + c0 * jnp.sin(phis[i]) - offs[i]
        along = -r0 * jnp.sin(phis[i]) + c0 * jnp.cos(phis[i])
        d = d + 0.02 * size * jnp.sin(2 * math.pi * (u_st[i, 3] * 2 + 0.5) * along / size
                                      + 2 * math.pi * u_st[i, 4])
        return jnp.where(on[i], heights[i], 0.0) * jax.nn.sigmoid(d / (0.6 + 0.1 * a))

    terraces = sum(step(i) for i in range(max_steps)) if max_steps > 0 else 0.0
    img = img + corrugation * terraces
    return normalise01(img)
