"""Noise2Atom losses (paper eqs. 1–7): Wasserstein, gradient penalty, cycle L1, low-frequency cycle.

Small pure functions on arrays; they could move into `jaxdn/losses.py` (owned by another module).
Sign convention of the authors' code: the critic is trained with label −1 on clean (real) images and
+1 on generated ones, `W(y, D) = mean(y · D)`; the generator's adversarial loss is `W(−1, D(G(s)))`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["wasserstein", "gradient_penalty", "interpolate", "cycle_l1", "lowfreq_cycle", "sign_correlation",
           "lowfreq_content"]


def wasserstein(labels, scores):
    """`W(y, D) = mean(y ⊙ D)` (eq. 2). labels: scalar or like `scores`; scores: (N,)."""
    return jnp.mean(labels * scores)


def interpolate(key, real, fake):
    """Random per-sample interpolation `u·real + (1 − u)·fake`, u ~ U[0, 1] of shape (N, 1, 1, 1) (eq. 4)."""
    if real.shape != fake.shape:
        raise ValueError(f"real {real.shape} and fake {fake.shape} differ")
    u = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    return u * real + (1.0 - u) * fake


def gradient_penalty(critic: Callable, x):
    """Mean over the batch of `(1 − ‖∂D(x_i)/∂x_i‖₂)²` (eqs. 3, 5).

    Args:
      critic: maps (N, ...) → (N,) scores; samples must not interact (no batch statistics), so the
        gradient of the summed scores gives every sample's own gradient.
      x: (N, ...) points to evaluate the gradient at (e.g. `interpolate(...)`).
    Returns:
      scalar penalty.
    """
    grads = jax.grad(lambda z: jnp.sum(critic(z)))(x)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=tuple(range(1, x.ndim))) + 1e-12)
    return jnp.mean(jnp.square(1.0 - norms))


def cycle_l1(clean, cycled):
    """L_cycle = mean |c − M_s2c(M_c2s(c))| (eq. 6)."""
    return jnp.mean(jnp.abs(clean - cycled))


def lowfreq_cycle(lowpass: Callable, noisy, cycled):
    """L_lfc = mean |M_s2b(s) − M_s2b(M_c2s(M_s2c(s)))| (eq. 7)."""
    return jnp.mean(jnp.abs(lowpass(noisy) - lowpass(cycled)))


def sign_correlation(a, b):
    """Per-sample Pearson correlation of `a` and `b` over all non-batch axes → (N,), in [−1, 1].

    Used by the inversion guard: the input and the denoised output of M_s2c must be
    positively correlated (bright regions hold the atoms).
    """
    axes = tuple(range(1, a.ndim))
    a = a - jnp.mean(a, axis=axes, keepdims=True)
    b = b - jnp.mean(b, axis=axes, keepdims=True)
    num = jnp.sum(a * b, axis=axes)
    den = jnp.sqrt(jnp.sum(a * a, axis=axes) * jnp.sum(b * b, axis=axes)) + 1e-12
    return num / den


def lowfreq_content(lowpass: Callable, noisy, fake):
    """Direct low-frequency content loss (beyond the paper), per sample → (N,) in [0, 2].

    `1 − corr(M_s2b(s), M_s2b(M_s2c(s)))`: the atom map, blurred, must match the blurred noisy frame
    up to an affine map (HAADF intensity is linear in the projected atoms; the generator's output
    scale is free). L_lfc only asks this of the *cycled* frame, which M_c2s can satisfy whatever
    the atom map shows; this ties the atom map itself to the data's low frequencies.
    """
    return 1.0 - sign_correlation(lowpass(noisy), lowpass(fake))
