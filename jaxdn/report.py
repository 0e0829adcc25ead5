"""`--report` figures: noisy | denoised | residual | power spectrum, with a scale bar."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _nice_length(width_units: float) -> float:
    """A round scale-bar length close to a fifth of the field of view."""
    target = width_units / 5
    exp = 10 ** np.floor(np.log10(target))
    for m in (5, 2, 1):
        if m * exp <= target:
            return float(m * exp)
    return float(exp)


def _display_range(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (float(img.min()), float(img.max()) + 1e-12)


def power_spectrum(img: np.ndarray) -> np.ndarray:
    """log10 power spectrum, zero frequency centred, of a Hann-windowed (H, W) image."""
    h, w = img.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    f = np.fft.fftshift(np.fft.fft2((img - img.mean()) * win))
    return np.log10(np.abs(f) ** 2 + 1e-12)


def on_input_scale(noisy: np.ndarray, denoised: np.ndarray) -> tuple[np.ndarray, bool]:
    """(denoised on the input's intensity scale, whether it had to be rescaled).

    Scale-free outputs (Noise2Atom's atom map in [0, 1] for a frame of counts) are mapped with the
    least-squares affine fit onto the input; outputs already on the input's scale (fit slope within
    0.2 of 1, offset within 20 % of the input's range) are returned unchanged.
    """
    noisy = np.asarray(noisy, np.float64)
    den = np.asarray(denoised, np.float64)
    a, b = np.linalg.lstsq(np.stack([den.ravel(), np.ones(den.size)], 1), noisy.ravel(), rcond=None)[0]
    span = float(np.ptp(noisy)) or 1.0
    if abs(a - 1.0) > 0.2 or abs(b) > 0.2 * span:
        return (a * den + b).astype(np.float32), True
    return np.asarray(denoised, np.float32), False


def save_report(path: str | os.PathLike, noisy: np.ndarray, denoised: np.ndarray, *,
                pixel_size: float | None = None, unit: str | None = None, title: str = "") -> Path:
    """Write a 4-panel PNG for one frame (the first frame of a stack).

    Args:
      path: output PNG path (written atomically).
      noisy, denoised: (H, W) or (T, H, W) arrays of the same shape.
      pixel_size, unit: calibration for the scale bar (pixels if unknown).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    noisy = np.asarray(noisy, np.float32)
    denoised = np.asarray(denoised, np.float32)
    if noisy.ndim == 3:
        noisy, denoised = noisy[0], denoised[0]
    shown, rescaled = on_input_scale(noisy, denoised)
    residual = noisy - shown
    h, w = noisy.shape
    def _unit(s):  # each half on its own log scale, so peaks show in both
        lo, hi = np.percentile(s, [5, 99.9])
        return np.clip((s - lo) / max(hi - lo, 1e-12), 0, 1)
    spec_n, spec_d = _unit(power_spectrum(noisy)), _unit(power_spectrum(denoised))
    spectrum = np.concatenate([spec_n[:, : w // 2], spec_d[:, w // 2:]], axis=1)

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), constrained_layout=True)
    lo, hi = _display_range(noisy)
    panels = [
        (noisy, "noisy", dict(cmap="gray", vmin=lo, vmax=hi)),
        (shown, "denoised (affinely rescaled to the input)" if rescaled else "denoised",
         dict(cmap="gray", vmin=lo, vmax=hi)),
        (residual, "residual (noisy − rescaled denoised)" if rescaled else "residual (noisy − denoised)", dict(cmap="RdBu_r", vmin=-np.abs(_display_range(residual)).max(),
                                                        vmax=np.abs(_display_range(residual)).max())),
        (spectrum, "power spectrum: noisy | denoised", dict(cmap="magma", vmin=0, vmax=1)),
    ]
    scale, label_unit = (pixel_size, unit) if pixel_size else (1.0, "px")
    for i, (ax, (img, name, kw)) in enumerate(zip(axes, panels)):
        im = ax.imshow(img, interpolation="nearest", **kw)
        ax.set_title(name)
        ax.set_xticks([]), ax.set_yticks([])
        if i < 3:
            length = _nice_length(w * scale)
            bar = AnchoredSizeBar(ax.transData, length / scale, f"{length:g} {label_unit}", "lower right",
                                  pad=0.4, color="white" if i < 2 else "black", frameon=False, size_vertical=max(1, h // 100))
            ax.add_artist(bar)
        if i == 2:
            fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    from .io import atomic_output
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
