"""Losses: hand-computed NumPy references, scikit-image SSIM, jit == eager, shape errors."""
import jax
import numpy as np
import pytest

from jaxdn import losses


def _pair(seed=0, shape=(2, 24, 20)):
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)


def test_mae_mse_charbonnier_match_numpy():
    p, t = _pair()
    np.testing.assert_allclose(losses.mae(p, t), np.mean(np.abs(p - t)), rtol=1e-6)
    np.testing.assert_allclose(losses.mse(p, t), np.mean((p - t) ** 2), rtol=1e-6)
    eps = 1e-3
    np.testing.assert_allclose(losses.charbonnier(p, t, eps=eps), np.mean(np.sqrt((p - t) ** 2 + eps**2) - eps), rtol=1e-5)
    assert float(losses.mae(p, p)) == 0.0


def test_bce_matches_formula_and_logits_version():
    p, t = _pair(1)
    p = np.clip(p, 0.01, 0.99)
    ref = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(losses.bce(p, t), ref, rtol=1e-5)
    logits = np.log(p / (1 - p))
    np.testing.assert_allclose(losses.bce_with_logits(logits, t), ref, rtol=1e-4)


def test_ssim_loss_matches_skimage_gaussian_ssim():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    x = rng.random((40, 36)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    ref = skm.structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
    got = 1.0 - float(losses.ssim_loss(x, y, win_size=11, sigma=1.5))
    assert abs(got - ref) < 2e-4
    assert abs(float(losses.ssim_loss(x, x))) < 1e-6


def test_jit_equals_eager_and_nhwc_accepted():
    p, t = _pair(3, (2, 16, 16, 1))
    for fn in (losses.mae, losses.mse, losses.ssim_loss, losses.mae_ssim):
        np.testing.assert_allclose(jax.jit(fn)(p, t), fn(p, t), rtol=1e-5)


def test_shape_mismatch_raises():
    p, t = _pair()
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.mae(p, t[:1])
