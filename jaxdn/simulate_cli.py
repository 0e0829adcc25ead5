"""`jaxdn simulate KIND -n N -o DIR`: write simulated clean/noisy images with calibration.

STEM kinds use 0.2 Å pixels (0.02 nm) and Poisson shot noise at `dose` e/Å² plus 5 % Gaussian
detector noise; the noisy image is in electron counts, the clean one in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PIXEL_SIZE_A = 0.2  # Å per pixel for simulated STEM images

KINDS = {
    "stem": "HAADF-like atomic columns: noisy (counts) + clean pairs",
    "stem-movie": "one drifting low-dose STEM movie of N frames (+ clean movie)",
    "noise2atom-clean": "the Noise2Atom paper's clean domain (Gaussian atoms)",
    "graphene": "disordered graphene (TEM paper) + Gaussian noise C=0.2",
    "stm": "STM-like topographies + stripe noise",
}


def _pairs(key, n, make_clean, add_noise):
    """n (noisy, clean) pairs as host arrays: clean = make_clean(k1), noisy = add_noise(k2, clean)."""
    import jax
    noisy, clean = [], []
    for k in jax.random.split(key, n):
        k1, k2 = jax.random.split(k)
        img = make_clean(k1)
        clean.append(np.asarray(img))
        noisy.append(np.asarray(add_noise(k2, img)))
    return noisy, clean


def simulate_arrays(kind: str, *, n: int, size: int, seed: int, dose: float) -> tuple[list[np.ndarray], list[np.ndarray] | None, float | None]:
    """Return (noisy images, clean images or None, pixel size in nm or None)."""
    import jax
    from .simulate import atoms, noise

    key = jax.random.key(seed)
    if kind == "stem":
        noisy, clean = _pairs(key, n, lambda k: atoms.haadf_lattice(k, size=size)[0],
                              lambda k, c: noise.poisson_gaussian(k, c, dose=dose, pixel_size=PIXEL_SIZE_A))
        return noisy, clean, PIXEL_SIZE_A / 10
    if kind == "stem-movie":
        k1, k2 = jax.random.split(key)
        movie = atoms.drift_movie(k1, frames=n, size=size)[0]
        keys = jax.random.split(k2, n)
        noisy = jax.vmap(lambda k, f: noise.poisson_gaussian(k, f, dose=dose, pixel_size=PIXEL_SIZE_A))(keys, movie)
        return [np.asarray(noisy)], [np.asarray(movie)], PIXEL_SIZE_A / 10
    if kind == "noise2atom-clean":
        imgs = jax.vmap(lambda k: atoms.noise2atom_clean(k, size=size))(jax.random.split(key, n))
        return [np.asarray(i) for i in imgs], None, None
    if kind == "graphene":
        from .simulate import graphene
        return (*_pairs(key, n, lambda k: graphene.graphene(k, size=size), lambda k, c: noise.gaussian(k, c, c=0.2)), None)
    if kind == "stm":
        from .simulate import stm
        return (*_pairs(key, n, lambda k: stm.stm_topography(k, size=size), noise.stripes), None)
    raise ValueError(kind)


def simulate_to_dir(kind: str, *, n: int, outdir: Path, size: int = 256, seed: int = 0, dose: float = 500.0,
                    overwrite: bool = False) -> list[Path]:
    """Write `n` simulated images (or one n-frame movie) as calibrated float32 TIFFs; returns the paths."""
    from . import io
    from .errors import InputError
    if n < 1 or size < 16:
        raise InputError("need -n >= 1 and --size >= 16")
    noisy, clean, px = simulate_arrays(kind, n=n, size=size, seed=seed, dose=dose)
    unit = "nm" if px else None
    written = []
    meta = {"simulated": kind, "seed": seed, "dose_e_per_A2": dose if kind.startswith("stem") else None}
    for i, img in enumerate(noisy):
        stem = f"{kind}_{i:04d}" if len(noisy) > 1 else kind
        pairs = [(f"{stem}_noisy.tif", img)] + ([(f"{stem}_clean.tif", clean[i])] if clean is not None else [])
        if clean is None:
            pairs = [(f"{stem}.tif", img)]
        for name, arr in pairs:
            image = io.Image(data=np.asarray(arr, np.float32), pixel_size=px, unit=unit, metadata=meta, source=None)
            written.append(io.write(outdir / name, image, overwrite=overwrite))
    return written


def make_example(path: Path, *, frames: int = 4, size: int = 128, dose: float = 300.0, seed: int = 7) -> Path:
    """Write the bundled example (a noisy simulated STEM movie, float32 TIFF, ~256 KB) to `path`.

    The shipped `jaxdn/data/example_stem_stack.tif` is made by `python -m jaxdn.simulate_cli`.
    """
    from . import io
    noisy, _, px = simulate_arrays("stem-movie", n=frames, size=size, seed=seed, dose=dose)
    image = io.Image(data=noisy[0].astype(np.float32), pixel_size=px, unit="nm",
                     metadata={"simulated": "stem-movie", "seed": seed, "dose_e_per_A2": dose}, source=None)
    return io.write(path, image, overwrite=True)


if __name__ == "__main__":
    from .batch import example_path
    print(make_example(example_path()))
