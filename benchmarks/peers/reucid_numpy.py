"""Paper-faithful REUCID in NumPy / SciPy / scikit-learn (the speed and correctness peer).

Written independently of `jaxdn.reucid` from the paper (Mitchell, Sanvito & Jones, Sci. Rep. 2025,
Algorithm 1), the way its authors describe their NumPy implementation:

1. PSF width from the FFT autocorrelation: radial average, first minimum, else first inflection
   (integer radius); p = the odd integer nearest that width, clamped to [5, 31].
2. Every valid top-left pixel ((m−p+1)×(n−p+1) of them) gets a random stack label 0..d−1.
3. Per stack: the patch matrix is materialised (`sliding_window_view` + boolean indexing, N × p²),
   `sklearn.utils.extmath.randomized_svd` (rank 25, 10 oversamples, 2 power iterations).
4. Eigenpatches (rows of Vᵀ) resized to 25×25 (`scipy.ndimage.zoom`, linear), singular values
   divided by the largest, classified by the shipped weights with a NumPy forward pass; the kept
   count is the leading run of probabilities ≥ 0.5 (at least 1), the same rule as jaxdn.
5. Patches projected onto the kept eigenpatches, reconstructed, added onto the canvas.
6. Patch terrain from the processed top-left indicator with running sums (the paper's "rolling"
   calculation, here as cumulative sums along both axes); output = canvas ÷ terrain.

No centring of the patch matrix (the paper decomposes the raw patches). float64 like the paper by
default; ``dtype=np.float32`` for the operational precision.

Usage::

    from benchmarks.peers.reucid_numpy import denoise
    out = denoise(noisy, weights_path="jaxdn/weights/reucid_classifier.npz")
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["estimate_patch_size", "stack_labels", "decompose_stack", "resize_eigenpatches",
           "load_classifier", "classifier_forward", "keep_count", "reconstruct", "patch_terrain",
           "denoise"]

RANK = 25
OVERSAMPLE = 10
POWER_ITERS = 2
INPUT = 25


# --- 1. PSF ------------------------------------------------------------------------------------

def radial_acf(image: np.ndarray) -> np.ndarray:
    """Radially averaged, normalised autocorrelation (ACF(0) = 1), index = radius in px."""
    x = np.asarray(image, np.float64)
    x = x - x.mean()
    f = np.fft.rfft2(x)
    acf = np.fft.irfft2(f * np.conj(f), s=x.shape)
    acf = np.fft.fftshift(acf)
    cy, cx = x.shape[0] // 2, x.shape[1] // 2
    yy, xx = np.indices(x.shape)
    r = np.rint(np.hypot(yy - cy, xx - cx)).astype(int)
    rmax = min(cy, cx)
    sums = np.bincount(r.ravel(), acf.ravel())
    counts = np.bincount(r.ravel())
    prof = sums[:rmax] / counts[:rmax]
    return prof / prof[0] if prof[0] > 0 else prof


def estimate_patch_size(image: np.ndarray, *, lo: int = 5, hi: int = 31) -> int:
    """Odd patch size ≈ the radius of the ACF's first minimum (else first inflection)."""
    prof = radial_acf(image)
    d1 = np.diff(prof)
    width = None
    for i in range(1, len(d1)):
        if d1[i - 1] < 0 <= d1[i]:  # first local minimum at i
            width = i
            break
    if width is None:
        d2 = np.diff(prof, 2)
        for i in range(1, len(d2)):
            if d2[i - 1] < 0 <= d2[i]:  # concave -> convex: first inflection
                width = i + 1
                break
    if width is None:
        width = lo
    p = 2 * int(width // 2) + 1  # the odd integer nearest to the width
    return int(min(max(p, lo), hi - (1 - hi % 2)))


# --- 2. stacks ---------------------------------------------------------------------------------

def stack_labels(shape, p: int, n_stacks: int, seed: int = 0) -> np.ndarray:
    """Random stack label in [0, n_stacks) for each valid top-left pixel, (m−p+1, n−p+1)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_stacks, size=(shape[0] - p + 1, shape[1] - p + 1))


# --- 3. rSVD -----------------------------------------------------------------------------------

def decompose_stack(patch_matrix: np.ndarray, *, rank: int = RANK, seed: int = 0):
    """Randomized SVD of an (N, p²) patch matrix -> (S (rank,), Vt (rank, p²))."""
    from sklearn.utils.extmath import randomized_svd
    _, s, vt = randomized_svd(patch_matrix, n_components=rank, n_oversamples=OVERSAMPLE,
                              n_iter=POWER_ITERS, random_state=seed)
    return s, vt


# --- 4. classifier ------------------------------------------------------------------------------

def resize_eigenpatches(vt: np.ndarray, p: int, size: int = INPUT) -> np.ndarray:
    """(R, p²) eigenpatches -> (R, size, size, 1), linear interpolation (scipy.ndimage.zoom)."""
    from scipy.ndimage import zoom
    pats = vt.reshape(-1, p, p)
    out = zoom(pats, (1, size / p, size / p), order=1, mode="nearest", grid_mode=True)
    return out[..., None]


def load_classifier(path) -> dict:
    """The classifier's arrays from a jaxdn weights `.npz` (keys like 'conv1/kernel')."""
    with np.load(path, allow_pickle=False) as f:
        return {k: np.asarray(f[k]) for k in f.files if not k.startswith("__")}


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _conv(x, kernel, bias, pad):
    """NHWC cross-correlation, stride 1, zero padding `pad`; kernel (kh, kw, cin, cout)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))  # (B, H', W', C, kh, kw)
    return np.einsum("bhwcij,ijco->bhwo", win, kernel, optimize=True) + bias


def _maxpool2(x):
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, :2 * h2, :2 * w2].reshape(b, h2, 2, w2, 2, c).max(axis=(2, 4))


def classifier_forward(weights: dict, patches: np.ndarray, eigvals: np.ndarray) -> np.ndarray:
    """NumPy forward pass of the eigenpatch classifier (paper Fig. 3).

    Args:
      weights: from `load_classifier`.
      patches: (B, 25, 25, 1); eigvals: (B, 1).
    Returns:
      (B,) probabilities.
    """
    w = weights
    dt = patches.dtype
    x = _elu(_conv(patches, w["conv1/kernel"].astype(dt), w["conv1/bias"].astype(dt), 1))
    x = _maxpool2(x)
    x = _elu(_conv(x, w["conv2/kernel"].astype(dt), w["conv2/bias"].astype(dt), 1))
    x = _maxpool2(x)
    x = x.mean(axis=(1, 2))
    x = np.concatenate([x, eigvals.astype(dt)], axis=-1)
    x = _elu(x @ w["fc3/kernel"] + w["fc3/bias"])
    x = _elu(x @ w["fc4/kernel"] + w["fc4/bias"])
    logits = (x @ w["out/kernel"] + w["out/bias"])[:, 0]
    return 1.0 / (1.0 + np.exp(-logits))


def keep_count(probs: np.ndarray) -> int:
    """Leading run of probabilities ≥ 0.5, at least 1."""
    useful = np.asarray(probs) >= 0.5
    n = int(np.argmin(useful)) if not useful.all() else len(useful)
    return max(n, 1)


# --- 5./6. reconstruction and terrain -----------------------------------------------------------

def patch_terrain(processed: np.ndarray, p: int, shape) -> np.ndarray:
    """Number of processed patches covering each pixel, from the top-left indicator.

    terrain[y, x] = Σ processed[y−p+1..y, x−p+1..x] (the paper's trigger region), via running
    sums along rows and columns.
    """
    pad = np.zeros(shape, np.float64)
    pad[:processed.shape[0], :processed.shape[1]] = processed
    c = np.cumsum(np.cumsum(pad, axis=0), axis=1)
    c = np.pad(c, ((p, 0), (p, 0)))
    return c[p:, p:] - c[:-p, p:] - c[p:, :-p] + c[:-p, :-p]


def reconstruct(image, stacks, p):
    """Canvas and terrain from per-stack (mask (M, N) bool, Vt_kept (k, p²)); output image.

    Each stack's patches are projected onto its kept eigenpatches and placed back.
    """
    m, n = image.shape
    windows = sliding_window_view(image, (p, p))  # (M, N, p, p) view
    canvas = np.zeros((m, n), image.dtype)
    processed = np.zeros(windows.shape[:2], bool)
    for mask, vk in stacks:
        x = windows[mask].reshape(-1, p * p)  # materialised stack
        rec = (x @ vk.T) @ vk  # (N_s, p²)
        full = np.zeros(windows.shape[:2] + (p * p,), image.dtype)
        full[mask] = rec
        full = full.reshape(windows.shape)
        for di in range(p):
            for dj in range(p):
                canvas[di:di + windows.shape[0], dj:dj + windows.shape[1]] += full[:, :, di, dj]
        processed |= mask
    terrain = patch_terrain(processed, p, (m, n)).astype(image.dtype)
    return np.where(terrain > 0, canvas / np.maximum(terrain, 1), image)


def denoise(image, *, weights_path=None, patch_size=None, n_stacks=1, seed=0, n_keep=None,
            rank=RANK, dtype=np.float64):
    """REUCID, paper-faithful NumPy version.

    Args:
      image: (H, W) array.
      weights_path: classifier `.npz` (jaxdn weights format); required unless `n_keep` is given.
      patch_size: odd patch size; None estimates it from the ACF.
      n_stacks: number of workload divisions d.
      seed: seeds the stack labels and the randomized SVD.
      n_keep: int or (d,) kept counts that override the classifier.
      rank: eigenpatches per stack.
      dtype: float64 (paper) or float32.

    Returns:
      (H, W) denoised image, `dtype`.
    """
    img = np.asarray(image, dtype)
    p = int(patch_size) if patch_size else estimate_patch_size(img)
    labels = stack_labels(img.shape, p, n_stacks, seed)
    windows = sliding_window_view(img, (p, p))
    weights = load_classifier(weights_path) if n_keep is None else None
    keeps = np.broadcast_to(np.asarray(n_keep if n_keep is not None else 0), (n_stacks,))
    stacks = []
    for s in range(n_stacks):
        mask = labels == s
        if not mask.any():
            continue
        x = windows[mask].reshape(-1, p * p)
        sv, vt = decompose_stack(x, rank=min(rank, min(x.shape)), seed=seed + s)
        if n_keep is None:
            pats = resize_eigenpatches(vt, p).astype(np.float32)
            ev = (sv / sv[0])[:, None].astype(np.float32)
            k = keep_count(classifier_forward(weights, pats, ev))
        else:
            k = int(keeps[s])
        stacks.append((mask, vt[:k].astype(dtype)))
    return reconstruct(img, stacks, p)
