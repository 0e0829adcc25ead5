"""Tests for jaxdn.metrics against scikit-image, NumPy/SciPy references and analytic cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jaxdn import metrics


def _pair(seed, shape=(48, 56), structured=False, scale=1.0):
    rng = np.random.default_rng(seed)
    if structured:
        r, c = np.mgrid[: shape[0], : shape[1]]
        ref = 0.5 + 0.4 * np.sin(r / 3.0) * np.cos(c / 5.0)
    else:
        ref = rng.random(shape)
    x = np.clip(ref + 0.1 * rng.standard_normal(shape), 0, 1)
    return (x * scale).astype(np.float32), (ref * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM vs scikit-image
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("structured", [False, True])
def test_psnr_matches_skimage(structured):
    x, ref = _pair(0, structured=structured)
    expect = peak_signal_noise_ratio(ref, x)  # default data_range for float in [0, 1] is 1
    assert float(metrics.psnr(x, ref)) == pytest.approx(expect, abs=1e-4)
    x2, ref2 = _pair(1, structured=structured, scale=300.0)
    expect = peak_signal_noise_ratio(ref2, x2, data_range=300.0)
    assert float(metrics.psnr(x2, ref2, data_range=300.0)) == pytest.approx(expect, abs=1e-4)


def test_psnr_default_range_for_signed_reference():
    x, ref = _pair(2)
    x, ref = x - 0.5, ref - 0.5  # in [-1, 1]: skimage uses data_range 2
    assert float(metrics.psnr(x, ref)) == pytest.approx(peak_signal_noise_ratio(ref, x), abs=1e-4)


@pytest.mark.parametrize("structured", [False, True])
def test_ssim_matches_skimage(structured):
    x, ref = _pair(3, structured=structured)
    expect = structural_similarity(x, ref, data_range=1.0)
    assert float(metrics.ssim(x, ref)) == pytest.approx(expect, abs=1e-4)
    assert float(metrics.ssim(x, ref, data_range=1.0)) == pytest.approx(expect, abs=1e-4)


def test_ssim_matches_skimage_explicit_range_and_window():
    x, ref = _pair(4, shape=(40, 33), structured=True, scale=1000.0)
    for dr in (1000.0, 1500.0):
        expect = structural_similarity(x, ref, data_range=dr)
        assert float(metrics.ssim(x, ref, data_range=dr)) == pytest.approx(expect, abs=1e-4)
    expect = structural_similarity(x, ref, data_range=1000.0, win_size=11)
    got = metrics.ssim(x, ref, data_range=1000.0, win_size=11)
    assert float(got) == pytest.approx(expect, abs=1e-4)


def test_ssim_psnr_batched_and_jit():
    pairs = [_pair(s, shape=(24, 24), structured=bool(s % 2)) for s in range(6)]
    x = np.stack([p[0] for p in pairs]).reshape(2, 3, 24, 24)
    ref = np.stack([p[1] for p in pairs]).reshape(2, 3, 24, 24)
    s = metrics.ssim(x, ref)
    p = jax.jit(metrics.psnr)(x, ref)
    assert s.shape == p.shape == (2, 3)
    assert s.dtype == p.dtype == jnp.float32
    for i, (xi, ri) in enumerate(pairs):
        assert float(s.reshape(-1)[i]) == pytest.approx(structural_similarity(xi, ri, data_range=1.0), abs=1e-4)
        assert float(p.reshape(-1)[i]) == pytest.approx(peak_signal_noise_ratio(ri, xi), abs=1e-4)
    np.testing.assert_allclose(jax.jit(metrics.ssim)(x, ref), s, atol=1e-6)


def test_ssim_identical_is_one_and_psnr_inf():
    _, ref = _pair(5)
    assert float(metrics.ssim(ref, ref)) == pytest.approx(1.0, abs=1e-6)
    assert np.isinf(float(metrics.psnr(ref, ref)))


def test_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="win_size"):
        metrics.ssim(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="too small"):
        metrics.ms_ssim(np.zeros((32, 32)), np.zeros((32, 32)))
    with pytest.raises(ValueError, match="T >= 2"):
        metrics.css(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.ief(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5)))


# ---------------------------------------------------------------------------------------------
# MS-SSIM vs an independent NumPy/SciPy reference
# ---------------------------------------------------------------------------------------------


def _ms_ssim_reference(x, y, data_range=1.0):
    """Wang et al. 2003 with scipy.signal.correlate2d; float64."""
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    out = 1.0
    for j, w in enumerate(weights):
        side = min(x.shape)
        win = min(11, side if side % 2 else side - 1)
        r = np.arange(win) - (win - 1) / 2
        g = np.exp(-(r**2) / (2 * 1.5**2))
        k = np.outer(g, g)
        k /= k.sum()
        f = lambda a: signal.correlate2d(a, k, mode="valid")
        mx, my = f(x), f(y)
        vx, vy, vxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        cs = np.mean((2 * vxy + c2) / (vx + vy + c2))
        out *= max(cs, 0.0) ** w
        if j == len(weights) - 1:
            lum = np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1))
            out *= max(lum, 0.0) ** w
        else:
            h, wd = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x = x[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
            y = y[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
    return out


@pytest.mark.parametrize("shape,structured", [((192, 200), True), ((180, 181), False), ((128, 128), True)])
def test_ms_ssim_matches_reference(shape, structured):
    x, ref = _pair(6, shape=shape, structured=structured)
    expect = _ms_ssim_reference(x, ref)
    assert float(metrics.ms_ssim(x, ref)) == pytest.approx(expect, abs=1e-4)


def test_ms_ssim_identical_batched_and_range():
    x, ref = _pair(7, shape=(96, 96), structured=True)
    out = metrics.ms_ssim(np.stack([ref, x]), np.stack([ref, ref]))
    assert out.shape == (2,)
    assert float(out[0]) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < float(out[1]) < 1.0
    scaled = metrics.ms_ssim(x * 50, ref * 50, data_range=50.0)
    assert float(scaled) == pytest.approx(float(out[1]), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# CSS, IEF
# ---------------------------------------------------------------------------------------------


def test_css_analytic_and_reference():
    rng = np.random.default_rng(8)
    frame = rng.random((16, 20)).astype(np.float32)
    same = np.stack([frame] * 4)
    np.testing.assert_allclose(metrics.css(same), np.ones(3), atol=1e-6)
    const = np.full((3, 16, 20), 0.37, np.float32)  # the paper's caveat: constant output scores 1
    np.testing.assert_allclose(metrics.css(const), np.ones(2), atol=1e-6)
    movie = rng.random((5, 16, 20)).astype(np.float64)
    expect = []
    for a, b in zip(movie[:-1], movie[1:]):
        ea, eb = a.mean(), b.mean()
        cov = np.mean((a - ea) * (b - eb))
        expect.append((2 * ea * eb + 1e-4) * (2 * cov + 9e-4)
                      / ((ea**2 + eb**2 + 1e-4) * (a.var() + b.var() + 9e-4)))
    got = metrics.css(movie)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expect, atol=1e-5)
    batched = jax.jit(metrics.css)(np.stack([movie, movie[::-1]]))
    assert batched.shape == (2, 4)
    np.testing.assert_allclose(batched[1], np.asarray(expect)[::-1], atol=1e-5)


def test_ief_and_edited_ief():
    clean = np.zeros((4, 4), np.float32)
    noisy = np.full((4, 4), 0.4, np.float32)  # Σ err² = 16·0.16
    den = np.full((4, 4), 0.1, np.float32)  # Σ err² = 16·0.01
    assert float(metrics.ief(noisy, den, clean)) == pytest.approx(16.0, rel=1e-5)
    assert float(metrics.edited_ief(noisy, den, clean, alpha=3)) == pytest.approx(16.0 / 0.64**3, rel=1e-5)
    assert float(metrics.edited_ief(noisy, den, clean, alpha=2, c=0.5)) == pytest.approx(64.0, rel=1e-5)
    out = jax.jit(lambda a, b, c: metrics.edited_ief(a, b, c, alpha=jnp.arange(3)))(
        np.stack([noisy] * 3), np.stack([den] * 3), np.stack([clean] * 3))
    np.testing.assert_allclose(out, 16.0 / 0.64 ** np.arange(3), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Atom finding
# ---------------------------------------------------------------------------------------------


def test_atom_f1_hand_built():
    truth = np.array([[10, 10], [10, 20], [20, 10], [20, 20]], float)
    found = np.array([[10.5, 10.5], [11, 19], [20, 11.9], [30, 30], [10.2, 19.8]])
    # [10.5,10.5]→t0 (0.71), [11,19]/[10.2,19.8] compete for t1 (one-to-one), [20,11.9]→t2 (1.9),
    # [30,30] unmatched; t3 missed.
    p, r, f = metrics.atom_f1(found, truth, tolerance=2.0)
    assert p == pytest.approx(3 / 5) and r == pytest.approx(3 / 4)
    assert f == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    p, r, f = metrics.atom_f1(found, truth, tolerance=1.0)  # 1.9 px no longer matches
    assert (p, r) == (pytest.approx(2 / 5), pytest.approx(2 / 4))
    assert metrics.atom_f1(np.zeros((0, 2)), np.zeros((0, 2))) == (1.0, 1.0, 1.0)
    assert metrics.atom_f1(np.zeros((0, 2)), truth) == (0.0, 0.0, 0.0)
    assert metrics.atom_f1(truth, np.zeros((0, 2))) == (0.0, 0.0, 0.0)


def test_atom_f1_prefers_more_matches_over_greedy():
    # Greedy nearest-first would pair f0-t1 (0.5) and leave f1 unmatched; optimal pairs both.
    truth = np.array([[0.0, 0.0], [0.0, 1.5]])
    found = np.array([[0.0, 1.0], [0.0, 2.9]])
    assert metrics.atom_f1(found, truth, tolerance=1.5)[2] == pytest.approx(1.0)


def test_find_atoms_on_known_gaussians():
    rng = np.random.default_rng(9)
    r, c = np.mgrid[:40, :40]
    truth = np.array([[8.3, 9.6], [8.0, 30.2], [20.4, 20.1], [31.7, 7.9], [30.5, 31.0]])
    img = sum(np.exp(-((r - y) ** 2 + (c - x) ** 2) / (2 * 1.8**2)) for y, x in truth)
    img = img + 0.02 * rng.standard_normal(img.shape)
    found = metrics.find_atoms(img, min_distance=3, threshold_rel=0.3)
    assert found.shape == (5, 2)
    p, rc, f = metrics.atom_f1(found, truth, tolerance=0.5)
    assert f == 1.0
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        metrics.find_atoms(np.zeros((2, 8, 8)))

def _blobs(centres, shape=(64, 64), sigma=1.6):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return sum(np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma ** 2)) for r, c in centres)


def test_column_consistency_drifting_lattice_random_and_constant():
    from jaxdn.metrics import column_consistency
    base = np.stack(np.meshgrid(np.arange(6, 60, 9.0), np.arange(6, 60, 9.0), indexing="ij"), -1).reshape(-1, 2)
    drift = np.array([[0.0, 0.0], [1.2, 0.7], [2.4, 1.4], [3.6, 2.1]])
    lattice = np.stack([_blobs(base + d) for d in drift])
    r = column_consistency(lattice)
    assert r["f1"] > 0.97 and abs(r["columns_per_frame"] - len(base)) <= 4
    rng = np.random.default_rng(0)
    random = np.stack([_blobs(rng.uniform(4, 60, (len(base), 2))) for _ in range(4)])
    assert column_consistency(random)["f1"] < 0.4
    # a rigid 4.5-px jump between frames 1 and 2 is registered as drift: still consistent
    jumped = lattice.copy()
    jumped[2:] = np.stack([_blobs(base + d + [4.5, 0.0]) for d in drift[2:]])
    assert column_consistency(jumped)["f1"] == pytest.approx(r["f1"], abs=0.05)
    # every other frame shows half the columns: F1 = 2·(1/2)/(1 + 1/2) = 2/3 for every pair
    alternating = np.stack([_blobs(base if t % 2 == 0 else base[::2]) for t in range(4)])
    assert column_consistency(alternating)["f1"] == pytest.approx(2 / 3, abs=0.03)
    # a constant output has no columns: 0, not 1 (CSS would give it 1)
    assert column_consistency(np.ones((3, 64, 64))) == {"f1": 0.0, "columns_per_frame": 0.0}
    with pytest.raises(ValueError, match="T >= 2"):
        column_consistency(lattice[:1])
