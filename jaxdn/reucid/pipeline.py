"""REUCID pipeline: decompose → classify → truncate → reconstruct → divide by the patch terrain.

Two numerically equivalent routes compute the same decomposition and reconstruction:

* ``path="faithful"`` follows the paper literally: each stack's patches are gathered into an
  (N_s, p²) matrix, decomposed by randomized SVD (`rsvd.randomized_svd`, or an exact SVD with
  ``svd="exact"``), projected onto the kept eigenpatches, reconstructed and scatter-added onto the
  canvas. Memory O(N_s p²) per stack.
* ``path="fast"`` never materialises the patch matrix. The right singular vectors of a stack's
  (uncentred) patch matrix X_s are the eigenvectors of its Gram matrix G_s = X_sᵀX_s (p² × p²,
  σ² = λ), built from shifted-image products; projection + reconstruction of the kept
  components is a linear operator on the image, evaluated with FFTs. With one stack the operator
  is a single (2p−1)² correlation kernel K[δ] = Σ_t P[t, t+δ] (P = V_K V_Kᵀ the projector) exact
  away from the p−1 border rows/columns, which are recomputed exactly from their own patches;
  with several stacks each kept component of each stack costs two FFTs. Memory O(image).
  The fast path computes the *exact* SVD (`eigh` of G_s), which the randomized SVD approximates.

Eigenpatches are the right singular vectors of the uncentred patch matrix (no mean subtraction,
as in the paper), sorted by descending singular value, each with a deterministic sign: the sign
that makes Σ_i v_i w_i positive for a fixed generic weight vector w (w ≈ 1 ± 0.5, so in practice
"the eigenpatch sums to a positive value" unless that sum is ~0). Both paths share the rule.

**Keep rule** (`keep_count`): the classifier's probabilities are read in rank order and the
leading run of components with p ≥ 0.5 is kept, i.e. ``n_keep`` = index of the first component
classified as not useful; the first component (the local mean) is always kept (``n_keep ≥ 1``).
A dropped component is never followed by a kept one: eigenpatches are ordered by importance, and
the training labels (components 1..α* useful) have exactly this form.

Stacks of frames (T, H, W) share one patch size (from the frames' mean ACF profile), one set of
stack labels (from ``seed``) and one compilation; every frame gets its own decomposition and
classification, batched with ``vmap``. The result equals a loop over frames.

Minimum image size: H, W ≥ 2p (p the patch size); smaller images raise `InputError`.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from . import patches as _patches
from . import psf as _psf
from .rsvd import randomized_svd
from .terrain import patch_terrain

__all__ = ["Decomposition", "decompose", "reconstruct", "reconstruct_each_rank", "classifier_inputs",
           "keep_count", "heuristic_keep", "denoise", "gram_matrices", "choose_path"]

_HI = jax.lax.Precision.HIGHEST
CLASSIFIER_SIZE = 25


class Decomposition(NamedTuple):
    """Per-stack eigenpatches (a pytree).

    Attributes:
      eigenpatches: (d, R, p, p) float32, unit-norm right singular vectors, rank order.
      singular_values: (d, R) float32, descending per stack.
      labels: (H − p + 1, W − p + 1) int32 stack label of every patch top-left pixel.
    """
    eigenpatches: jax.Array
    singular_values: jax.Array
    labels: jax.Array


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def _fast_len(n):
    """Smallest 2·3·5-smooth integer ≥ n (an FFT-friendly length)."""
    best = 1 << max(0, int(math.ceil(math.log2(max(n, 1)))))
    p5 = 1
    while p5 <= best:
        p35 = p5
        while p35 <= best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


@functools.lru_cache(maxsize=None)
def _sign_weights(dim):
    g = np.random.default_rng(20240917).uniform(-0.5, 0.5, dim)
    return (1.0 + g).astype(np.float32)


def _normalise_signs(v):
    """Flip rows of v (..., R, D) so that v·w > 0 for the fixed generic weights w."""
    w = jnp.asarray(_sign_weights(v.shape[-1]))
    s = jnp.sign(jnp.sum(v * w, axis=-1, keepdims=True))
    return v * jnp.where(s == 0, 1.0, s)


def _eig_from_gram(gram, rank):
    """Top-`rank` eigenpairs of symmetric (…, D, D) → (V (…, R, D) rows, σ (…, R) descending)."""
    lam, vec = jnp.linalg.eigh(gram)  # ascending
    lam = lam[..., ::-1][..., :rank]
    vec = jnp.swapaxes(vec[..., ::-1][..., :rank], -1, -2)
    return _normalise_signs(vec), jnp.sqrt(jnp.clip(lam, 0.0, None))


@functools.lru_cache(maxsize=None)
def _delta_index(p):
    """index[t, u] of the displacement u − t in a (2p−1)² grid, for patch positions t, u."""
    a = np.arange(p * p) // p
    b = np.arange(p * p) % p
    dr = a[None, :] - a[:, None] + (p - 1)
    dc = b[None, :] - b[:, None] + (p - 1)
    return dr, dc


def _fft_shape(shape, p):
    """FFT size shared by the Gram autocorrelation (needs ≥ H + p − 1) and the reconstruction."""
    return _fast_len(shape[0] + p - 1), _fast_len(shape[1] + p - 1)


def _dft_real(n, m, p):
    """cos/sin matrices (n_freq, p) of the length-n DFT restricted to p taps starting at 0, for m freqs."""
    k = np.arange(m)[:, None]
    t = np.arange(p)[None, :]
    ang = 2 * np.pi * ((k * t) % n) / n
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def _dft_kernel(v, shape):
    """rfft2 of the (…, p, p) kernels zero-padded to `shape`, via small matmuls.

    Returns complex64 (…, Hf, Wf // 2 + 1).
    """
    hf, wf = shape
    p = v.shape[-1]
    ch, sh = (jnp.asarray(a) for a in _dft_real(hf, hf, p))
    cw, sw = (jnp.asarray(a) for a in _dft_real(wf, wf // 2 + 1, p))
    # F = (C_h − i S_h) V (C_w − i S_w)ᵀ
    vc = jnp.einsum("...ab,kb->...ak", v, cw, precision=_HI)
    vs = jnp.einsum("...ab,kb->...ak", v, sw, precision=_HI)
    re = jnp.einsum("ja,...ak->...jk", ch, vc, precision=_HI) - jnp.einsum("ja,...ak->...jk", sh, vs, precision=_HI)
    im = -(jnp.einsum("ja,...ak->...jk", sh, vc, precision=_HI) + jnp.einsum("ja,...ak->...jk", ch, vs, precision=_HI))
    return jax.lax.complex(re, im)


# ---------------------------------------------------------------------------------------------
# Gram matrices (fast path)
# ---------------------------------------------------------------------------------------------

def _excl_cumsum(v, axis):
    """Σ_{k < a} v[k] along a short `axis`, for a = 0..n (length n + 1); a triangular matmul."""
    n = v.shape[axis]
    tri = jnp.asarray(np.tril(np.ones((n + 1, n), np.float32), -1))  # tri[a, k] = k < a
    return jnp.moveaxis(jnp.tensordot(tri, jnp.moveaxis(v, axis, 0), axes=1, precision=_HI), 0, axis)


def _excl_rcumsum(v, axis):
    """Σ_{k ≥ a} v[k] along a short `axis`, for a = 0..n (length n + 1); a triangular matmul."""
    n = v.shape[axis]
    tri = jnp.asarray(np.triu(np.ones((n + 1, n), np.float32)))  # tri[a, k] = k ≥ a
    return jnp.moveaxis(jnp.tensordot(tri, jnp.moveaxis(v, axis, 0), axes=1, precision=_HI), 0, axis)


def _acf_lags(spec, L, shape):
    """A[δ + L] = Σ_u x[u] x[u + δ] for |δ| ≤ L from rfft2(x) (zero-padded to `shape` ≥ H + L).

    Only (2L + 1)² lags are needed, so the inverse transform is two small real DFT matmul chains
    instead of a full irfft2.
    """
    hf, wf = shape
    wc = wf // 2 + 1
    power = spec.real**2 + spec.imag**2                                    # (hf, wc)
    cnt = np.full(wc, 2.0)
    cnt[0] = 1.0
    if wf % 2 == 0:
        cnt[-1] = 1.0
    d = np.arange(-L, L + 1)
    ar = 2 * np.pi * np.outer(d, np.arange(hf)) / hf
    ac = 2 * np.pi * np.outer(d, np.arange(wc)) / wf
    cr, sr = jnp.asarray(np.cos(ar), jnp.float32), jnp.asarray(np.sin(ar), jnp.float32)
    cc = jnp.asarray(np.cos(ac) * cnt / (hf * wf), jnp.float32)
    sc = jnp.asarray(np.sin(ac) * cnt / (hf * wf), jnp.float32)
    pc = jnp.matmul(power, cc.T, precision=_HI)                            # (hf, n2)
    ps = jnp.matmul(power, sc.T, precision=_HI)
    return jnp.matmul(cr, pc, precision=_HI) - jnp.matmul(sr, ps, precision=_HI)


def _band_rowsums(xb, slab, n2):
    """rs[δr', δc', r] = Σ_c xb[r, c] · slab[r + δr', c + δc'] for a band of rows.

    xb: (L, W) rows of x; slab: (3L, W + 2L) the matching rows of the L-padded image.
    Row cross-correlations at n2 column lags as n2 small matmuls. Returns (n2, n2, L).
    """
    nb, w = xb.shape
    cols = np.arange(n2)[:, None] + np.arange(w)[None, :]
    shifted = slab[:, cols]                                            # (3L, n2c, W) gather
    corr = jnp.einsum("rc,jkc->krj", xb, shifted, precision=_HI)      # (n2c, L, 3L)
    jr = np.arange(nb)[None, :] + np.arange(n2)[:, None]               # (n2r, L): r + δr'
    return corr[:, np.arange(nb)[None, :], jr].transpose(1, 0, 2)      # (n2r, n2c, L)


def _corner_products(xb, slab, n2):
    """P[δr', δc', r, c] = xb[r, c] · slab[r + δr', c + δc'] for an (L, L) corner block."""
    nb = xb.shape[0]
    i = np.arange(n2)[:, None, None, None] + np.arange(nb)[None, None, :, None]
    j = np.arange(n2)[None, :, None, None] + np.arange(nb)[None, None, None, :]
    return xb[None, None] * slab[i, j]


def _gram_single(x, p, spec=None):
    """G = Σ over ALL patches p_i p_iᵀ (p² × p²) without the patch matrix.

    G[(a,b),(a,b)+δ] = Σ_{u ∈ [a, a+Hv) × [b, b+Wv)} x[u] x[u+δ]: the full linear
    autocorrelation A[δ] (one FFT pair) minus the sums over the border bands of width p − 1 outside
    the window (inclusion–exclusion; row/column cross-correlations as small matmuls).
    Cost O(H W log(H W) + p³ (H + W)).

    Args:
      x: (H, W) float32.
      p: patch size.
      spec: optional rfft2(x, s=_gram_fft_shape(x.shape, p)) to reuse.
    """
    h, w = x.shape
    L = p - 1
    hv, wv = h - L, w - L
    n2 = 2 * L + 1
    hf, wf = _fft_shape(x.shape, p)
    if spec is None:
        spec = jnp.fft.rfft2(x, s=(hf, wf))
    A = _acf_lags(spec, L, (hf, wf))  # (n2, n2): A[δ + L]
    if L == 0:
        return A.reshape(1, 1)
    xp = jnp.pad(x, L)
    # Row bands (top/bottom) and column bands (left/right, via transposes), each pair batched.
    rs_top = _band_rowsums(x[:L], xp[:3 * L], n2)                     # (n2, n2, L)
    rs_bot = _band_rowsums(x[hv:], xp[hv:], n2)
    cs_lef = _band_rowsums(x[:, :L].T, xp[:, :3 * L].T, n2).transpose(1, 0, 2)
    cs_rig = _band_rowsums(x[:, wv:].T, xp[:, wv:].T, n2).transpose(1, 0, 2)
    blocks = jnp.stack([x[:L, :L], x[:L, wv:], x[hv:, :L], x[hv:, wv:]])
    slabs = jnp.stack([xp[:3 * L, :3 * L], xp[:3 * L, wv:], xp[hv:, :3 * L], xp[hv:, wv:]])
    tl, tr, bl, br = jax.vmap(lambda xb, sl: _corner_products(xb, sl, n2))(blocks, slabs)  # (n2, n2, L, L)
    r_top = _excl_cumsum(rs_top, -1)          # rows < a              (n2, n2, p)
    r_bot = _excl_rcumsum(rs_bot, -1)         # rows ≥ a + Hv
    c_lef = _excl_cumsum(cs_lef, -1)          # cols < b
    c_rig = _excl_rcumsum(cs_rig, -1)         # cols ≥ b + Wv
    tl = _excl_cumsum(_excl_cumsum(tl, -2), -1)
    tr = _excl_cumsum(_excl_rcumsum(tr, -1), -2)
    bl = _excl_rcumsum(_excl_cumsum(bl, -1), -2)
    br = _excl_rcumsum(_excl_rcumsum(br, -1), -2)
    win = (A[..., None, None] - r_top[..., :, None] - r_bot[..., :, None]
           - c_lef[..., None, :] - c_rig[..., None, :] + tl + tr + bl + br)  # (n2, n2, p, p)
    idr, idc = _delta_index(p)
    a = np.arange(p * p) // p
    b = np.arange(p * p) % p
    g = win[idr, idc, a[:, None], b[:, None]]
    return 0.5 * (g + g.T)


def _gram_stacks(x, labels, p, d, *, chunk=2048):
    """G_s = Σ_{i ∈ stack s} p_i p_iᵀ for every stack, (d, p², p²), by chunked patch gathers.

    Positions are sorted by label and each stack is processed in chunks of ``chunk`` patches
    (memory O(chunk · p²)); total work O(N p⁴) independent of d.
    """
    h, w = x.shape
    hv, wv = labels.shape
    n = hv * wv
    lab = labels.reshape(-1)
    order = jnp.argsort(lab, stable=True).astype(jnp.int32)
    counts = jnp.bincount(lab, length=d)
    starts = jnp.cumsum(counts) - counts
    pos = (order // wv) * w + (order % wv)
    pos = jnp.concatenate([pos, jnp.zeros(chunk, jnp.int32)])
    offs = jnp.asarray((np.arange(p)[:, None] * w + np.arange(p)[None, :]).reshape(-1), jnp.int32)
    xf = x.reshape(-1)
    dim = p * p

    def one_stack(s):
        cnt = counts[s]

        def body(c, g):
            idx = jax.lax.dynamic_slice(pos, (starts[s] + c * chunk,), (chunk,))
            ok = (c * chunk + jnp.arange(chunk)) < cnt
            y = xf[idx[:, None] + offs[None, :]] * ok[:, None]
            return g + jnp.matmul(y.T, y, precision=_HI)

        return jax.lax.fori_loop(0, (cnt + chunk - 1) // chunk, body, jnp.zeros((dim, dim), jnp.float32))

    return jax.lax.map(one_stack, jnp.arange(d))


def gram_matrices(image, labels, *, patch_size, n_stacks):
    """(d, p², p²) Gram matrices of the stacks' (uncentred) patch matrices, without materialising them."""
    x = jnp.asarray(image, jnp.float32)
    if n_stacks == 1:
        return _gram_single(x, patch_size)[None]
    return _gram_stacks(x, labels, patch_size, n_stacks)


# ---------------------------------------------------------------------------------------------
# Decomposition
# ---------------------------------------------------------------------------------------------

def _stack_positions(labels, d, n_max):
    """Flat top-left indices of every stack, padded: (d, n_max) int32 and validity (d, n_max)."""
    hv, wv = labels.shape
    lab = labels.reshape(-1)
    order = jnp.argsort(lab, stable=True).astype(jnp.int32)
    counts = jnp.bincount(lab, length=d)
    starts = jnp.cumsum(counts) - counts
    k = jnp.arange(n_max)
    src = jnp.clip(starts[:, None] + k[None, :], 0, lab.size - 1)
    valid = k[None, :] < counts[:, None]
    return jnp.where(valid, order[src], 0), valid


def _gather_patches(x, flat_pos, p, wv):
    """Patches at top-left flat positions (in the (Hv, Wv) grid) → (n, p²)."""
    w = x.shape[1]
    offs = jnp.asarray((np.arange(p)[:, None] * w + np.arange(p)[None, :]).reshape(-1), jnp.int32)
    top = (flat_pos // wv) * w + (flat_pos % wv)
    return x.reshape(-1)[top[:, None] + offs[None, :]]


def _decompose_fast_impl(x, labels, p, d, rank):
    """(eigenpatches, singular values, rfft2 of x or None) — the spectrum is reused by reconstruct."""
    if d == 1:
        spec = jnp.fft.rfft2(x, s=_fft_shape(x.shape, p))
        g = _gram_single(x, p, spec)[None]
    else:
        spec = None
        g = _gram_stacks(x, labels, p, d)
    v, s = _eig_from_gram(g, rank)
    return v.reshape(d, rank, p, p), s, spec


@functools.partial(jax.jit, static_argnames=("p", "d", "rank"))
def _decompose_fast(x, labels, p, d, rank):
    return _decompose_fast_impl(x, labels, p, d, rank)[:2]


@functools.partial(jax.jit, static_argnames=("p", "d", "rank", "n_max", "svd", "oversample", "power_iters"))
def _decompose_faithful(x, labels, key, p, d, rank, n_max, svd, oversample, power_iters):
    wv = labels.shape[1]
    pos, valid = _stack_positions(labels, d, n_max)

    def one(args):
        s, ps, ok = args
        xs = _gather_patches(x, ps, p, wv) * ok[:, None]  # (n_max, p²): the stack's patch matrix
        if svd == "exact":
            _, sv, vt = jnp.linalg.svd(xs, full_matrices=False)
            sv, vt = sv[:rank], vt[:rank]
        else:
            _, sv, vt = randomized_svd(jax.random.fold_in(key, s), xs, rank=rank, oversample=oversample,
                                       power_iters=power_iters)
        return _normalise_signs(vt), sv

    v, s = jax.lax.map(one, (jnp.arange(d), pos, valid))
    return v.reshape(d, rank, p, p), s


def decompose(image, *, patch_size, labels, n_stacks, rank=25, path="fast", key=None, svd="randomized",
              oversample=10, power_iters=2):
    """Eigenpatches of every patch stack.

    Args:
      image: (H, W) float32.
      patch_size: p (odd int).
      labels: (H − p + 1, W − p + 1) int32 stack labels in [0, n_stacks) (`patches.stack_labels`).
      n_stacks: d (static).
      rank: R eigenpatches kept per stack (≤ p²).
      path: "fast" (Gram + eigh, exact) or "faithful" (materialised patches + SVD).
      key: PRNG key of the randomized SVD (faithful path); default PRNGKey(0).
      svd: faithful path only: "randomized" (Halko et al., the paper) or "exact".
      oversample, power_iters: randomized-SVD parameters.

    Returns:
      `Decomposition` (eigenpatches (d, R, p, p), singular_values (d, R), labels).
    """
    x = jnp.asarray(image, jnp.float32)
    p = int(patch_size)
    d = int(n_stacks)
    rank = int(min(rank, p * p))
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != _patches.valid_shape(x.shape, p):
        raise ValueError(f"labels shape {labels.shape} does not match image {x.shape} and p={p}")
    if path == "fast":
        v, s = _decompose_fast(x, labels, p, d, rank)
    elif path == "faithful":
        key = jax.random.PRNGKey(0) if key is None else key
        try:
            n_max = int(np.bincount(np.asarray(labels).ravel(), minlength=d).max())
        except jax.errors.TracerArrayConversionError:
            n_max = labels.size
        v, s = _decompose_faithful(x, labels, key, p, d, rank, n_max, svd, int(oversample), int(power_iters))
    else:
        raise ValueError(f"unknown path {path!r}; use 'fast' or 'faithful'")
    return Decomposition(v, s, labels)


# ---------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------

def _weights(n_keep, d, rank, max_stacks):
    """(d, R) float mask of the kept components of the processed stacks."""
    n_keep = jnp.broadcast_to(jnp.asarray(n_keep, jnp.int32), (d,))
    keep = jnp.arange(rank)[None, :] < n_keep[:, None]
    processed = jnp.arange(d) < max_stacks
    return (keep & processed[:, None]).astype(jnp.float32)


def _border_kernels(proj, p):
    """Correlation kernels of project-and-reconstruct for every border situation.

    A pixel v receives Σ_{t ∈ T_v} Σ_u P[t, u] x[v − t + u] where T_v (patch offsets t whose
    top-left v − t is a patch position) is a rectangle set by the pixel's distance to the edges:
    rows [0, k] in the top p − 1 rows, [k'+1, p) in the bottom ones, all p rows inside (same for
    columns). K_T[δ] = Σ_{t ∈ T} P[t, t + δ] via a summed-area table over t.

    Args:
      proj: (p², p²) projector Vᵀ diag(w) V.
    Returns:
      (n2, n2, n2, n2) kernels [row type, col type, δr + L, δc + L]; type k < L: k-th border
      row/col from the top/left, L: interior, L + 1 + k': k'-th row/col of the bottom/right band.
    """
    L = p - 1
    n2 = 2 * L + 1
    t = np.arange(p)
    dl = np.arange(n2) - L
    ur = t[:, None, None, None] + dl[None, None, :, None]        # (p, 1, n2, 1)
    uc = t[None, :, None, None] + dl[None, None, None, :]        # (1, p, 1, n2)
    ok = (ur >= 0) & (ur < p) & (uc >= 0) & (uc < p)
    src = (t[:, None, None, None] * p + t[None, :, None, None]) * (p * p) + np.clip(ur, 0, L) * p + np.clip(uc, 0, L)
    q = jnp.where(jnp.asarray(ok), proj.reshape(-1)[jnp.asarray(src)], 0.0)  # (p, p, n2, n2)
    sat = _excl_cumsum(_excl_cumsum(q, 0), 1)                    # (p+1, p+1, n2, n2)
    lo = np.array([0] * L + [0] + [k + 1 for k in range(L)])
    hi = np.array([k + 1 for k in range(L)] + [p] + [p] * L)
    return (sat[hi[:, None], hi[None, :]] - sat[lo[:, None], hi[None, :]]
            - sat[hi[:, None], lo[None, :]] + sat[lo[:, None], lo[None, :]])


def _rows_corr(slab, kern, w):
    """out[k, c] = Σ_{δr', δc'} kern[k, δr', δc'] slab[k + δr', c + δc'] for k < L.

    slab: (3L, w + 2L) rows of the L-padded image; kern: (L, n2, n2). Returns (L, w).
    One (L × 3L·n2) · (3L·n2 × w) matmul against the column-shifted copies of the slab.
    """
    nb, n2 = kern.shape[:2]
    nj = slab.shape[0]
    shifted = slab[:, np.arange(n2)[:, None] + np.arange(w)[None, :]]          # (3L, n2c, w)
    dr = np.arange(nj)[None, :] - np.arange(nb)[:, None]                        # (L, 3L): j − k
    band = jnp.where(jnp.asarray((dr >= 0) & (dr < n2))[..., None],
                     kern[np.arange(nb)[:, None], np.clip(dr, 0, n2 - 1)], 0.0)  # (L, 3L, n2c)
    return jnp.matmul(band.reshape(nb, -1), shifted.reshape(-1, w), precision=_HI)


def _corner_corr(block, kern):
    """out[i, j] = Σ_δ kern[i, j, δr', δc'] block[i + δr', j + δc'] for an (L, L) corner."""
    nb, _, n2, _ = kern.shape
    i = np.arange(nb)[:, None, None, None] + np.arange(n2)[None, None, :, None]
    j = np.arange(nb)[None, :, None, None] + np.arange(n2)[None, None, None, :]
    return jnp.sum(kern * block[i, j], axis=(-2, -1))


def _kernel_spectrum(kern, shape):
    """rfft2 of a (2L+1)² correlation kernel indexed by δ + L, placed at δ mod shape."""
    hf, wf = shape
    L = (kern.shape[-1] - 1) // 2
    kf = _dft_kernel(kern, (hf, wf))
    ph_r = np.exp(2j * np.pi * L * np.arange(hf) / hf)
    ph_c = np.exp(2j * np.pi * L * np.arange(wf // 2 + 1) / wf)
    return kf * jnp.asarray((ph_r[:, None] * ph_c[None, :]).astype(np.complex64))


def _canvas_single(x, v, wk, p, spec=None):
    """Canvas of the one-stack case (every patch processed), exactly, without patches.

    Project + reconstruct with the kept eigenpatches is Σ_δ K_T[δ] x[v + δ] (`_border_kernels`):
    one kernel inside (applied by FFT), 2(p − 1) row/column kernels on the border bands and
    (p − 1)² per corner pixel (applied directly). Cost: 2 FFTs + O(p³ (H + W)).

    Args:
      x: (H, W); v: (R, p, p) eigenpatches; wk: (R,) component weights (1 = kept).
      spec: optional rfft2(x, s=_fft_shape(x.shape, p)).
    """
    h, w = x.shape
    L = p - 1
    vf = v.reshape(v.shape[0], p * p)
    proj = jnp.matmul(vf.T * wk, vf, precision=_HI)
    # The barrier materialises the small kernels; otherwise XLA fuses their computation into the
    # border correlations and recomputes it for every pixel.
    kern = jax.lax.optimization_barrier(_border_kernels(proj, p))  # (n2, n2, n2, n2)
    fs = _fft_shape(x.shape, p)
    if spec is None:
        spec = jnp.fft.rfft2(x, s=fs)
    out = jnp.fft.irfft2(spec * jnp.conj(_kernel_spectrum(kern[L, L], fs)), s=fs)[:h, :w]
    if L == 0:
        return out
    hv, wv = h - L, w - L
    xp = jnp.pad(x, L)
    top = _rows_corr(xp[:3 * L], kern[:L, L], w)
    bot = _rows_corr(xp[hv:], kern[L + 1:, L], w)
    lef = _rows_corr(xp[:, :3 * L].T, jnp.swapaxes(kern[L, :L], -1, -2), h)
    rig = _rows_corr(xp[:, wv:].T, jnp.swapaxes(kern[L, L + 1:], -1, -2), h)
    out = out.at[:L].set(top).at[hv:].set(bot).at[:, :L].set(lef.T).at[:, wv:].set(rig.T)
    corners = jax.vmap(_corner_corr)(
        jnp.stack([xp[:3 * L, :3 * L], xp[:3 * L, wv:], xp[hv:, :3 * L], xp[hv:, wv:]]),
        jnp.stack([kern[:L, :L], kern[:L, L + 1:], kern[L + 1:, :L], kern[L + 1:, L + 1:]]))
    out = out.at[:L, :L].set(corners[0]).at[:L, wv:].set(corners[1])
    return out.at[hv:, :L].set(corners[2]).at[hv:, wv:].set(corners[3])


def _canvas_stacks(x, v, wts, labels, p):
    """Canvas for several stacks: per stack and kept component, two FFTs (correlate, mask, convolve)."""
    h, w = x.shape
    d, rank = wts.shape
    hf, wf = _fast_len(h), _fast_len(w)
    spec = jnp.fft.rfft2(x, s=(hf, wf))
    lab = jnp.pad(labels, ((0, hf - labels.shape[0]), (0, wf - labels.shape[1])), constant_values=-1)
    n_loop = jnp.max(jnp.where(wts != 0, jnp.arange(rank)[None, :] + 1, 0), axis=1)  # last used + 1

    def stack_body(s, acc):
        ms = (lab == s).astype(jnp.float32)

        def comp(k, acc):
            vk = jax.lax.dynamic_index_in_dim(jax.lax.dynamic_index_in_dim(v, s, 0, False), k, 0, False)
            fk = _dft_kernel(vk, (hf, wf))
            coef = jnp.fft.irfft2(spec * jnp.conj(fk), s=(hf, wf)) * (ms * wts[s, k])
            return acc + jnp.fft.rfft2(coef) * fk

        return jax.lax.fori_loop(0, n_loop[s], comp, acc)

    acc = jax.lax.fori_loop(0, d, stack_body, jnp.zeros(spec.shape, spec.dtype))
    return jnp.fft.irfft2(acc, s=(hf, wf))[:h, :w]


def _canvas_faithful(x, v, wts, labels, p):
    """Paper-literal canvas: per stack, gather patches, project, reconstruct, scatter-add."""
    h, w = x.shape
    d, rank = wts.shape
    hv, wv = labels.shape
    vf = v.reshape(d, rank, p * p)
    pat = _patches.extract(x, p)  # (N, p²)
    lab = labels.reshape(-1)

    def stack_body(s, rows):
        vs = vf[s]
        coef = jnp.matmul(pat, vs.T, precision=_HI) * wts[s]
        rec = jnp.matmul(coef, vs, precision=_HI)
        return rows + rec * (lab == s)[:, None]

    rows = jax.lax.fori_loop(0, d, stack_body, jnp.zeros_like(pat))
    return _patches.fold(rows, (h, w), p)


def _terrain(processed, p, shape, all_or_none):
    """Patch terrain; when every label is the same (one stack) it is separable: rows × cols counts."""
    if not all_or_none:
        return patch_terrain(processed, p, shape)
    h, w = shape
    u = np.arange(h)
    v = np.arange(w)
    cr = np.minimum(u, h - p) - np.maximum(u - p + 1, 0) + 1
    cc = np.minimum(v, w - p) - np.maximum(v - p + 1, 0) + 1
    return jnp.asarray(np.outer(cr, cc).astype(np.float32)) * processed[0, 0].astype(jnp.float32)


def _reconstruct_impl(x, v, labels, wts, max_stacks, p, path, spec=None):
    d = v.shape[0]
    if path == "faithful":
        canvas = _canvas_faithful(x, v, wts, labels, p)
    elif d == 1:
        canvas = _canvas_single(x, v[0], wts[0], p, spec)
    else:
        canvas = _canvas_stacks(x, v, wts, labels, p)
    terrain = _terrain(labels < max_stacks, p, x.shape, d == 1)
    return jnp.where(terrain > 0, canvas / jnp.maximum(terrain, 1.0), x)


_reconstruct = jax.jit(_reconstruct_impl, static_argnames=("p", "path"))


def reconstruct(image, dec, n_keep, *, max_stacks=None, path="fast"):
    """Denoised image from a decomposition and the number of kept components per stack.

    Args:
      image: (H, W) float32, the image that was decomposed.
      dec: `Decomposition`.
      n_keep: (d,) int (or scalar) number of leading eigenpatches kept per stack (traced: no
        recompilation per value).
      max_stacks: process only stacks 0..max_stacks−1 (an interim result; default all).
      path: "fast" or "faithful" (same result to float32 rounding).

    Returns:
      (H, W) float32: canvas ÷ patch terrain; pixels no processed patch covers keep the input.
    """
    x = jnp.asarray(image, jnp.float32)
    d, rank, p, _ = dec.eigenpatches.shape
    ms = d if max_stacks is None else max_stacks
    wts = _weights(n_keep, d, rank, ms)
    return _reconstruct(x, dec.eigenpatches, dec.labels, wts, jnp.asarray(ms, jnp.int32), p, path)


@functools.partial(jax.jit, static_argnames=("p", "max_rank", "path"))
def _each_rank(x, v, labels, sel, p, max_rank, path):
    d, rank = v.shape[:2]
    processed = sel[labels]

    def one(k):
        wts = (jnp.arange(rank)[None, :] == k).astype(jnp.float32) * sel[:, None]
        if path == "faithful":
            return _canvas_faithful(x, v, wts, labels, p)
        if d == 1:
            return _canvas_single(x, v[0], wts[0], p)
        return _canvas_stacks(x, v, wts, labels, p)

    canv = jax.lax.map(one, jnp.arange(max_rank))
    canv = jnp.cumsum(canv, axis=0)
    terrain = _terrain(processed, p, x.shape, d == 1)
    return jnp.where(terrain > 0, canv / jnp.maximum(terrain, 1.0), x)


def reconstruct_each_rank(image, dec, *, max_rank=25, stack=None, path="fast"):
    """Reconstructions keeping the first 1, 2, …, max_rank components (every stack alike).

    Component contributions add up, so this is one canvas per component, a cumulative sum and a
    division by the same terrain.

    Args:
      image: (H, W) float32.
      dec: `Decomposition`.
      max_rank: number of reconstructions (≤ R).
      stack: if given, use only that stack's patches (terrain from that stack alone; pixels it
        does not cover keep the input) — for per-stack labels.
      path: "fast" or "faithful".

    Returns:
      (max_rank, H, W) float32; entry k keeps components 0..k.
    """
    x = jnp.asarray(image, jnp.float32)
    d, rank, p, _ = dec.eigenpatches.shape
    max_rank = int(min(max_rank, rank))
    sel = jnp.ones(d, jnp.float32) if stack is None else (jnp.arange(d) == stack).astype(jnp.float32)
    return _each_rank(x, dec.eigenpatches, dec.labels, sel, p, max_rank, path)


# ---------------------------------------------------------------------------------------------
# Classifier interface
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("size",))
def _classifier_inputs(v, s, size):
    lead = v.shape[:-2]
    pv = jax.image.resize(v, lead + (size, size), method="linear", antialias=False)
    top = jnp.maximum(s[..., :1], jnp.finfo(jnp.float32).tiny)
    return pv[..., None].astype(jnp.float32), (s / top)[..., None].astype(jnp.float32)


def classifier_inputs(dec, *, size=CLASSIFIER_SIZE):
    """Classifier inputs of a decomposition.

    Each eigenpatch (unit norm, sign as in the decomposition) is resized to size × size by bilinear
    interpolation with half-pixel centres and no antialiasing (= PyTorch
    ``F.interpolate(mode="bilinear", align_corners=False)``); the singular values are divided by
    the stack's largest.

    Args:
      dec: `Decomposition` (eigenpatches (…, d, R, p, p) — leading batch axes allowed).

    Returns:
      (patches (…, d, R, size, size, 1) float32, eigvals (…, d, R, 1) float32 in [0, 1]).
    """
    return _classifier_inputs(dec.eigenpatches, dec.singular_values, int(size))


@jax.jit
def keep_count(probs):
    """Number of kept components per stack from usefulness probabilities (the rank-order rule).

    Args:
      probs: (…, R) probabilities in rank order.

    Returns:
      (…,) int32: the length of the leading run with prob ≥ 0.5, at least 1.
    """
    keep = (jnp.asarray(probs) >= 0.5).astype(jnp.int32)
    return jnp.maximum(jnp.sum(jnp.cumprod(keep, axis=-1), axis=-1), 1).astype(jnp.int32)


def heuristic_keep(singular_values, *, ratio=2.0):
    """Fallback rule when no classifier is available: keep the leading run with σ_k² ≥ ratio · σ_R².

    The trailing (R-th) eigenvalue estimates the noise floor of the stack; components whose energy
    is below ``ratio`` times it are treated as noise. Returns (…,) int32 ≥ 1.
    """
    lam = jnp.asarray(singular_values) ** 2
    keep = (lam >= ratio * lam[..., -1:]).astype(jnp.int32)
    return jnp.maximum(jnp.sum(jnp.cumprod(keep, axis=-1), axis=-1), 1).astype(jnp.int32)


def _default_classifier():
    """The shipped classifier as a callable, or None (with a warning) when it is not available."""
    try:
        from ..models import eigenpatch_classifier as ec
        return ec.load_default()
    except (ImportError, AttributeError, FileNotFoundError, OSError) as err:
        warnings.warn(f"REUCID: shipped eigenpatch classifier unavailable ({err}); using the "
                      "eigenvalue heuristic `heuristic_keep` instead", RuntimeWarning, stacklevel=3)
        return None
    except Exception as err:  # e.g. MethodNotAvailable from the model module
        warnings.warn(f"REUCID: shipped eigenpatch classifier unavailable ({err}); using the "
                      "eigenvalue heuristic `heuristic_keep` instead", RuntimeWarning, stacklevel=3)
        return None


# ---------------------------------------------------------------------------------------------
# Path choice and the end-to-end call
# ---------------------------------------------------------------------------------------------

def choose_path(shape, patch_size, n_stacks, *, rank=25):
    """'fast' or 'faithful' from a flop model (see benchmarks/reucid_speed_probe.py).

    Fast: one stack → O(N p²) + a few FFTs; several stacks → Gram O(N p⁴) + 2 FFTs per kept
    component. Faithful: randomized SVD ≈ 2 (2q + 2) N p² (R + o) plus projection 4 N p² R.
    The fast path wins for every realistic size; the faithful path is chosen only when the
    image is so small that the FFT set-up dominates. Measured (single-thread CPU time, p = 11,
    8 kept, one stack): 256² fast 15 ms vs faithful 870 ms; 512² 19 ms vs 3.4 s.
    """
    h, w = shape[-2:]
    p = patch_size
    n = (h - p + 1) * (w - p + 1)
    fft = 5 * h * w * max(1.0, math.log2(h * w))
    if n_stacks == 1:
        fast = 4 * fft + 2 * 441 * 4 * (p - 1) * (h + w) + 2 * 4 * (p - 1) * (h + w) * p * p * rank
    else:
        fast = 2 * n * p**4 + n_stacks * 8 * 2 * fft
    faithful = 2 * 6 * n * p * p * (rank + 10) + 4 * n * p * p * rank
    return "fast" if fast <= faithful else "faithful"


def _check_patch_size(p, h, w):
    if isinstance(p, bool) or int(p) != p or int(p) < 1 or int(p) % 2 == 0:
        raise InputError(f"patch size must be an odd positive integer, got {p!r}")
    p = int(p)
    if min(h, w) < 2 * p:
        raise InputError(f"image is {h}x{w} pixels but REUCID with patch size {p} needs at least "
                         f"{2 * p}x{2 * p} (2 × patch size); pass a smaller patch_size")
    return p


@functools.partial(jax.jit, static_argnames=("p", "d", "rank", "size"))
def _frames_decompose(frames, labels, p, d, rank, size):
    v, s, spec = jax.vmap(lambda f: _decompose_fast_impl(f, labels, p, d, rank))(frames)
    pv, ev = _classifier_inputs(v, s, size)
    return v, s, pv, ev, spec


@functools.partial(jax.jit, static_argnames=("p",))
def _frames_reconstruct(frames, v, labels, n_keep, max_stacks, spec, p):
    d, rank = v.shape[1:3]

    def one(f, vf, nk, sp):
        wts = _weights(nk, d, rank, max_stacks)
        return _reconstruct_impl(f, vf, labels, wts, max_stacks, p, "fast", sp)

    return jax.vmap(one)(frames, v, n_keep, spec)


def denoise(image, *, classifier: Callable | None = None, n_keep=None, patch_size=None, memory_budget=None,
            n_stacks=None, max_stacks=None, rank=25, path="auto", seed=0):
    """REUCID denoising of an image or a stack of frames.

    Args:
      image: (H, W) or (T, H, W) real array (finite values).
      classifier: callable ``(patches (n, R, 25, 25, 1), eigvals (n, R, 1)) -> probs (n, R)``;
        default: the shipped classifier (`jaxdn.models.eigenpatch_classifier.load_default`).
      n_keep: int or (d,) ints: skip the classifier and keep this many components per stack.
      patch_size: odd p; default estimated from the ACF (`psf.estimate_patch_size`).
      memory_budget: bytes one stack's patch matrix may take (→ number of stacks d).
      n_stacks: number of stacks d (overrides ``memory_budget``).
      max_stacks: process only the first k stacks (an interim result).
      rank: eigenpatches computed per stack (R, ≤ p²).
      path: "auto" (`choose_path`), "fast" or "faithful".
      seed: seeds the stack labels (and the randomized SVD of the faithful path).

    Returns:
      float32 array of the input's shape.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise InputError(f"expected an image (H, W) or a stack (T, H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    x = np.asarray(arr, np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"image has {int((~np.isfinite(x)).sum())} NaN/inf pixels; REUCID needs finite values")
    h, w = x.shape[-2:]
    frames = x.reshape((-1, h, w))
    if patch_size is None:
        if min(h, w) < 10:
            raise InputError(f"image is {h}x{w} pixels; REUCID needs at least 10x10 (2 × the smallest patch size 5)")
        half = min(h, w) // 2
        patch_size = _psf.estimate_patch_size(frames if frames.shape[0] > 1 else frames[0],
                                              max_size=max(5, min(31, half if half % 2 else half - 1)))
    p = _check_patch_size(patch_size, h, w)
    # Constant frames are returned unchanged (nothing to denoise; avoids 0/0 in the classifier).
    flat = frames.reshape(frames.shape[0], -1)
    constant = flat.max(axis=1) == flat.min(axis=1)
    if constant.all():
        return x.copy()
    if n_stacks is None:
        n_stacks = _patches.n_stacks_for_budget((h, w), p, memory_budget_bytes=memory_budget)
    d = int(n_stacks)
    if d < 1:
        raise InputError(f"n_stacks must be ≥ 1, got {n_stacks}")
    rank = int(min(rank, p * p))
    ms = d if max_stacks is None else int(max_stacks)
    if path == "auto":
        path = choose_path((h, w), p, d, rank=rank)
    if path not in ("fast", "faithful"):
        raise InputError(f"unknown path {path!r}; use 'auto', 'fast' or 'faithful'")
    key = jax.random.PRNGKey(seed)
    labels = _patches.stack_labels(key, (h, w), p, d)
    fr = jnp.asarray(frames)
    if path == "fast":
        v, s, pv, ev, spec = _frames_decompose(fr, labels, p, d, rank, CLASSIFIER_SIZE)
    else:
        decs = [decompose(f, patch_size=p, labels=labels, n_stacks=d, rank=rank, path="faithful",
                          key=jax.random.fold_in(key, 1)) for f in fr]
        v = jnp.stack([dd.eigenpatches for dd in decs])
        s = jnp.stack([dd.singular_values for dd in decs])
        pv, ev = _classifier_inputs(v, s, CLASSIFIER_SIZE)
    t = frames.shape[0]
    if n_keep is not None:
        nk = jnp.broadcast_to(jnp.asarray(n_keep, jnp.int32), (t, d))
    else:
        if classifier is None:
            classifier = _default_classifier()
        if classifier is None:
            nk = heuristic_keep(s)
        else:
            probs = classifier(pv.reshape((t * d,) + pv.shape[2:]), ev.reshape(t * d, rank, 1))
            probs = jnp.asarray(probs).reshape(t, d, rank)
            nk = keep_count(probs)
    nk = jnp.clip(nk, 1, rank)
    if path == "fast":
        out = _frames_reconstruct(fr, v, labels, nk, jnp.asarray(ms, jnp.int32), spec, p)
    else:
        out = jnp.stack([reconstruct(f, Decomposition(v[i], s[i], labels), nk[i], max_stacks=ms, path="faithful")
                         for i, f in enumerate(fr)])
    out = np.array(out, np.float32)
    out[constant] = frames[constant]
    return out.reshape(x.shape)
