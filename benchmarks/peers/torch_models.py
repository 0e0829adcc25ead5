"""The jaxdn TEM U-Net and STM stripe autoencoder written in PyTorch (speed peers, NCHW).

Same layers, widths, activations and parameter counts as `jaxdn.models.unet.UNet` and
`jaxdn.models.stripe_autoencoder.StripeAutoencoder` (checked by `benchmarks/train_throughput.py`).
Requires ``pip install torch==2.13.0`` (CPU wheel).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class ConvBlock(nn.Sequential):
    """2 × [conv 3×3 → ReLU → BatchNorm] (Keras-style order, as in the paper)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1),
        )


class UNet(nn.Module):
    """Chae et al.'s U-Net: (N, 1, H, W) → (N, 1, H, W), H and W multiples of 4."""

    def __init__(self, widths=(32, 64, 128)):
        super().__init__()
        c1, c2, c3 = widths
        self.down1, self.down2 = ConvBlock(1, c1), ConvBlock(c1, c2)
        self.bottleneck = ConvBlock(c2, c3)
        self.up2, self.up1 = ConvBlock(c3 + c2, c2), ConvBlock(c2 + c1, c1)
        self.head = nn.Conv2d(c1, 1, 1)

    def forward(self, x):
        s1 = self.down1(x)
        s2 = self.down2(F.max_pool2d(s1, 2))
        b = self.bottleneck(F.max_pool2d(s2, 2))
        u2 = self.up2(torch.cat([F.interpolate(b, scale_factor=2, mode="nearest"), s2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2, mode="nearest"), s1], 1))
        return F.relu(self.head(u1))


class StripeAutoencoder(nn.Module):
    """The thesis' autoencoder, verbatim: (N, 1, H, W) → (N, 1, H, W), H and W multiples of 4."""

    def __init__(self, features: int = 32):
        super().__init__()
        f = features
        self.encoder = nn.Sequential(
            nn.Conv2d(1, f, kernel_size=3, padding=1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(f, f, kernel_size=3, padding=1), nn.ReLU(True), nn.MaxPool2d(2, 2))
        self.decoder = nn.Sequential(
            nn.Conv2d(f, f, kernel_size=3, padding=1), nn.ReLU(True), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(f, f, kernel_size=3, padding=1), nn.ReLU(True), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(f, 1, kernel_size=3, padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


def n_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())
