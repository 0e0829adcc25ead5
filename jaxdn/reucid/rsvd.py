"""Randomized SVD (Halko, Martinsson & Tropp 2011, Algorithms 4.3/4.4 + 5.1), pure JAX."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["randomized_svd"]


@functools.partial(jax.jit, static_argnames=("rank", "oversample", "power_iters"))
def randomized_svd(key, x, *, rank, oversample=10, power_iters=2):
    """Truncated SVD of a tall matrix by a Gaussian range finder.

    Q spans X Ω (Ω Gaussian, D × (rank + oversample)); each power iteration re-orthonormalises
    with QR (Q ← qr(X qr(Xᵀ Q))); then B = Qᵀ X is decomposed exactly.

    Args:
      key: PRNG key for Ω.
      x: (N, D) matrix (N ≥ D typical for patch matrices).
      rank: number of singular triplets returned (≤ min(N, D)).
      oversample: extra random directions.
      power_iters: subspace (power) iterations.

    Returns:
      (U (N, rank), S (rank,) descending, Vt (rank, D)).
    """
    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    k = min(rank + oversample, n, d)
    hi = jax.lax.Precision.HIGHEST
    omega = jax.random.normal(key, (d, k), jnp.float32)
    q, _ = jnp.linalg.qr(jnp.matmul(x, omega, precision=hi))
    for _ in range(power_iters):
        z, _ = jnp.linalg.qr(jnp.matmul(x.T, q, precision=hi))
        q, _ = jnp.linalg.qr(jnp.matmul(x, z, precision=hi))
    b = jnp.matmul(q.T, x, precision=hi)  # (k, D)
    ub, s, vt = jnp.linalg.svd(b, full_matrices=False)
    u = jnp.matmul(q, ub, precision=hi)
    return u[:, :rank], s[:rank], vt[:rank]
