"""The TEM-denoising U-Net of Chae et al. ("CNN-based TEM image denoising from first principles").

Architecture (paper §II.G; Keras original): two down blocks, a bottleneck, two up blocks. Every
block is 2 × [conv 3×3 ("same") → ReLU → BatchNorm]; down blocks end in a 2×2 max-pool, up blocks
start with a nearest-neighbour 2× upsampling (Keras `UpSampling2D`) and concatenate the skip
connection of the same resolution. A 1×1 convolution maps to one channel and a ReLU keeps the
output non-negative. The paper does not print channel widths; we use the usual U-Net doubling
32 → 64 → 128 (bottleneck) (≈ 0.47 M parameters; the value is a constructor argument).

Layout is NHWC. Inputs of any size are reflect-padded to a multiple of 4 and cropped back.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["UNet", "ConvBlock", "pad_to_multiple", "conv3x3_im2col"]


def pad_to_multiple(x: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
    """Reflect-pad the H, W axes of NHWC `x` up to a multiple of `multiple`; returns (x, (H, W))."""
    h, w = x.shape[1], x.shape[2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (h > ph and w > pw) else "edge"
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
    return x, (h, w)


def conv3x3_im2col(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """A 'same' 3×3 convolution written as 9 shifted copies and one matmul (im2col).

    XLA's CPU convolution is slow when the input has one (or very few) channels; stacking the
    nine shifted views into a (N, H, W, 9·C) array and contracting with the (9·C, F) kernel is
    a plain matmul and several times faster there. Same result as `nnx.Conv(..., padding="SAME")`.

    Args:
      x: (N, H, W, C).
      kernel: (3, 3, C, F) as stored by `nnx.Conv`.
      bias: (F,) or None.
    Returns:
      (N, H, W, F).
    """
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    y = jnp.einsum("nhwk,kf->nhwf", cols, kernel.reshape(9 * c, -1).astype(cols.dtype))
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


class ConvBlock(nnx.Module):
    """2 × [conv 3×3 → ReLU → BatchNorm] (the paper's building block). NHWC in, NHWC out."""

    def __init__(self, in_features: int, features: int, *, compute_dtype=None, bn_momentum: float = 0.9,
                 first_im2col: bool = False, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_features, features, (3, 3), padding="SAME", dtype=compute_dtype, rngs=rngs)
        self.bn1 = nnx.BatchNorm(features, momentum=bn_momentum, epsilon=1e-3, dtype=compute_dtype, rngs=rngs)
        self.conv2 = nnx.Conv(features, features, (3, 3), padding="SAME", dtype=compute_dtype, rngs=rngs)
        self.bn2 = nnx.BatchNorm(features, momentum=bn_momentum, epsilon=1e-3, dtype=compute_dtype, rngs=rngs)
        self.first_im2col = first_im2col
        self.compute_dtype = compute_dtype

    def __call__(self, x):
        if self.first_im2col:
            dt = self.compute_dtype or x.dtype
            y = conv3x3_im2col(x.astype(dt), self.conv1.kernel[...], self.conv1.bias[...])
        else:
            y = self.conv1(x)
        x = self.bn1(jax.nn.relu(y))
        return self.bn2(jax.nn.relu(self.conv2(x)))


def _upsample2(x):
    """Nearest-neighbour 2× upsampling of NHWC `x` (Keras UpSampling2D default)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _maxpool2(x):
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


class UNet(nnx.Module):
    """Chae et al.'s U-Net: (N, H, W, 1) noisy image in [0, 1] → (N, H, W, 1) denoised, ≥ 0.

    Args:
      in_features / out_features: image channels (1 for grey-scale microscopy).
      widths: channels of the two down blocks and the bottleneck (default (32, 64, 128)).
      compute_dtype: dtype of the convolutions (None = float32; jnp.bfloat16 for the fast
        variant). Parameters are always float32; the output is float32.
      bn_momentum: BatchNorm running-average momentum (Keras: 0.99; 0.9 suits short runs).
      im2col_first: compute the 1-channel first convolution as an im2col matmul (same params,
        same result; faster on CPU).
      rngs: `nnx.Rngs` for parameter init.

    Call with `model.train()` / `model.eval()` set (BatchNorm batch vs running statistics).
    """

    def __init__(self, in_features: int = 1, out_features: int = 1, *, widths: Sequence[int] = (32, 64, 128),
                 compute_dtype=None, bn_momentum: float = 0.9, im2col_first: bool = False, rngs: nnx.Rngs):
        c1, c2, c3 = widths
        kw = dict(compute_dtype=compute_dtype, bn_momentum=bn_momentum, rngs=rngs)
        self.down1 = ConvBlock(in_features, c1, first_im2col=im2col_first, **kw)
        self.down2 = ConvBlock(c1, c2, **kw)
        self.bottleneck = ConvBlock(c2, c3, **kw)
        self.up2 = ConvBlock(c3 + c2, c2, **kw)
        self.up1 = ConvBlock(c2 + c1, c1, **kw)
        self.head = nnx.Conv(c1, out_features, (1, 1), dtype=compute_dtype, rngs=rngs)
        self.compute_dtype = compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, C) float → (N, H, W, out_features) float32, any H, W ≥ 1."""
        x, (h, w) = pad_to_multiple(x, 4)
        if self.compute_dtype is not None:
            x = x.astype(self.compute_dtype)
        s1 = self.down1(x)
        s2 = self.down2(_maxpool2(s1))
        b = self.bottleneck(_maxpool2(s2))
        u2 = self.up2(jnp.concatenate([_upsample2(b), s2], axis=-1))
        u1 = self.up1(jnp.concatenate([_upsample2(u2), s1], axis=-1))
        y = jax.nn.relu(self.head(u1)).astype(jnp.float32)
        return y[:, :h, :w, :]
