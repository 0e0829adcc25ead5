"""Per-stage timing of the REUCID fast path (tuning aid, not the benchmark suite).

    python benchmarks/reucid_speed_probe.py [--sizes 256 512 890] [--p 11] [--keep 8] [--stacks 1]

Prints compile time (first call) and steady-state ms per stage (best of --reps) per image size.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdn.reucid import patches, pipeline, psf


def _time(fn, reps):
    """(first-call wall ms, best steady wall ms, best steady process-CPU ms).

    On a shared machine wall time includes waiting for cores; CPU time (all threads) does not, and
    on an idle 2-core machine wall ≥ CPU / 2.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best = cpu = float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return first * 1e3, best * 1e3, cpu * 1e3


def _image(size, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    clean = (np.cos(2 * np.pi * xx / 9.0) * np.cos(2 * np.pi * (0.5 * xx + yy) / 10.0) + 1.0) ** 2
    lam = 20.0 * clean / clean.max()
    return (rng.poisson(lam) + rng.normal(0, 1.0, lam.shape)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 890])
    ap.add_argument("--p", type=int, default=11)
    ap.add_argument("--keep", type=int, default=8)
    ap.add_argument("--stacks", type=int, default=1)
    ap.add_argument("--rank", type=int, default=25)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    try:
        from jaxdn.models import eigenpatch_classifier as ec
        clf = ec.load_default()
    except Exception:
        from flax import nnx
        from jaxdn.models import eigenpatch_classifier as ec
        clf = ec.make_predictor(ec.EigenpatchClassifier(rngs=nnx.Rngs(0)))
    p, d, r = args.p, args.stacks, args.rank
    print(f"p={p} stacks={d} rank={r} keep={args.keep}  (first-call wall ms / steady wall ms / steady CPU ms)")
    for size in args.sizes:
        x = jnp.asarray(_image(size))
        lab = patches.stack_labels(jax.random.PRNGKey(0), x.shape, p, d)
        rows = {}
        rows["psf"] = _time(lambda: psf.estimate_patch_size(x), args.reps)
        gram = jax.jit(lambda x, lab: pipeline.gram_matrices(x, lab, patch_size=p, n_stacks=d))
        rows["gram"] = _time(lambda: gram(x, lab), args.reps)
        g = gram(x, lab)
        eig = jax.jit(lambda g: pipeline._eig_from_gram(g, r))
        rows["eigh"] = _time(lambda: eig(g), args.reps)
        dec = pipeline.decompose(x, patch_size=p, labels=lab, n_stacks=d, rank=r)
        rows["decompose(gram+eigh)"] = _time(lambda: pipeline.decompose(x, patch_size=p, labels=lab, n_stacks=d, rank=r), args.reps)
        pv, ev = pipeline.classifier_inputs(dec)
        rows["clf_inputs"] = _time(lambda: pipeline.classifier_inputs(dec), args.reps)
        rows["classifier"] = _time(lambda: clf(pv, ev), args.reps)
        nk = jnp.full((d,), args.keep, jnp.int32)
        rows["reconstruct"] = _time(lambda: pipeline.reconstruct(x, dec, nk), args.reps)
        xn = np.asarray(x)
        rows["denoise(total)"] = _time(lambda: pipeline.denoise(xn, classifier=clf, n_stacks=d, rank=r,
                                                                 patch_size=None), args.reps)
        rows["denoise(p fixed)"] = _time(lambda: pipeline.denoise(xn, classifier=clf, n_stacks=d, rank=r,
                                                                   patch_size=p), args.reps)
        print(f"--- {size}x{size} (p={p}; estimated p={psf.estimate_patch_size(x)})")
        for k, (c, s, u) in rows.items():
            print(f"  {k:22s} {c:9.1f} {s:9.2f} {u:9.2f}")


if __name__ == "__main__":
    main()
