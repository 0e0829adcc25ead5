"""Toy denoiser config: the smallest run of the shared training loop (used by tests).

Run: ``jaxdn train toy --config configs/toy.py:tiny --workdir /tmp/toy``
(tiny: 20 steps of batch 8 × 16² on CPU, a few seconds).
"""
from __future__ import annotations

import dataclasses

from jaxdn.train.config import OptimConfig


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    steps: int = 200
    batch_size: int = 16          # global batch, split over devices
    size: int = 32                # image side, px
    channels: int = 8
    noise_sigma: float = 0.1
    seed: int = 0
    log_every: int = 20
    eval_every: int = 100          # 0: no evaluation
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    compute_dtype: str = "float32"  # "bfloat16": model computes in bf16, params stay f32
    optim: OptimConfig = OptimConfig(lr=3e-3)


def get_config(variant: str = "default") -> ToyConfig:
    base = ToyConfig()
    variants = {
        "default": base,
        "tiny": dataclasses.replace(base, steps=20, batch_size=8, size=16, channels=4, log_every=5,
                                    eval_every=0, checkpoint_every=5),
        "bf16": dataclasses.replace(base, compute_dtype="bfloat16"),
    }
    if variant not in variants:
        raise KeyError(f"variants: {', '.join(variants)}")
    return variants[variant]
