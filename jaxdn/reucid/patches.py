"""Patchisation (REUCID step 2): memory estimate → number of stacks, random stack labels, patches.

A patch is identified by its top-left pixel (i, j), 0 ≤ i ≤ H − p, 0 ≤ j ≤ W − p; there are
N = (H − p + 1)(W − p + 1) of them (no padding, as in the paper). Flattened patches are row-major:
feature index ``a * p + b`` holds pixel (i + a, j + b).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["patch_matrix_bytes", "default_memory_budget", "n_stacks_for_budget", "stack_labels",
           "extract", "fold", "valid_shape"]

#: Fraction of the available host (or device) memory REUCID allows one patch stack to take.
BUDGET_FRACTION = 0.25
#: Upper bound on the default budget so the number of stacks (and hence the result) does not
#: depend on how much RAM happens to be free on large machines.
BUDGET_CAP_BYTES = 4 * 2**30


def valid_shape(shape, patch_size):
    """(H − p + 1, W − p + 1): the grid of patch top-left positions."""
    h, w = shape[-2:]
    return (h - patch_size + 1, w - patch_size + 1)


def patch_matrix_bytes(shape, patch_size, *, bytes_per_elem=4):
    """Bytes of the materialised (H−p+1)(W−p+1) × p² patch matrix (the paper's RAM estimate)."""
    hv, wv = valid_shape(shape, patch_size)
    return int(hv) * int(wv) * patch_size**2 * bytes_per_elem


def default_memory_budget():
    """Default budget in bytes: 25 % of available device memory (GPU) or host RAM, capped at 4 GiB."""
    avail = None
    try:
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                avail = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    except Exception:  # memory_stats is optional per backend
        avail = None
    if avail is None:
        try:
            import psutil
            avail = psutil.virtual_memory().available
        except Exception:
            avail = 8 * 2**30
    return int(min(BUDGET_FRACTION * avail, BUDGET_CAP_BYTES))


def n_stacks_for_budget(shape, patch_size, *, memory_budget_bytes=None, bytes_per_elem=4):
    """Number of workload divisions d so that one stack's patch matrix fits the budget.

    Args:
      shape: (H, W) image shape.
      patch_size: p.
      memory_budget_bytes: bytes one stack may use (default: `default_memory_budget()`).
      bytes_per_elem: 4 for float32.

    Returns:
      d ≥ 1 = ceil(patch-matrix bytes / budget).
    """
    budget = default_memory_budget() if memory_budget_bytes is None else int(memory_budget_bytes)
    if budget <= 0:
        raise ValueError(f"memory budget must be positive, got {budget}")
    need = patch_matrix_bytes(shape, patch_size, bytes_per_elem=bytes_per_elem)
    return max(1, math.ceil(need / budget))


@functools.partial(jax.jit, static_argnames=("shape", "patch_size", "n_stacks"))
def _labels(key, shape, patch_size, n_stacks):
    hv, wv = valid_shape(shape, patch_size)
    if n_stacks == 1:
        return jnp.zeros((hv, wv), jnp.int32)
    return jax.random.randint(key, (hv, wv), 0, n_stacks, dtype=jnp.int32)


def stack_labels(key, shape, patch_size, n_stacks):
    """Random stack label of every patch top-left pixel (independent uniform draws, as the paper).

    Args:
      key: PRNG key.
      shape: (H, W) image shape.
      patch_size: p.
      n_stacks: d.

    Returns:
      (H − p + 1, W − p + 1) int32 labels in [0, d) (all zero when d = 1).
    """
    return _labels(key, tuple(int(s) for s in shape[-2:]), int(patch_size), int(n_stacks))


def extract(image, patch_size):
    """All patches of an image as rows of a matrix (the faithful, materialised path).

    Args:
      image: (H, W) array.
      patch_size: p.

    Returns:
      (N, p²) float32, row n = patch with top-left (n // (W−p+1), n % (W−p+1)), row-major pixels.
    """
    x = jnp.asarray(image, jnp.float32)
    pat = jax.lax.conv_general_dilated_patches(
        x[None, None], (patch_size, patch_size), (1, 1), "VALID",
        precision=jax.lax.Precision.HIGHEST)  # (1, p², Hv, Wv); feature = a * p + b
    return pat[0].reshape(patch_size * patch_size, -1).T


def fold(rows, shape, patch_size):
    """Adjoint of `extract`: add every patch row back onto an (H, W) canvas at its position."""
    zero = jnp.zeros(shape, jnp.float32)
    (out,) = jax.linear_transpose(lambda im: extract(im, patch_size), zero)(rows.astype(jnp.float32))
    return out
