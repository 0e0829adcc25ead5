"""STM-like topographies (pure JAX, key-driven, jit/vmap-able)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._render import normalise01, render_gaussians

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
    ks = jax.random.split(key, 16)
    kind_idx = (jax.random.randint(ks[0], (), 0, 3) if kind == "random"
                else jnp.asarray(KINDS.index(kind)))
    a = jax.random.uniform(ks[1], (), minval=spacing[0], maxval=spacing[1])
    theta = jax.random.uniform(ks[2], (), minval=0.0, maxval=math.pi)
    ratio = jax.random.uniform(ks[3], (), minval=chain_ratio[0], maxval=chain_ratio[1])
    a1, a2 = _lattice_vectors(kind_idx, a, ratio, theta)

    # Sites covering the frame (index range static from the densest case: hex, min spacing).
    sig = a * jax.random.uniform(ks[4], (), minval=0.2, maxval=0.3)
    margin = 4.0 * 0.3 * spacing[1]
    half = size / 2.0 + margin
    n = int(math.ceil(half * math.sqrt(2.0) / (spacing[0] * math.sqrt(3.0) / 2.0))) + 1
    idx = jnp.arange(-n, n + 1, dtype=jnp.float32)
    ii, jj = jnp.meshgrid(idx, idx, indexing="ij")
    u = jax.random.uniform(ks[5], (2,))
    centre = jnp.full((2,), (size - 1) / 2.0)
    pts = ((ii.reshape(-1, 1) + u[0]) * a1 + (jj.reshape(-1, 1) + u[1]) * a2) + centre
    inside = jnp.all(jnp.abs(pts - centre) <= half, axis=-1)
    if max_atoms is None:
        cell = spacing[0] ** 2 * math.sqrt(3.0) / 2.0
        max_atoms = int(1.2 * (2 * half) ** 2 / cell) + 64
    (sel,) = jnp.nonzero(inside, size=max_atoms, fill_value=0)
    keep = jnp.arange(max_atoms) < jnp.sum(inside)
    pos = pts[sel]
    vac = jax.random.uniform(ks[6], (), minval=vacancies[0], maxval=vacancies[1])
    present = keep & (jax.random.uniform(ks[7], (max_atoms,)) >= vac)
    amp = jnp.where(present, 1.0, 0.0)
    img = render_gaussians(pos, amp, sig, (size, size))

    # Chain ridges: a Gaussian line profile across each chain (along a1), only for "chain".
    rows = jnp.arange(size, dtype=jnp.float32)[:, None]
    cols = jnp.arange(size, dtype=jnp.float32)[None, :]
    normal = jnp.array([-a1[1], a1[0]]) / a  # unit normal to the chains
    period = jnp.abs(jnp.dot(a2, normal))  # chain separation
    s = (rows - centre[0] - u[1] * a2[0] - u[0] * a1[0]) * normal[0] + (
        cols - centre[1] - u[1] * a2[1] - u[0] * a1[1]) * normal[1]
    dist = s - period * jnp.round(s / period)
    ridge = jnp.exp(-dist * dist / (2.0 * (1.3 * sig) ** 2))
    img = img + jnp.where(kind_idx == 2, 0.5, 0.0) * ridge

    corrugation = jnp.maximum(jnp.max(img) - jnp.min(img), 1e-6)

    # Adatoms.
    n_ad = jax.random.randint(ks[8], (), 0, max_adatoms + 1)
    ad_pos = jax.random.uniform(ks[9], (max_adatoms, 2), minval=0.0, maxval=size - 1.0)
    ad_amp = jnp.where(jnp.arange(max_adatoms) < n_ad,
                       jax.random.uniform(ks[10], (max_adatoms,), minval=1.5, maxval=2.5), 0.0)
    img = img + render_gaussians(ad_pos, ad_amp, 1.6 * sig, (size, size))

    # Step edges: a staircase of roughly parallel, slightly wavy steps.
    n_steps = jax.random.randint(ks[11], (), 0, max_steps + 1)
    phi = jax.random.uniform(ks[12], (), minval=0.0, maxval=2 * math.pi)
    phis = phi + 0.15 * jax.random.normal(ks[13], (max(max_steps, 1),))
    offs = jax.random.uniform(ks[14], (max(max_steps, 1),), minval=-0.4, maxval=0.4) * size
    k_h, k_w = jax.random.split(ks[15])
    heights = jax.random.uniform(k_h, (max(max_steps, 1),), minval=step_height[0],
                                 maxval=step_height[1])
    wave = jax.random.uniform(k_w, (max(max_steps, 1), 2), minval=0.0, maxval=1.0)
    on = jnp.arange(max(max_steps, 1)) < n_steps
    r0, c0 = rows - centre[0], cols - centre[1]

    def step(i):
        d = r0 * jnp.cos(phis[i]) + c0 * jnp.sin(phis[i]) - offs[i]
        along = -r0 * jnp.sin(phis[i]) + c0 * jnp.cos(phis[i])
        d = d + 0.02 * size * jnp.sin(2 * math.pi * (wave[i, 0] * 2 + 0.5) * along / size
                                      + 2 * math.pi * wave[i, 1])
        return jnp.where(on[i], heights[i], 0.0) * jax.nn.sigmoid(d / (0.6 + 0.1 * a))

    terraces = sum(step(i) for i in range(max_steps)) if max_steps > 0 else 0.0
    img = img + corrugation * terraces
    return normalise01(img)
