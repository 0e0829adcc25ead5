"""Noise2Atom benchmark: quality on a simulated drifting low-dose movie and train-step speed.

    python benchmarks/noise2atom_bench.py quality [--weights W] [--frames 16] [--peak 3]
    python benchmarks/noise2atom_bench.py speed --variants small,fast [--steps 2]

`quality` calls `jaxdn.train.noise2atom.evaluate` (CSS vs the clean movie's own CSS, PSNR vs a
Gaussian filter tuned on the same movie, atom-column F1 at 2 px, flat and gradient background) and
prints a markdown table; `speed` times the fused train step (critic ×5 + generators) of config
variants after compilation. Results are pasted into `benchmarks/results/noise2atom.md`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def quality(args) -> None:
    from jaxdn.train.noise2atom import evaluate
    r = evaluate(weights=args.weights, outdir=Path(args.outdir), frames=args.frames,
                 peak_electrons=args.peak, seed=args.seed, quiet=True)
    print(json.dumps(r, indent=2))
    print("\n| background | CSS clean | CSS noisy | CSS Gauss | CSS N2A | PSNR noisy | PSNR Gauss (σ) | PSNR N2A "
          "| F1 clean | F1 Gauss | F1 N2A | false atoms/true Gauss | N2A |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in ("flat", "gradient"):
        q = r[name]
        print(f"| {name} | {q['css_clean']:.3f} | {q['css_noisy']:.3f} | {q['css_gauss']:.3f} | {q['css_denoised']:.3f} "
              f"| {q['psnr_noisy']:.2f} | {q['psnr_gauss']:.2f} ({q['gauss_sigma']}) | {q['psnr_denoised']:.2f} "
              f"| {q['atoms_clean']['f1']:.3f} | {q['atoms_gauss']['f1']:.3f} | {q['atoms_denoised']['f1']:.3f} "
              f"| {q['atoms_gauss']['false_atoms_per_true']:.3f} | {q['atoms_denoised']['false_atoms_per_true']:.3f} |")


def speed(args) -> None:
    import jax
    import numpy as np
    from jaxdn.train import noise2atom as T
    from jaxdn.train.config import load_config
    for variant in args.variants.split(","):
        cfg = load_config(f"configs/noise2atom.py:{variant}")
        gdefs, init_state, tx = T.graphdefs_and_init(cfg)
        state = init_state()
        frames = jax.numpy.asarray(np.random.default_rng(0).uniform(-1, 1, (4, cfg.crop * 2, cfg.crop * 2)).astype(np.float32))
        batch = T.make_batch_fn(cfg)(jax.random.key(0), 0, {"frames": frames})
        step = jax.jit(T.make_train_step(cfg, gdefs, tx))
        t = time.perf_counter()
        compiled = step.lower(state, batch, jax.random.key(0)).compile()
        t_compile = time.perf_counter() - t
        flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
        state, _ = compiled(state, batch, jax.random.key(0))
        jax.block_until_ready(state)
        times = []
        for i in range(args.steps):
            t = time.perf_counter()
            state, m = compiled(state, batch, jax.random.key(i + 1))
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t)
        print(json.dumps({"variant": variant, "compile_s": t_compile, "s_per_step": min(times),
                          "gflop_per_step": flops / 1e9, "gflop_per_s": flops / 1e9 / min(times)}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--weights", default=None)
    q.add_argument("--frames", type=int, default=16)
    q.add_argument("--peak", type=float, default=3.0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--outdir", default="/tmp/n2a_eval")
    s = sub.add_parser("speed")
    s.add_argument("--variants", default="small")
    s.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    quality(args) if args.cmd == "quality" else speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
