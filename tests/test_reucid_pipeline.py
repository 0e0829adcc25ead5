"""REUCID pipeline: fast path == faithful path, terrain, PSF, stacks, bad input, determinism."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from scipy import special

from jaxdn.errors import InputError
from jaxdn.reucid import patches, pipeline as pl, psf, rsvd, terrain

H, W, P = 64, 80, 7


def _lattice(h, w, *, spacing=9.0, sigma=1.6, angle=0.3, offset=0.1):
    """Clean Gaussian-blob lattice rendered in NumPy (independent of jaxdn.simulate)."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((h, w))
    for i in range(-12, 13):
        for j in range(-12, 13):
            cy = h / 2 + spacing * (i * c - j * s)
            cx = w / 2 + spacing * (i * s + j * c)
            out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return (offset + out / out.max()).astype(np.float32)


@pytest.fixture(scope="module")
def noisy():
    rng = np.random.default_rng(0)
    clean = _lattice(H, W)
    return (rng.poisson(40 * clean) / 40.0 + rng.normal(0, 0.03, clean.shape)).astype(np.float32)


def _brute_terrain(mask, p, shape):
    t = np.zeros(shape)
    for i, j in zip(*np.nonzero(mask)):
        t[i:i + p, j:j + p] += 1
    return t


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,p,frac", [((13, 17), 4, 0.5), ((20, 20), 7, 0.3), ((9, 30), 1, 0.7)])
def test_terrain_matches_brute_force(shape, p, frac):
    rng = np.random.default_rng(1)
    mask = rng.random((shape[0] - p + 1, shape[1] - p + 1)) < frac
    np.testing.assert_array_equal(np.asarray(terrain.patch_terrain(mask, p, shape)), _brute_terrain(mask, p, shape))


def test_extract_and_fold_are_adjoint():
    rng = np.random.default_rng(2)
    x = rng.random((11, 13)).astype(np.float32)
    pat = np.asarray(patches.extract(x, 3))
    ref = np.lib.stride_tricks.sliding_window_view(x, (3, 3)).reshape(-1, 9)
    np.testing.assert_allclose(pat, ref, rtol=0, atol=0)
    y = rng.random(pat.shape).astype(np.float32)
    lhs = float(np.sum(pat * y))
    rhs = float(np.sum(x * np.asarray(patches.fold(y, x.shape, 3))))
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)


def test_labels_and_budget():
    lab = np.asarray(patches.stack_labels(jax.random.PRNGKey(0), (H, W), P, 4))
    assert lab.shape == (H - P + 1, W - P + 1) and lab.dtype == np.int32
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(lab, np.asarray(patches.stack_labels(jax.random.PRNGKey(0), (H, W), P, 4)))
    assert not np.array_equal(lab, np.asarray(patches.stack_labels(jax.random.PRNGKey(1), (H, W), P, 4)))
    need = (H - P + 1) * (W - P + 1) * P * P * 4
    assert patches.n_stacks_for_budget((H, W), P, memory_budget_bytes=need) == 1
    assert patches.n_stacks_for_budget((H, W), P, memory_budget_bytes=need - 1) == 2
    assert patches.n_stacks_for_budget((H, W), P, memory_budget_bytes=need // 5) == 6
    assert patches.n_stacks_for_budget((4096, 4096), 11) >= 1


def test_randomized_svd_matches_exact_on_low_rank():
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((500, 6)) * [50, 20, 10, 5, 2, 1]) @ rng.standard_normal((6, 40))
    a = (a + 1e-3 * rng.standard_normal(a.shape)).astype(np.float32)
    u, s, vt = rsvd.randomized_svd(jax.random.PRNGKey(0), a, rank=5)
    s_ref = np.linalg.svd(a.astype(np.float64), compute_uv=False)[:5]
    np.testing.assert_allclose(np.asarray(s), s_ref, rtol=1e-4)
    assert u.shape == (500, 5) and vt.shape == (5, 40)
    np.testing.assert_allclose(np.asarray(vt @ vt.T), np.eye(5), atol=1e-5)


def test_keep_count_rule():
    probs = jnp.array([[0.9, 0.8, 0.4, 0.9], [0.1, 0.9, 0.9, 0.9], [0.6, 0.6, 0.6, 0.6], [0.9, 0.5, 0.49, 0.0]])
    np.testing.assert_array_equal(np.asarray(pl.keep_count(probs)), [2, 1, 4, 2])


# --------------------------------------------------------------------------------------------
# fast path == faithful path
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 3])
def test_gram_matches_patch_matrix(noisy, d):
    lab = patches.stack_labels(jax.random.PRNGKey(5), (H, W), P, d)
    g = np.asarray(pl.gram_matrices(noisy, lab, patch_size=P, n_stacks=d), np.float64)
    x = np.lib.stride_tricks.sliding_window_view(noisy.astype(np.float64), (P, P)).reshape(-1, P * P)
    l = np.asarray(lab).ravel()
    ref = np.stack([x[l == s].T @ x[l == s] for s in range(d)])
    np.testing.assert_allclose(g, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("d", [1, 3])
def test_fast_equals_faithful(noisy, d):
    lab = patches.stack_labels(jax.random.PRNGKey(7), (H, W), P, d)
    fast = pl.decompose(noisy, patch_size=P, labels=lab, n_stacks=d, rank=12, path="fast")
    exact = pl.decompose(noisy, patch_size=P, labels=lab, n_stacks=d, rank=12, path="faithful", svd="exact")
    rand = pl.decompose(noisy, patch_size=P, labels=lab, n_stacks=d, rank=12, path="faithful")
    assert fast.eigenpatches.shape == (d, 12, P, P) and fast.singular_values.shape == (d, 12)
    sv = np.asarray(fast.singular_values)
    assert np.all(np.diff(sv, axis=1) <= 1e-6 * sv[:, :1])
    np.testing.assert_allclose(sv, np.asarray(exact.singular_values), rtol=0, atol=1e-5 * sv.max())
    # The randomized SVD converges on the leading components.
    np.testing.assert_allclose(np.asarray(rand.singular_values)[:, :4], sv[:, :4], rtol=1e-4)
    # Same sign convention: leading eigenpatches agree elementwise, not just up to sign.
    np.testing.assert_allclose(np.asarray(fast.eigenpatches[:, :3]), np.asarray(exact.eigenpatches[:, :3]), atol=1e-3)
    rng_ = float(noisy.max() - noisy.min())
    for k in (1, 3, 6):
        nk = jnp.full((d,), k)
        a = np.asarray(pl.reconstruct(noisy, fast, nk, path="fast"))
        b = np.asarray(pl.reconstruct(noisy, exact, nk, path="faithful"))
        c = np.asarray(pl.reconstruct(noisy, fast, nk, path="faithful"))
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5 * rng_)   # same eigenpatches, both operators
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * rng_)   # whole pipelines
        if k <= 3:
            r = np.asarray(pl.reconstruct(noisy, rand, nk, path="faithful"))
            np.testing.assert_allclose(a, r, rtol=0, atol=1e-3 * rng_)
    if d == 1:  # keeping all p² components reproduces the input (the projector is the identity)
        full = pl.decompose(noisy, patch_size=3, labels=patches.stack_labels(jax.random.PRNGKey(7), (H, W), 3, 1),
                            n_stacks=1, rank=12)
        np.testing.assert_allclose(np.asarray(pl.reconstruct(noisy, full, jnp.array([9]))), noisy, atol=1e-4 * rng_)


def test_reconstruct_each_rank_is_cumulative(noisy):
    for d in (1, 3):
        lab = patches.stack_labels(jax.random.PRNGKey(9), (H, W), P, d)
        dec = pl.decompose(noisy, patch_size=P, labels=lab, n_stacks=d, rank=12)
        each = np.asarray(pl.reconstruct_each_rank(noisy, dec, max_rank=5))
        assert each.shape == (5, H, W)
        for k in (0, 2, 4):
            np.testing.assert_allclose(each[k], np.asarray(pl.reconstruct(noisy, dec, jnp.full((d,), k + 1))),
                                       atol=1e-5)


def test_max_stacks_gives_valid_interim_result(noisy):
    d = 3
    lab = patches.stack_labels(jax.random.PRNGKey(11), (H, W), P, d)
    dec = pl.decompose(noisy, patch_size=P, labels=lab, n_stacks=d, rank=12)
    nk = jnp.full((d,), 4)
    for path in ("fast", "faithful"):
        one = np.asarray(pl.reconstruct(noisy, dec, nk, max_stacks=1, path=path))
        assert np.isfinite(one).all()
        t = _brute_terrain(np.asarray(lab) < 1, P, (H, W))
        np.testing.assert_array_equal(one[t == 0], noisy[t == 0])
        assert np.abs(one - np.asarray(pl.reconstruct(noisy, dec, nk, path=path))).max() > 1e-4
        np.testing.assert_array_equal(np.asarray(pl.reconstruct(noisy, dec, nk, max_stacks=0, path=path)), noisy)
    a = np.asarray(pl.reconstruct(noisy, dec, nk, max_stacks=2))
    b = np.asarray(pl.reconstruct(noisy, dec, nk, max_stacks=2, path="faithful"))
    np.testing.assert_allclose(a, b, atol=1e-5 * float(noisy.max() - noisy.min()))


def test_reconstruct_traced_once_for_new_n_keep(noisy):
    lab = patches.stack_labels(jax.random.PRNGKey(0), (H, W), P, 1)
    dec = pl.decompose(noisy, patch_size=P, labels=lab, n_stacks=1, rank=12)
    pl.reconstruct(noisy, dec, jnp.array([3]))
    before = pl._reconstruct._cache_size()
    out2 = pl.reconstruct(noisy, dec, jnp.array([5]))
    out3 = pl.reconstruct(noisy, dec, jnp.array([7]), max_stacks=1)
    assert pl._reconstruct._cache_size() == before
    assert np.abs(np.asarray(out2) - np.asarray(out3)).max() > 0


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------

def test_denoise_reduces_noise_and_is_deterministic():
    rng = np.random.default_rng(4)
    clean = _lattice(H, W)
    noisy = (rng.poisson(30 * clean) / 30.0).astype(np.float32)
    a = pl.denoise(noisy, n_keep=6, patch_size=P, seed=3, rank=12)
    assert a.shape == noisy.shape and a.dtype == np.float32
    assert np.mean((a - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    np.testing.assert_array_equal(a, pl.denoise(noisy, n_keep=6, patch_size=P, seed=3, rank=12))
    b1 = pl.denoise(noisy, n_keep=6, patch_size=P, seed=3, n_stacks=3, rank=12)
    np.testing.assert_array_equal(b1, pl.denoise(noisy, n_keep=6, patch_size=P, seed=3, n_stacks=3, rank=12))
    assert np.abs(b1 - pl.denoise(noisy, n_keep=6, patch_size=P, seed=4, n_stacks=3, rank=12)).max() > 0
    # The faithful path with the same labels agrees with the fast one.
    c = pl.denoise(noisy, n_keep=3, patch_size=P, seed=3, n_stacks=3, path="faithful", rank=12)
    np.testing.assert_allclose(c, pl.denoise(noisy, n_keep=3, patch_size=P, seed=3, n_stacks=3, path="fast", rank=12),
                               atol=1e-3 * float(noisy.max() - noisy.min()))


def test_classifier_is_used_in_rank_order(noisy):
    seen = {}

    def clf(pv, ev):
        seen["shapes"] = (pv.shape, ev.shape)
        assert np.isclose(float(jnp.max(ev)), 1.0) and float(jnp.min(ev)) >= 0
        probs = np.zeros(ev.shape[:-1], np.float32)
        probs[:, :4] = 1.0
        probs[:, 6] = 1.0  # a kept component after a dropped one is ignored (rank-order rule)
        return probs

    out = pl.denoise(noisy, classifier=clf, patch_size=P, n_stacks=3, rank=12)
    assert seen["shapes"] == ((3, 12, 25, 25, 1), (3, 12, 1))
    np.testing.assert_allclose(out, pl.denoise(noisy, n_keep=4, patch_size=P, n_stacks=3, rank=12), atol=1e-6)


def test_stack_equals_frame_loop(noisy):
    frames = np.stack([noisy, noisy[::-1], 0.5 * noisy + 0.1])
    out = pl.denoise(frames, n_keep=5, patch_size=P, n_stacks=3, seed=1, rank=12)
    ref = np.stack([pl.denoise(f, n_keep=5, patch_size=P, n_stacks=3, seed=1, rank=12) for f in frames])
    np.testing.assert_allclose(out, ref, atol=1e-4 * float(noisy.max() - noisy.min()))


def test_constant_small_and_nonfinite_input(noisy):
    const = np.full((H, W), 3.5, np.float32)
    np.testing.assert_array_equal(pl.denoise(const, n_keep=3), const)
    np.testing.assert_array_equal(pl.denoise(np.zeros((H, W), np.float32)), np.zeros((H, W), np.float32))
    mixed = np.stack([const, noisy])
    out = pl.denoise(mixed, n_keep=3, patch_size=P)
    np.testing.assert_array_equal(out[0], const)
    assert np.isfinite(out).all()
    with pytest.raises(InputError, match="at least 22x22"):
        pl.denoise(noisy[:20, :30], patch_size=11, n_keep=2)
    with pytest.raises(InputError, match="odd"):
        pl.denoise(noisy, patch_size=8, n_keep=2)
    with pytest.raises(InputError):
        pl.denoise(np.ones((8, 8), np.float32))
    bad = noisy.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pl.denoise(bad, n_keep=2)


def test_method_entry_point(noisy):
    from jaxdn import api
    out = api.denoise(noisy, method="reucid", n_keep=4, patch_size=P)
    assert out.shape == noisy.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, pl.denoise(noisy, n_keep=4, patch_size=P))
    with pytest.raises(InputError, match="bogus"):
        api.denoise(noisy, method="reucid", n_keep=4, patch_size=P, bogus=1)


# --------------------------------------------------------------------------------------------
# PSF → patch size
# --------------------------------------------------------------------------------------------

def _numpy_acf_width(img):
    """Independent reference: circular ACF with fftshift, radial mean by np.hypot, first minimum."""
    x = img - img.mean()
    f = np.fft.fft2(x)
    acf = np.fft.fftshift(np.real(np.fft.ifft2(f * np.conj(f))))
    cy, cx = np.array(acf.shape) // 2
    yy, xx = np.indices(acf.shape)
    r = np.rint(np.hypot(yy - cy, xx - cx)).astype(int)
    prof = np.bincount(r.ravel(), acf.ravel()) / np.bincount(r.ravel())
    r_min = next(k for k in range(1, len(prof) - 1) if prof[k] < prof[k - 1] and prof[k] <= prof[k + 1])
    return r_min


@pytest.mark.parametrize("spacing,sigma", [(8.0, 1.5), (12.0, 2.0), (16.0, 3.0)])
def test_psf_on_lattices_matches_numpy_reference(spacing, sigma):
    img = _lattice(128, 128, spacing=spacing, sigma=sigma, angle=0.2)
    p = psf.estimate_patch_size(img)
    assert p % 2 == 1 and 5 <= p <= 31
    assert abs(p - 2 * _numpy_acf_width(img)) <= 2
    assert spacing / 2 < p < 1.5 * spacing + 2


def test_psf_analytic_cases():
    # A cosine grating: the radial average of its ACF is J0(2π r / a); first minimum at j1,1 a / 2π.
    a = 20.0
    xx = np.arange(256)[None, :] * np.ones((256, 1))
    grating = np.cos(2 * np.pi * xx / a).astype(np.float32)
    width, kind = psf.acf_width(psf.acf_radial(grating)[1])
    assert kind == "minimum"
    assert abs(width - 2 * special.jn_zeros(1, 1)[0] * a / (2 * np.pi)) < 3.0  # integer radial bins
    # One Gaussian blob (aperiodic): ACF is a Gaussian of std σ√2, inflection at σ√2, width 2σ√2.
    sigma = 3.0
    yy, xx = np.mgrid[:128, :128]
    blob = np.exp(-((yy - 64.0) ** 2 + (xx - 64.0) ** 2) / (2 * sigma**2)).astype(np.float32)
    width, kind = psf.acf_width(psf.acf_radial(blob)[1])
    assert kind == "inflection"
    assert abs(width - 2 * np.sqrt(2) * sigma) < 1.0
    assert psf.estimate_patch_size(blob) in (7, 9)
    assert psf.estimate_patch_size(np.ones((64, 64), np.float32)) == 5
    assert psf.estimate_patch_size(grating, max_size=7) == 7


def test_patch_size_override_and_estimate(noisy):
    lab = patches.stack_labels(jax.random.PRNGKey(0), (H, W), 9, 1)
    dec = pl.decompose(noisy, patch_size=9, labels=lab, n_stacks=1)
    ref = np.asarray(pl.reconstruct(noisy, dec, jnp.array([4])))
    np.testing.assert_allclose(pl.denoise(noisy, n_keep=4, patch_size=9), ref, atol=1e-6)
    p_est = psf.estimate_patch_size(noisy)
    np.testing.assert_allclose(pl.denoise(noisy, n_keep=4), pl.denoise(noisy, n_keep=4, patch_size=p_est), atol=1e-6)
