"""The STM stripe-denoising convolutional autoencoder, exactly as printed in the thesis chapter.

Encoder: conv 3×3 (1→32, pad 1) → ReLU → max-pool 2 → conv 3×3 (32→32) → ReLU → max-pool 2.
Decoder: conv 3×3 (32→32) → ReLU → nearest 2× → conv 3×3 (32→32) → ReLU → nearest 2× →
conv 3×3 (32→1) → sigmoid. 28 353 parameters. Layout NHWC (the PyTorch original is NCHW).
Inputs of any size are reflect-padded to a multiple of 4 and cropped back.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .unet import _maxpool2, _upsample2, conv3x3_im2col, pad_to_multiple

__all__ = ["StripeAutoencoder"]


class StripeAutoencoder(nnx.Module):
    """(N, H, W, 1) image in [0, 1] → (N, H, W, 1) in (0, 1).

    Args:
      features: channels of every hidden convolution (thesis: 32).
      compute_dtype: dtype of the convolutions (None = float32; bfloat16 for fast variants).
      im2col_thin: compute the thin first (1→32) and last (32→1) convolutions as im2col matmuls
        (same parameters and result; faster with XLA on CPU).
      rngs: `nnx.Rngs` for parameter init.
    """

    def __init__(self, *, features: int = 32, compute_dtype=None, im2col_thin: bool = False, rngs: nnx.Rngs):
        conv = lambda i, o: nnx.Conv(i, o, (3, 3), padding=((1, 1), (1, 1)), dtype=compute_dtype, rngs=rngs)
        self.enc1 = conv(1, features)
        self.enc2 = conv(features, features)
        self.dec1 = conv(features, features)
        self.dec2 = conv(features, features)
        self.out = conv(features, 1)
        self.compute_dtype = compute_dtype
        self.im2col_thin = im2col_thin

    def _thin(self, layer: nnx.Conv, x):
        if self.im2col_thin:
            return conv3x3_im2col(x, layer.kernel[...], layer.bias[...])
        return layer(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, 1) → (N, H, W, 1) float32."""
        x, (h, w) = pad_to_multiple(x, 4)
        if self.compute_dtype is not None:
            x = x.astype(self.compute_dtype)
        x = _maxpool2(jax.nn.relu(self._thin(self.enc1, x)))
        x = _maxpool2(jax.nn.relu(self.enc2(x)))
        x = _upsample2(jax.nn.relu(self.dec1(x)))
        x = _upsample2(jax.nn.relu(self.dec2(x)))
        y = jax.nn.sigmoid(self._thin(self.out, x).astype(jnp.float32))
        return y[:, :h, :w, :]
