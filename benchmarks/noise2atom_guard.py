"""Noise2Atom inversion guard: how many of N seeds end with an inverted mapping, guard off vs on.

    python benchmarks/noise2atom_guard.py --variant tiny64 --seeds 10 --steps 150
    python benchmarks/noise2atom_guard.py --variant small --seeds 10 --steps 150 --guard on

For each setting (guard off, guard on) the fused train step is compiled once and run from
`--seeds` different initialisations (and batch/dropout keys) on the same simulated noisy movie
(`jaxdn.train.noise2atom.simulate_movie`). With the guard on, the run starts as `train` does
(`canonical_sign` of the initial state) and the step's hinge + flip act during training. A run
counts as *inverted* when the mean Pearson correlation between the input and the output of M_s2c
on held-out frames is negative at the end (bright background, dark atoms — the paper's failure
mode); |corr| < 0.05 at the end is also counted as *undecided* (no mapping formed yet). Prints
JSON lines and a markdown table; paste into benchmarks/results/noise2atom.md.

Variants: ``small`` is the shipped config; ``tiny64`` is the test-size network (widths 8, one
residual block) on 64² crops with the paper's 5 critic updates — a proxy cheap enough for 10 seeds
× 2 settings on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time


def build_config(variant: str, steps: int):
    from jaxdn.train.config import load_config
    if variant == "small":
        return dataclasses.replace(load_config("configs/noise2atom.py:small"), steps=steps)
    if variant == "tiny64":
        tiny = load_config("configs/noise2atom.py:tiny")
        small = load_config("configs/noise2atom.py:small")
        return dataclasses.replace(tiny, crop=64, batch_size=6, n_critic=5, steps=steps, sim=small.sim,
                                   lowpass_size=small.lowpass_size, lowpass_variance=small.lowpass_variance)
    raise SystemExit(f"unknown variant {variant!r}")


def run(variant: str, seeds: int, steps: int, guards=(False, True)) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from jaxdn.train import noise2atom as T

    base = build_config(variant, steps)
    raw = T.simulate_movie(dataclasses.replace(base, sim=dataclasses.replace(base.sim, frames=24)),
                           jax.random.key(777))
    movie = jnp.asarray(T.preprocess(raw, background_order=base.background_order))
    train_frames, held = movie[:20], movie[20:, :base.crop * 2, :base.crop * 2, None]
    rows = []
    for guard in guards:
        cfg = dataclasses.replace(base, guard=guard)
        gdefs, _, tx = T.graphdefs_and_init(cfg)
        step = jax.jit(T.make_train_step(cfg, gdefs, tx), donate_argnums=0)
        make_batch = jax.jit(T.make_batch_fn(cfg), static_argnums=1)
        corr_fn = jax.jit(lambda p: T.output_correlation(cfg, gdefs[0], p, held))
        start = train_frames[:4, :cfg.crop, :cfg.crop, None]
        corr_start = jax.jit(lambda p: T.output_correlation(cfg, gdefs[0], p, start))
        for seed in range(seeds):
            t0 = time.perf_counter()
            _, init_state, _ = T.graphdefs_and_init(dataclasses.replace(cfg, seed=seed))
            state = init_state()
            corr0 = float(corr_fn(state["gen"][0]))
            if guard:
                state, _ = T.canonical_sign(state, corr_start(state["gen"][0]))
            key = jax.random.key(seed)
            for i in range(steps):
                kb, ks = jax.random.split(jax.random.fold_in(key, i))
                state, metrics = step(state, make_batch(kb, 0, {"frames": train_frames}), ks)
            corr = float(corr_fn(state["gen"][0]))
            row = {"variant": variant, "guard": guard, "seed": seed, "steps": steps, "corr_init": corr0,
                   "corr_final": corr, "inverted": corr < 0, "guard_flips": int(state["flips"]),
                   "cycle": float(metrics["cycle"]), "wall_s": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="tiny64", choices=("tiny64", "small"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--guard", choices=("both", "on", "off"), default="both",
                    help="settings to run (the guard-off baseline doubles the time)")
    args = ap.parse_args(argv)
    guards = {"both": (False, True), "on": (True,), "off": (False,)}[args.guard]
    rows = run(args.variant, args.seeds, args.steps, guards)
    print("\n| guard | runs | inverted at the end | of which undecided (abs corr < 0.05) | inverted at init "
          "| mean corr at the end | guard flips (total) |")
    print("|---|---|---|---|---|---|---|")
    for guard in guards:
        r = [x for x in rows if x["guard"] == guard]
        print(f"| {'on' if guard else 'off'} | {len(r)} | {sum(x['inverted'] for x in r)} "
              f"| {sum(x['inverted'] and abs(x['corr_final']) < 0.05 for x in r)} "
              f"| {sum(x['corr_init'] < 0 for x in r)} | {sum(x['corr_final'] for x in r) / len(r):.3f} "
              f"| {sum(x['guard_flips'] for x in r)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
