"""REUCID classifier labels: edited IEF, α*, augmentation, curves on an analytic low-rank image."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from jaxdn import metrics  # noqa: E402
from jaxdn.reucid import labels as L  # noqa: E402


def test_edited_ief_scores_hand_computed():
    ief = np.array([2.0, 3.0, 2.5], np.float32)
    got = np.asarray(L.edited_ief_scores(ief, c=0.64))
    want = np.array([2.0 / 0.64, 3.0 / 0.64**2, 2.5 / 0.64**3])  # 3.125, 7.32421875, 9.5367431640625
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # c < 1 rewards more components: α* = 3 although the IEF itself peaks at α = 2.
    assert int(L.alpha_star(ief=ief, metric="edited_ief", c=0.64)) == 3
    assert int(L.alpha_star(ief=ief, metric="edited_ief", c=1.0)) == 2
    # c > 1 penalises them: 2/1.5625 = 1.28 > 3/1.5625² = 1.2288 > 2.5/1.5625³ = 0.655.
    assert int(L.alpha_star(ief=ief, metric="edited_ief", c=1 / 0.64)) == 1


def test_edited_ief_scores_match_metrics_on_images():
    rng = np.random.default_rng(0)
    clean = rng.uniform(size=(16, 16)).astype(np.float32)
    noisy = clean + 0.2 * rng.normal(size=clean.shape).astype(np.float32)
    dens = np.stack([clean + s * rng.normal(size=clean.shape) for s in (0.15, 0.1, 0.12)]).astype(np.float32)
    ief = metrics.ief(np.broadcast_to(noisy, dens.shape), dens, np.broadcast_to(clean, dens.shape))
    got = np.asarray(L.edited_ief_scores(ief, c=0.64))
    want = [float(metrics.edited_ief(noisy, dens[a], clean, alpha=a + 1, c=0.64)) for a in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_psnr_alpha_star_equals_unedited_ief_alpha_star():
    rng = np.random.default_rng(1)
    ief = rng.uniform(1, 5, size=(4, 2, 25)).astype(np.float32)
    psnr = 10 * np.log10(ief) + 17.0  # PSNR(α) = 10 log10 IEF(α) + const
    a_psnr = np.asarray(L.alpha_star(psnr=psnr, metric="psnr"))
    a_ief = np.asarray(L.alpha_star(ief=ief, metric="edited_ief", c=1.0))
    np.testing.assert_array_equal(a_psnr, a_ief)
    np.testing.assert_array_equal(a_psnr, ief.argmax(-1) + 1)
    assert a_psnr.shape == (4, 2) and a_psnr.dtype == np.int32


def test_alpha_star_errors():
    with pytest.raises(ValueError, match="unknown label metric"):
        L.alpha_star(psnr=np.zeros(3), metric="ssim")
    with pytest.raises(ValueError, match="needs the ief"):
        L.alpha_star(psnr=np.zeros(3), metric="edited_ief")


def test_useful_labels_leading_run():
    y = np.asarray(L.useful_labels(np.array([1, 3, 5]), 5))
    np.testing.assert_array_equal(y, [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def test_augment8_gives_the_8_distinct_orientations():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 25, 25, 1)).astype(np.float32)
    a = np.asarray(L.augment8(x))
    assert a.shape == (8, 3, 25, 25, 1)
    np.testing.assert_array_equal(a[0], x)
    flat = a.reshape(8, -1)
    assert len({row.tobytes() for row in flat}) == 8
    # Independent reference: NumPy's rot90 / fliplr of one patch.
    p = x[0, :, :, 0]
    ref = [np.rot90(p, k) for k in range(4)] + [np.rot90(np.fliplr(p), k) for k in range(4)]
    for k in range(8):
        np.testing.assert_array_equal(a[k, 0, :, :, 0], ref[k])
    # Closed under the group: rotating any orientation gives another one of the 8.
    rotated = np.rot90(a[5, 0, :, :, 0])
    assert any(np.array_equal(rotated, a[k, 0, :, :, 0]) for k in range(8))


def test_curves_on_low_rank_image():
    """Stripes 0.5 + 0.25 cos(2πx/8): every patch lies in span{1, cos, sin} (rank 3).

    With Gaussian noise the PSNR-optimal truncation keeps about 3 components, the PSNR curve
    peaks there, and the paper's edited IEF (c = 0.64) pushes α* far beyond it.
    """
    from jaxdn.reucid import patches
    h = w = 40
    x = np.arange(w)
    clean = np.broadcast_to(0.5 + 0.25 * np.cos(2 * np.pi * x / 8), (h, w)).astype(np.float32)
    noisy = clean + 0.1 * np.random.default_rng(3).normal(size=(h, w)).astype(np.float32)
    p = 7
    labels = patches.stack_labels(jax.random.key(0), (h, w), p, 1)
    out = L.label_curves(clean, noisy, patch_size=p, labels=labels, n_stacks=1, rank=25)
    assert out["psnr"].shape == (1, 25) and out["ief"].shape == (1, 25)
    assert out["patches"].shape == (1, 25, 25, 25, 1) and out["eigvals"].shape == (1, 25, 1)
    ev = np.asarray(out["eigvals"])[0, :, 0]
    assert ev[0] == pytest.approx(1.0) and np.all(np.diff(ev) <= 1e-6)
    a_psnr = int(L.alpha_star(psnr=out["psnr"], metric="psnr")[0])
    a_edit = int(L.alpha_star(ief=out["ief"], metric="edited_ief", c=0.64)[0])
    assert 2 <= a_psnr <= 4
    assert a_edit > a_psnr + 5
    # The curves are the metrics of the reconstructions: α = R reproduces almost the noisy image.
    psnr_noisy = float(metrics.psnr(noisy, clean, data_range=1.0))
    assert float(out["psnr"][0, a_psnr - 1]) > psnr_noisy + 5
    np.testing.assert_allclose(np.asarray(out["ief"][0]),
                               10 ** ((np.asarray(out["psnr"][0]) - psnr_noisy) / 10), rtol=1e-3)


def test_simulate_pair_scale_and_determinism():
    k = jax.random.key(4)
    c1, z1 = L.simulate_pair(k, 1e6, kind="blobs", size=64)
    c2, z2 = L.simulate_pair(k, 1e6, kind="blobs", size=64)
    np.testing.assert_array_equal(np.asarray(z1), np.asarray(z2))
    assert c1.shape == z1.shape == (64, 64) and z1.dtype == jnp.float32
    assert 0.0 <= float(c1.min()) and float(c1.max()) <= 1.0
    # Normalised by dose·px²: at a huge dose the noisy image is the clean image (up to 5 % read noise).
    assert float(metrics.psnr(z1, c1, data_range=1.0)) > 24
    _, zlow = L.simulate_pair(k, 20.0, kind="blobs", size=64)
    assert float(metrics.psnr(zlow, c1, data_range=1.0)) < float(metrics.psnr(z1, c1, data_range=1.0)) - 3
    with pytest.raises(ValueError, match="unknown image kind"):
        L.simulate_clean(k, kind="nope", size=8)
