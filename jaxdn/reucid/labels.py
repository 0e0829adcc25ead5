"""Training labels for REUCID's eigenpatch classifier, from simulated images with known ground truth.

The paper labelled eigenpatches with a survey (the optimal number α* of leading eigenpatches per
image, as judged by 224 people) and proposed an *edited IEF* to replace it:
``IEF(α) / c**α`` with c = 0.64, where ``IEF(α) = Σ(noisy − clean)² / Σ(rec_α − clean)²`` and
``rec_α`` keeps the first α eigenpatches. We generate the data the same way on simulated images:

1. a clean image (HAADF-like lattice, coarse lattice or random blobs, `IMAGE_KINDS`) in [0, 1];
2. Poisson shot noise at a dose drawn log-uniformly (e/Å²) + Gaussian detector noise
   (`jaxdn.simulate.noise.poisson_gaussian`), normalised back to the clean scale by
   ``dose · pixel_size²`` so clean, noisy and reconstructions share one scale;
3. the pipeline's own steps: patch size from the noisy image's ACF, stack labels, decomposition
   (`pipeline.decompose`), the reconstructions for α = 1..R (`pipeline.reconstruct_each_rank`),
   and the classifier inputs (`pipeline.classifier_inputs`);
4. per stack, the PSNR and IEF of every α against the clean image (`jaxdn.metrics`).

α* is then ``argmax_α score(α)`` with score = edited IEF (``label_metric="edited_ief"``) or PSNR
(``"psnr"``). Both come from the stored curves, so switching the metric or c needs no new
decompositions. Eigenpatches 1..α* are labelled useful (1), the rest 0.

Note on the direction of the edit: ``log(IEF/c^α) = log IEF + α log(1/c)``; since PSNR(α) =
10 log10(IEF(α)) + const, maximising the edited IEF maximises ``PSNR(α) + 1.94 dB · α`` for
c = 0.64. IEF itself peaks at the PSNR-optimal α; the edit pushes α* towards R (c < 1) or
towards 1 (c > 1).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from . import patches as _patches
from . import pipeline as _pipeline
from . import psf as _psf

__all__ = ["IMAGE_KINDS", "simulate_clean", "simulate_pair", "label_curves", "edited_ief_scores",
           "alpha_star", "useful_labels", "augment8", "build_dataset", "DATA_FIELDS"]

#: Config fields the stored data set depends on (label metric and c are applied afterwards).
DATA_FIELDS = ("seed", "n_images", "image_sizes", "kinds", "doses", "pixel_size", "detector_sigma",
               "n_stacks", "rank")


def _haadf(key, size):
    from ..simulate import atoms
    return atoms.haadf_lattice(key, size=size)[0]


def _haadf_coarse(key, size):
    from ..simulate import atoms
    return atoms.haadf_lattice(key, size=size, spacing=(12.0, 24.0), sigma=(2.0, 4.0), max_atoms=1024)[0]


def _blobs(key, size):
    from ..simulate import atoms
    return atoms.noise2atom_clean(key, size=size, canvas=max(256, size))


def _graphene(key, size):
    from ..simulate import graphene  # written in parallel; optional
    return graphene.graphene(key, size=size)


#: name -> ``f(key, size) -> (size, size)`` clean image in [0, 1].
IMAGE_KINDS = {"haadf": _haadf, "haadf_coarse": _haadf_coarse, "blobs": _blobs, "graphene": _graphene}


def simulate_clean(key, *, kind, size):
    """Clean image of one family of `IMAGE_KINDS`, (size, size) float32 in [0, 1]."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image kind {kind!r}; choose from {sorted(IMAGE_KINDS)}")
    return IMAGE_KINDS[kind](key, size).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("kind", "size", "pixel_size", "detector_sigma"))
def simulate_pair(key, dose, *, kind, size, pixel_size=0.2, detector_sigma=0.05):
    """A clean image and its noisy version on the clean scale.

    Args:
      key: PRNG key.
      dose: electron dose in e/Å² (traced; vmap-able).
      kind, size: image family and side (px).
      pixel_size: Å per pixel.
      detector_sigma: detector noise std relative to the peak expected count.

    Returns:
      (clean (size, size), noisy (size, size)) float32; ``noisy = counts / (dose · pixel_size²)``.
    """
    from ..simulate import noise
    k_img, k_noise = jax.random.split(key)
    clean = simulate_clean(k_img, kind=kind, size=size)
    counts = noise.poisson_gaussian(k_noise, clean, dose=dose, pixel_size=pixel_size,
                                    detector_sigma=detector_sigma)
    return clean, counts / (dose * pixel_size * pixel_size)


@functools.partial(jax.jit, static_argnames=("p", "d", "rank"))
def _curves(clean, noisy, labels, p, d, rank):
    dec = _pipeline.decompose(noisy, patch_size=p, labels=labels, n_stacks=d, rank=rank, path="fast")
    r = dec.eigenpatches.shape[1]
    stacks = [None] if d == 1 else list(range(d))
    ps, iefs = [], []
    for s in stacks:
        recs = _pipeline.reconstruct_each_rank(noisy, dec, max_rank=r, stack=s)  # (R, H, W)
        ref = jnp.broadcast_to(clean, recs.shape)
        ps.append(metrics.psnr(recs, ref, data_range=1.0))
        iefs.append(metrics.ief(jnp.broadcast_to(noisy, recs.shape), recs, ref))
    pv, ev = _pipeline.classifier_inputs(dec)
    return jnp.stack(ps), jnp.stack(iefs), pv, ev


def label_curves(clean, noisy, *, patch_size, labels, n_stacks=1, rank=25):
    """Quality of every truncation α = 1..R and the classifier inputs of one noisy image.

    Args:
      clean, noisy: (H, W) float32 on the same scale (clean in [0, 1]).
      patch_size: p.
      labels: (H−p+1, W−p+1) int32 stack labels (`patches.stack_labels`).
      n_stacks: d.
      rank: R.

    Returns:
      dict with ``psnr`` (d, R) dB (data range 1), ``ief`` (d, R), ``patches`` (d, R, 25, 25, 1),
      ``eigvals`` (d, R, 1). With d > 1, row s scores the reconstruction from stack s alone.
    """
    ps, iefs, pv, ev = _curves(jnp.asarray(clean, jnp.float32), jnp.asarray(noisy, jnp.float32),
                               jnp.asarray(labels, jnp.int32), int(patch_size), int(n_stacks), int(rank))
    return {"psnr": ps, "ief": iefs, "patches": pv, "eigvals": ev}


@functools.partial(jax.jit, static_argnames=("p", "d", "rank"))
def _curves_batch(clean, noisy, labels, p, d, rank):
    return jax.vmap(lambda c, n: _curves(c, n, labels, p, d, rank))(clean, noisy)


def edited_ief_scores(ief, *, c=0.64):
    """The paper's edited IEF ``IEF(α) / c**α`` for α = 1..R along the last axis.

    Args:
      ief: (..., R) IEF of the reconstructions keeping 1..R eigenpatches.
      c: editing base (paper: 0.64).

    Returns:
      (..., R) float32.
    """
    ief = jnp.asarray(ief, jnp.float32)
    alpha = jnp.arange(1, ief.shape[-1] + 1, dtype=jnp.float32)
    return ief / jnp.power(jnp.float32(c), alpha)  # = metrics.edited_ief on the images


def alpha_star(*, psnr=None, ief=None, metric="edited_ief", c=0.64):
    """Optimal number of leading eigenpatches, 1..R, per curve.

    Args:
      psnr: (..., R) PSNR curve (needed for ``metric="psnr"``).
      ief: (..., R) IEF curve (needed for ``metric="edited_ief"``).
      metric: "edited_ief" (argmax IEF / c^α, the paper) or "psnr" (argmax PSNR).
      c: edited-IEF base.

    Returns:
      (...) int32 in [1, R].
    """
    if metric == "edited_ief":
        if ief is None:
            raise ValueError("metric='edited_ief' needs the ief curve")
        score = edited_ief_scores(ief, c=c)
    elif metric == "psnr":
        if psnr is None:
            raise ValueError("metric='psnr' needs the psnr curve")
        score = jnp.asarray(psnr, jnp.float32)
    else:
        raise ValueError(f"unknown label metric {metric!r}; use 'edited_ief' or 'psnr'")
    return (jnp.argmax(score, axis=-1) + 1).astype(jnp.int32)


def useful_labels(alpha, rank):
    """(..., R) float32: 1 for eigenpatches 1..α (rank order), 0 after."""
    return (jnp.arange(rank) < jnp.asarray(alpha)[..., None]).astype(jnp.float32)


def augment8(patches):
    """The 8 orientations (4 rotations × optional transpose-flip) of square patches.

    Args:
      patches: (..., S, S, C).

    Returns:
      (8, ..., S, S, C): identity, rot90, rot180, rot270, then the same of the left-right flip.
    """
    x = jnp.asarray(patches)
    ax = (x.ndim - 3, x.ndim - 2)
    outs = []
    for base in (x, jnp.flip(x, axis=ax[1])):
        for k in range(4):
            outs.append(jnp.rot90(base, k=k, axes=ax))
    return jnp.stack(outs)


def _layout(n_images, kinds, sizes):
    """Image i -> (kind, size): kinds cycle fastest, then sizes."""
    return [(kinds[i % len(kinds)], sizes[(i // len(kinds)) % len(sizes)]) for i in range(n_images)]


def build_dataset(config, *, progress=None) -> dict[str, np.ndarray]:
    """Simulate images and compute every eigenpatch's quality curves (the label data set).

    Args:
      config: has the `DATA_FIELDS` attributes (see `configs/reucid.py`) and ``label_batch``.
      progress: optional ``callback(done, total)``.

    Returns:
      dict of NumPy arrays, one row per image (n = n_images, d stacks, R eigenpatches):
      ``patches`` (n, d, R, 25, 25, 1) float32, ``eigvals`` (n, d, R, 1), ``psnr`` (n, d, R),
      ``ief`` (n, d, R), ``dose`` (n,), ``patch_size`` (n,), ``size`` (n,), ``kind`` (n,) int index
      into config.kinds, ``psnr_noisy`` (n,).
    """
    n = int(config.n_images)
    kinds, sizes = tuple(config.kinds), tuple(int(s) for s in config.image_sizes)
    d, rank = int(config.n_stacks), int(config.rank)
    root = jax.random.key(int(config.seed))
    k_img, k_dose, k_lab = jax.random.split(root, 3)
    img_keys = jax.random.split(k_img, n)
    lo, hi = (math.log(float(v)) for v in config.doses)
    doses = np.asarray(jnp.exp(jax.random.uniform(k_dose, (n,), minval=lo, maxval=hi)), np.float32)
    layout = _layout(n, kinds, sizes)

    clean = [None] * n
    noisy = [None] * n
    for kind, size in sorted(set(layout)):
        idx = np.array([i for i, ks in enumerate(layout) if ks == (kind, size)])
        sim = jax.jit(jax.vmap(functools.partial(simulate_pair, kind=kind, size=size,
                                                 pixel_size=float(config.pixel_size),
                                                 detector_sigma=float(config.detector_sigma))))
        c, z = sim(img_keys[idx], jnp.asarray(doses[idx]))
        for j, i in enumerate(idx):
            clean[i], noisy[i] = c[j], z[j]
    psize = np.array([_psf.estimate_patch_size(z) for z in noisy], np.int32)

    out = {k: [None] * n for k in ("psnr", "ief", "patches", "eigvals")}
    groups = sorted({(layout[i][1], int(psize[i])) for i in range(n)})
    done = 0
    bsz = max(1, int(config.label_batch))
    for size, p in groups:
        idx = [i for i in range(n) if layout[i][1] == size and psize[i] == p]
        labels = _patches.stack_labels(jax.random.fold_in(k_lab, size * 1000 + p), (size, size), p, d)
        gb = min(bsz, len(idx))  # one static batch shape (one compile) per group
        for start in range(0, len(idx), gb):
            chunk = idx[start:start + gb]
            pad = chunk + [chunk[-1]] * (gb - len(chunk))
            ps, iefs, pv, ev = _curves_batch(jnp.stack([clean[i] for i in pad]),
                                             jnp.stack([noisy[i] for i in pad]), labels, p, d, rank)
            ps, iefs, pv, ev = (np.asarray(a) for a in (ps, iefs, pv, ev))
            for j, i in enumerate(chunk):
                out["psnr"][i], out["ief"][i], out["patches"][i], out["eigvals"][i] = ps[j], iefs[j], pv[j], ev[j]
            done += len(chunk)
            if progress is not None:
                progress(done, n)
    r = min(rank, int(psize.min()) ** 2)
    data = {k: np.stack([a[:, :r] for a in v]).astype(np.float32) for k, v in out.items()}
    data["dose"] = doses
    data["patch_size"] = psize
    data["size"] = np.array([s for _, s in layout], np.int32)
    data["kind"] = np.array([kinds.index(k) for k, _ in layout], np.int32)
    data["psnr_noisy"] = np.array([float(metrics.psnr(z, c, data_range=1.0)) for c, z in zip(clean, noisy)],
                                  np.float32)
    return data
