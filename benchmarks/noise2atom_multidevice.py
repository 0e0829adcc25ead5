"""Noise2Atom train step on a batch-sharded multi-device CPU mesh: gathered vs split row-block kernels.

    python benchmarks/noise2atom_multidevice.py --devices 2 --variant paper_bf16 --mode split --steps 4 [--set crop=64]
    python benchmarks/noise2atom_multidevice.py --devices 2 --variant paper_bf16 --mode gather --steps 4 [--set crop=64]

One process per call (the device count is fixed when JAX starts). The step is jitted with the batch
split over the ``'data'`` mesh and the state replicated, as `jaxdn.train.loop.fit` does. `split`
traces it with the mesh in context (what `fit` does since session 23), so the flat convolutions and
chunked filter gradients run on each device's own frames (`jaxdn.sharding.per_batch_shard`);
`gather` traces it without, so GSPMD gathers the batch for them (before session 23). Prints the
compile time, the all-gathers / all-reduces in the compiled program, XLA's per-device scratch
(`memory_analysis`), and the wall time of each step.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2, help="forced host (CPU) devices")
    ap.add_argument("--variant", default="paper_bf16", help="configs/noise2atom.py variant")
    ap.add_argument("--mode", choices=("split", "gather"), default="split")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, as `jaxdn train --set`")
    args = ap.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np
    from jaxdn import sharding as shd
    from jaxdn.train import noise2atom as T
    from jaxdn.train.config import load_config

    cfg = load_config(f"configs/noise2atom.py:{args.variant}", args.set)
    mesh = shd.data_mesh()
    gdefs, init_state, tx = T.graphdefs_and_init(cfg)
    state = shd.replicate(init_state(), mesh)
    rng = np.random.default_rng(0)
    frames = jax.numpy.asarray(rng.uniform(-1, 1, (4, cfg.crop * 2, cfg.crop * 2)).astype(np.float32))
    batch = shd.shard_batch(jax.device_get(T.make_batch_fn(cfg)(jax.random.key(0), 0, {"frames": frames})), mesh)
    rep = shd.replicated(mesh)
    step = jax.jit(T.make_train_step(cfg, gdefs, tx), in_shardings=(rep, shd.batch_sharding(mesh), rep),
                   out_shardings=(rep, rep))
    key = jax.random.key(0)
    t = time.perf_counter()
    with jax.set_mesh(mesh) if args.mode == "split" else contextlib.nullcontext():
        compiled = step.lower(state, batch, key).compile()
    t_compile = time.perf_counter() - t
    hlo = compiled.as_text()
    scratch = compiled.memory_analysis().temp_size_in_bytes / 1e9
    print(f"{args.variant} {args.mode} devices={mesh.size} batch={cfg.batch_size} crop={cfg.crop}: "
          f"compile {t_compile:.1f} s, all-gather {hlo.count('all-gather(')}, "
          f"all-reduce {hlo.count('all-reduce(')}, scratch {scratch:.2f} GB per device", flush=True)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    print("s/step:", " ".join(f"{x:.2f}" for x in times))


if __name__ == "__main__":
    sys.exit(main())
