"""Tests for jaxdn.simulate: noise statistics, determinism, jit/vmap equivalence, geometry."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdn import metrics
from jaxdn.simulate import atoms, graphene, noise, stm

KEY = jax.random.key(0)


def _keys(n, seed=1):
    return jax.random.split(jax.random.key(seed), n)


# ---------------------------------------------------------------------------------------------
# Noise models
# ---------------------------------------------------------------------------------------------


def test_gaussian_std_and_clip():
    x = jnp.full((256, 256), 0.5)
    y = np.asarray(noise.gaussian(KEY, x, c=0.05))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.std() == pytest.approx(0.05, rel=0.03)
    assert y.mean() == pytest.approx(0.5, abs=0.002)
    z = np.asarray(noise.gaussian(KEY, x, c=1.0))
    assert z.min() == 0.0 and z.max() == 1.0  # truncated (eq. 3 + clipping)


def test_salt_pepper_value_dependent_rule():
    x = jax.random.uniform(jax.random.key(3), (256, 256))
    y, hit = noise.salt_pepper(KEY, x, p=0.2, return_mask=True)
    x, y, hit = map(np.asarray, (x, y, hit))
    assert hit.mean() == pytest.approx(0.2, abs=0.01)
    np.testing.assert_array_equal(y[~hit], x[~hit])
    np.testing.assert_array_equal(y[hit & (x < 0.5)], 1.0)
    np.testing.assert_array_equal(y[hit & (x >= 0.5)], 0.0)
    # Without the mask: changed-pixel fraction ≈ p.
    y2 = np.asarray(noise.salt_pepper(KEY, x, p=0.05))
    assert np.mean(y2 != x) == pytest.approx(0.05, abs=0.005)


def test_gaussian_salt_pepper():
    x = jnp.full((128, 128), 0.3)
    y = np.asarray(noise.gaussian_salt_pepper(KEY, x, c=0.1))  # p defaults to c
    assert 0.0 <= y.min() and y.max() <= 1.0
    # Pixels near 0.3 (<0.5) hit by SP become exactly 1: fraction ≈ p (Gaussian alone rarely clips to 1).
    assert np.mean(y == 1.0) == pytest.approx(0.1, abs=0.01)
    y2 = np.asarray(noise.gaussian_salt_pepper(KEY, x, c=0.1, p=0.0))
    assert np.mean(y2 == 1.0) < 1e-3


def test_background_gaussian_eqs_4_5():
    x = jax.random.uniform(jax.random.key(4), (16, 64, 64))
    w1 = 0.2
    bbg = jax.jit(functools.partial(noise.background_gaussian, w1=w1, patch=8,
                                    return_background=True))
    out, val = bbg(KEY, x, c=0.0, w2=0.0)
    x, out, val = map(np.asarray, (x, out, val))
    assert out.shape == x.shape and out.dtype == np.float32
    tiles = val[:, ::8, ::8]  # one value per 8×8 tile: 16·64 = 1024 tiles
    np.testing.assert_array_equal(np.repeat(np.repeat(tiles, 8, 1), 8, 2), val)
    assert tiles.min() >= 0.4 * w1 - 1e-6 and tiles.max() <= 1.2 * w1 + 1e-6
    # u^a < 0.15 → dark range [0.4, 0.6]·w1, below every other class (eq. 4).
    assert np.mean(tiles < 0.6 * w1) == pytest.approx(0.15, abs=0.035)
    # Only the bright class reaches above 0.9·w1: 0.15 · (1.2 − 0.9)/(1.2 − 0.8).
    assert np.mean(tiles > 0.9 * w1) == pytest.approx(0.1125, abs=0.03)
    # Eq. 5: dark pixels are lifted to val_BB, brighter ones reduced by at most 0.3·val_BB.
    low = x <= val
    np.testing.assert_allclose(out[low], val[low], atol=1e-6)
    assert np.all(out[~low] <= x[~low] + 1e-6)
    assert np.all(out[~low] >= x[~low] - 0.3 * val[~low] - 1e-6)
    # With Gaussian noise on top the result stays in [0, 1].
    noisy = np.asarray(bbg(KEY, x, c=0.3, w2=0.02)[0])
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0


def test_stripes_row_fraction_and_replacement():
    x = jnp.full((64, 128, 32), 0.5)
    y, mask = noise.stripes(KEY, x, row_fraction=0.1, max_width=3, return_mask=True)
    y, mask = np.asarray(y), np.asarray(mask)
    assert mask.shape == (64, 128)
    assert mask.mean() == pytest.approx(0.1, abs=0.02)
    np.testing.assert_array_equal(y[~mask], 0.5)
    rows = y[mask]  # (n_rows, W): whole rows replaced by uniform random values
    assert np.all(np.any(rows != 0.5, axis=-1))
    assert rows.min() >= 0.0 and rows.max() <= 1.0
    assert rows.mean() == pytest.approx(0.5, abs=0.03) and rows.std() == pytest.approx(12 ** -0.5, rel=0.05)
    _, m2 = noise.stripes(KEY, x[0], num_stripes=1, max_width=1, return_mask=True)
    assert int(np.sum(m2)) == 1


def test_poisson_counts_mean_variance():
    dose, px = 1000.0, 0.2
    lam = dose * px * px * 0.5  # 20 electrons
    clean = jnp.full((256, 256), 0.5)
    pg = jax.jit(functools.partial(noise.poisson_gaussian, dose=dose, pixel_size=px))
    counts = np.asarray(pg(KEY, clean, detector_sigma=0.0))
    assert counts.dtype == np.float32
    np.testing.assert_array_equal(counts, np.round(counts))
    assert counts.mean() == pytest.approx(lam, rel=0.01)
    assert counts.var() == pytest.approx(lam, rel=0.05)
    # Detector noise: σ = detector_sigma · max λ per image (max λ = 40 from the 1.0 pixels).
    clean2 = clean.at[0, 0].set(1.0)
    c2 = np.asarray(pg(KEY, clean2, detector_sigma=0.1))
    assert c2[1:].mean() == pytest.approx(lam, rel=0.01)
    assert c2[1:].var() == pytest.approx(lam + (0.1 * 40.0) ** 2, rel=0.05)


def test_background_gradient_is_slow_and_bounded():
    x = jnp.zeros((2, 64, 64))
    y = np.asarray(noise.background_gradient(KEY, x, strength=0.5))
    assert y.shape == x.shape and y.min() >= 0.0 and y.max() <= 1.0
    assert y.max() - y.min() == pytest.approx(0.5 / 1.5, rel=1e-4)  # b spans [0, 1] exactly
    assert np.abs(np.diff(y, 2, axis=-1)).max() < 5e-3  # smooth: tiny second differences
    assert not np.allclose(y[0], y[1])


NOISES = {
    "gaussian": functools.partial(noise.gaussian, c=0.1),
    "salt_pepper": functools.partial(noise.salt_pepper, p=0.1),
    "gsp": functools.partial(noise.gaussian_salt_pepper, c=0.1),
    "bbg": functools.partial(noise.background_gaussian, c=0.1, patch=8),
    "stripes": noise.stripes,
    "poisson": functools.partial(noise.poisson_gaussian, dose=500.0),
    "gradient": functools.partial(noise.background_gradient, strength=0.3),
}


@pytest.mark.parametrize("name", sorted(NOISES))
def test_noise_determinism_jit_vmap_eager(name):
    fn = NOISES[name]
    x = jax.random.uniform(jax.random.key(7), (32, 32))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    keys = jnp.stack([k1, k1, k2])
    batched = np.asarray(jax.jit(jax.vmap(fn, in_axes=(0, None)))(keys, x))  # jit + vmap
    assert batched.dtype == np.float32 and batched.shape == (3,) + x.shape
    np.testing.assert_array_equal(batched[0], batched[1])  # same key → identical
    assert not np.array_equal(batched[0], batched[2])  # different key → different
    # vmap over keys == a loop of single calls (eager where cheap, else jitted).
    single = fn if name in ("gaussian", "salt_pepper", "gsp", "stripes") else jax.jit(fn)
    for i in (0, 2):
        np.testing.assert_allclose(batched[i], single(keys[i], x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# HAADF lattices and drift movies
# ---------------------------------------------------------------------------------------------

HAADF = jax.jit(functools.partial(atoms.haadf_lattice, size=64, max_atoms=512))


def test_haadf_lattice_shapes_ranges_positions():
    img, pos, valid = HAADF(KEY)
    assert img.shape == (64, 64) and img.dtype == jnp.float32
    assert pos.shape == (512, 2) and pos.dtype == jnp.float32 and valid.shape == (512,)
    img, pos, valid = np.asarray(img), np.asarray(pos), np.asarray(valid)
    assert img.min() >= 0.0 and img.max() == pytest.approx(1.0)
    p = pos[valid]
    assert len(p) > 10
    assert np.all((p >= -0.5) & (p < 63.5))
    # Every true column sits on a bright local maximum (within a pixel).
    r, c = np.clip(np.round(p).astype(int), 0, 63).T
    assert np.all(img[r, c] > 0.3)
    pad = np.pad(img, 2, mode="edge")
    neigh = np.stack([pad[r + 2 + dr, c + 2 + dc] for dr in range(-2, 3) for dc in range(-2, 3)])
    assert np.mean(img[r, c] >= 0.9 * neigh.max(axis=0)) > 0.95
    # Columns are separated: nearest-neighbour distance ≥ 2.5 σ_min and lattice spacing sane.
    d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p)) * 1e9
    assert d.min() > 2.0
    # Atom finding recovers the columns away from the border.
    found = metrics.find_atoms(img, min_distance=2, threshold_rel=0.2)
    inner = np.all((p > 4) & (p < 59), axis=1)
    in_found = np.all((found > 4) & (found < 59), axis=1)
    prec, rec, f1 = metrics.atom_f1(found[in_found], p[inner], tolerance=1.5)
    assert rec > 0.9 and prec > 0.9


def test_haadf_determinism_jit_vmap():
    a = HAADF(jax.random.key(5))
    b = HAADF(jax.random.key(5))
    c = HAADF(jax.random.key(6))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    keys = _keys(2)
    imgs, poss, valids = jax.vmap(HAADF)(keys)
    assert imgs.shape == (2, 64, 64) and poss.shape == (2, 512, 2)
    for i in range(2):
        np.testing.assert_allclose(imgs[i], HAADF(keys[i])[0], atol=1e-5)
        np.testing.assert_array_equal(valids[i], HAADF(keys[i])[2])


def test_drift_movie():
    f = jax.jit(functools.partial(atoms.drift_movie, frames=4, size=48, max_atoms=512))
    movie, pos, valid = map(np.asarray, f(KEY))
    assert movie.shape == (4, 48, 48) and movie.dtype == np.float32
    assert pos.shape == (4, 512, 2) and valid.shape == (512,)
    assert movie.min() >= 0 and movie.max() <= 1 + 1e-6
    p = pos[:, valid]
    step = np.diff(p, axis=0)  # constant rigid drift
    np.testing.assert_allclose(step, np.broadcast_to(step[:1, :1], step.shape), atol=1e-4)
    speed = np.linalg.norm(step[0, 0])
    assert 1.0 - 1e-4 <= speed <= 2.0 + 1e-4
    assert np.all((p >= -0.5) & (p < 47.5))  # valid columns are inside every frame
    r, c = np.round(p[2]).astype(int).T
    assert np.all(movie[2][r, c] > 0.3)
    again = f(KEY)
    np.testing.assert_array_equal(again[0], movie)


def test_noise2atom_clean():
    f = jax.jit(atoms.noise2atom_clean)
    imgs = np.asarray(jax.vmap(f)(_keys(3)))
    assert imgs.shape == (3, 128, 128) and imgs.dtype == np.float32
    assert np.all(imgs.min(axis=(1, 2)) == 0.0) and np.allclose(imgs.max(axis=(1, 2)), 1.0)
    assert not np.array_equal(imgs[0], imgs[1])
    np.testing.assert_allclose(imgs[0], f(_keys(3)[0]), atol=1e-6)
    np.testing.assert_allclose(atoms.noise2atom_clean(_keys(3)[1]), imgs[1], atol=1e-5)  # eager
    with pytest.raises(ValueError, match="canvas"):
        atoms.noise2atom_clean(KEY, size=300)


def test_noise2atom_single_site_matches_kernel():
    # One position, known count: the image is the (normalised) 33×33 Gaussian around it.
    f = jax.jit(functools.partial(atoms.noise2atom_clean, size=256, n_positions=(1, 1)))
    img = np.asarray(f(KEY, variance=(4.0, 4.0)))
    r0, c0 = np.unravel_index(np.argmax(img), img.shape)
    rr, cc = np.mgrid[:256, :256]
    expect = np.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / 8.0)
    expect[(np.abs(rr - r0) > 16) | (np.abs(cc - c0) > 16)] = 0.0
    np.testing.assert_allclose(img, expect, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Graphene
# ---------------------------------------------------------------------------------------------


def test_displacement_coefficient_eq1():
    v = jnp.array([0.5, -1.0, 1.5, -2.0, 2.5, 3.0, 3.5, -4.0])
    expect = [0.1, -0.2, 0.375, -0.5, 2.5 / 3, 1.0, 1.0, -1.0]
    np.testing.assert_allclose(graphene.displacement_coefficient(v), expect, rtol=1e-6)
    c = np.abs(np.asarray(graphene.displacement_coefficient(jax.random.normal(KEY, (200_000,)))))
    assert c.max() <= 1.0
    # Paper: 68.2 % shift < 4 % of the bond (|C| ≤ 0.2), 27.2 % in 5–10 %, 4.6 % in 13.3–20 %.
    assert np.mean(c <= 0.2) == pytest.approx(0.6827, abs=0.005)
    assert np.mean((c > 0.25) & (c <= 0.5)) == pytest.approx(0.2718, abs=0.005)
    assert np.mean(c > 0.66) == pytest.approx(0.0455, abs=0.003)
    assert graphene.MAX_SHIFT == pytest.approx(0.2 * graphene.BOND)


def test_graphene_image_and_combined():
    f = jax.jit(functools.partial(graphene.graphene, size=96))
    a = np.asarray(f(KEY))
    assert a.shape == (96, 96) and a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(a, f(KEY))
    assert not np.array_equal(a, f(jax.random.key(9)))
    # Atom density: 2 atoms per (2.46² · sin 60°) Å², 12 Å × 12 Å at 0.125 Å/px.
    found = metrics.find_atoms(a, min_distance=4, threshold_rel=0.3)
    inner = np.all((found > 8) & (found < 87), axis=1).sum()
    expected = 2 * (79 * 0.125) ** 2 / (graphene.LATTICE**2 * math.sin(math.pi / 3))
    assert inner == pytest.approx(expected, rel=0.25)
    g = jax.jit(functools.partial(graphene.graphene_combined, tiles=3, size=48))
    m = np.asarray(g(KEY))
    assert m.shape == (48, 48) and m.min() == 0.0 and m.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tiles"):
        graphene.graphene_combined(KEY, tiles=0, size=32)


def test_shift_wrap():
    x = np.arange(2 * 20 * 24, dtype=np.float32).reshape(2, 20, 24)
    for d in (8, 10, 12):
        y = np.asarray(graphene.shift_wrap(x, d))
        np.testing.assert_array_equal(y, np.roll(np.roll(x, d, axis=-2), d, axis=-1))
        assert y[0, d, d] == x[0, 0, 0]
    s = graphene.shifted_copies(x[0])
    assert s.shape == (3, 20, 24)


# ---------------------------------------------------------------------------------------------
# STM
# ---------------------------------------------------------------------------------------------


def test_stm_topography():
    f = jax.jit(functools.partial(stm.stm_topography, size=64, kind="random"))
    imgs = np.asarray(jax.vmap(f)(_keys(4)))
    assert imgs.shape == (4, 64, 64) and imgs.dtype == np.float32
    assert np.all(imgs.min(axis=(1, 2)) == 0.0) and np.allclose(imgs.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(imgs[2], f(_keys(4)[2]), atol=1e-5)
    assert not np.array_equal(imgs[0], imgs[1])
    # A flat hexagonal terrace without defects: atoms on a lattice → strong periodic peaks in |FFT|.
    flat = jax.jit(functools.partial(stm.stm_topography, size=64, kind="hex", max_steps=0,
                                     max_adatoms=0, vacancies=(0.0, 0.0)))
    h = np.asarray(flat(KEY))
    spec = np.abs(np.fft.fft2(h - h.mean()))
    spec[0, 0] = 0
    top = np.sort(spec.ravel())[::-1]
    assert top[5] > 10 * np.median(spec)  # six first-order hexagonal reflections stand out
    with pytest.raises(ValueError, match="kind"):
        stm.stm_topography(KEY, kind="triangle")
