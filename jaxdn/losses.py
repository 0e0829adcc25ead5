"""Loss functions: small pure JAX functions, batched, each returning a scalar mean.

All take `pred, target` of the same shape (any leading axes) unless stated otherwise; images are
(..., H, W) or NHWC (..., H, W, C). Computation in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["mae", "mse", "bce", "bce_with_logits", "charbonnier", "ssim_loss", "mae_ssim"]


def _pair(pred, target):
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs target {target.shape}")
    return pred, target


def mae(pred, target) -> jax.Array:
    """Mean absolute error (L1), the TEM U-Net paper's loss."""
    pred, target = _pair(pred, target)
    return jnp.mean(jnp.abs(pred - target))


def mse(pred, target) -> jax.Array:
    """Mean squared error (L2)."""
    pred, target = _pair(pred, target)
    return jnp.mean(jnp.square(pred - target))


def charbonnier(pred, target, *, eps: float = 1e-3) -> jax.Array:
    """Smooth L1: mean of sqrt((pred − target)² + eps²) − eps (0 at equality)."""
    pred, target = _pair(pred, target)
    return jnp.mean(jnp.sqrt(jnp.square(pred - target) + eps * eps) - eps)


def bce(pred, target, *, eps: float = 1e-7) -> jax.Array:
    """Binary cross-entropy for probabilities `pred` in [0, 1] and targets in [0, 1] (clipped by eps)."""
    pred, target = _pair(pred, target)
    p = jnp.clip(pred, eps, 1.0 - eps)
    return -jnp.mean(target * jnp.log(p) + (1.0 - target) * jnp.log1p(-p))


def bce_with_logits(logits, target) -> jax.Array:
    """Numerically stable binary cross-entropy on logits (sigmoid applied inside)."""
    logits, target = _pair(logits, target)
    return jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def _gauss_window(size: int, sigma: float) -> jax.Array:
    r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    g = jnp.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def _blur(x, g):
    """Separable 'valid' Gaussian filter over the last two axes of (B, H, W)."""
    k = g.shape[0]
    x = x[:, None]  # (B, 1, H, W)
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, k, 1), (1, 1), "VALID")
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, 1, k), (1, 1), "VALID")
    return x[:, 0]


def ssim_loss(pred, target, *, data_range: float = 1.0, win_size: int = 7, sigma: float = 1.5) -> jax.Array:
    """1 − mean SSIM with a Gaussian window (differentiable; for training, not for reporting).

    Args:
      pred, target: (..., H, W) or (..., H, W, 1) images, H, W ≥ win_size.
    """
    pred, target = _pair(pred, target)
    if pred.ndim >= 3 and pred.shape[-1] == 1:
        pred, target = pred[..., 0], target[..., 0]
    lead = pred.shape[:-2]
    x = pred.reshape((-1,) + pred.shape[-2:])
    y = target.reshape((-1,) + target.shape[-2:])
    g = _gauss_window(win_size, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    del lead
    return 1.0 - jnp.mean(s)


def mae_ssim(pred, target, *, alpha: float = 0.84, data_range: float = 1.0) -> jax.Array:
    """α·(1 − SSIM) + (1 − α)·MAE (Zhao et al. 2017 mix, the TEM paper's ref. 35)."""
    return alpha * ssim_loss(pred, target, data_range=data_range) + (1 - alpha) * mae(pred, target)
