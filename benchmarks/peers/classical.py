"""Classical denoisers a microscopist would otherwise reach for (the quality/speed peers).

All take a float32 (H, W) image on the simulated images' scale (clean in [0, 1]) and return a
float32 (H, W) image. The noise level σ is estimated from the image itself
(`skimage.restoration.estimate_sigma`, wavelet MAD), so nothing here sees the clean image:

* ``gaussian``: `scipy.ndimage.gaussian_filter`, σ = 1 px (about a probe width at these samplings).
* ``tv``: `skimage.restoration.denoise_tv_chambolle`, weight = σ̂.
* ``wavelet``: `skimage.restoration.denoise_wavelet`, BayesShrink, soft thresholds (needs PyWavelets).
* ``nlm``: `skimage.restoration.denoise_nl_means`, fast mode, 5×5 patches, 13×13 search, h = 0.8 σ̂.
* ``bm3d``: `bm3d.bm3d` with σ_psd = σ̂ (only where the `bm3d` package is installed).

`available()` lists the ones importable here. The parameters are the libraries' documented
defaults/recommendations, not tuned on the benchmark images.
"""
from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["DENOISERS", "available", "gaussian", "tv", "wavelet", "nlm", "bm3d_denoise", "sigma_estimate"]


def sigma_estimate(image: np.ndarray) -> float:
    """Noise standard deviation estimated from the image (wavelet median absolute deviation)."""
    from skimage.restoration import estimate_sigma
    return float(estimate_sigma(np.asarray(image, np.float32)))


def gaussian(image: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Gaussian filter, σ in px."""
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(np.asarray(image, np.float32), sigma=sigma).astype(np.float32)


def tv(image: np.ndarray, *, weight: float | None = None) -> np.ndarray:
    """Total-variation (Chambolle) denoising with weight σ̂ unless given."""
    from skimage.restoration import denoise_tv_chambolle
    x = np.asarray(image, np.float32)
    w = sigma_estimate(x) if weight is None else weight
    return denoise_tv_chambolle(x, weight=w).astype(np.float32)


def wavelet(image: np.ndarray) -> np.ndarray:
    """Wavelet shrinkage (BayesShrink, soft), rescaling off."""
    from skimage.restoration import denoise_wavelet
    x = np.asarray(image, np.float32)
    return denoise_wavelet(x, method="BayesShrink", mode="soft", rescale_sigma=True).astype(np.float32)


def nlm(image: np.ndarray, *, h_factor: float = 0.8) -> np.ndarray:
    """Non-local means (fast mode, 5×5 patches, distance 6), h = h_factor·σ̂, σ passed to skimage."""
    from skimage.restoration import denoise_nl_means
    x = np.asarray(image, np.float32)
    s = sigma_estimate(x)
    return denoise_nl_means(x, h=h_factor * s, sigma=s, patch_size=5, patch_distance=6,
                            fast_mode=True).astype(np.float32)


def bm3d_denoise(image: np.ndarray) -> np.ndarray:
    """BM3D (`bm3d` package) with σ_psd = σ̂."""
    import bm3d as _bm3d
    x = np.asarray(image, np.float32)
    return np.asarray(_bm3d.bm3d(x, sigma_psd=sigma_estimate(x)), np.float32)


#: name -> (function, required module or None)
DENOISERS = {
    "gaussian": (gaussian, None),
    "tv": (tv, None),
    "wavelet": (wavelet, "pywt"),
    "nlm": (nlm, None),
    "bm3d": (bm3d_denoise, "bm3d"),
}


def available() -> list[str]:
    """Names of the classical denoisers whose optional dependency is installed."""
    return [n for n, (_, mod) in DENOISERS.items() if mod is None or importlib.util.find_spec(mod) is not None]
