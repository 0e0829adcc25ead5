"""Train-step and inference throughput of the TEM U-Net and the STM stripe autoencoder:
JAX/Flax (several variants) vs PyTorch eager (default NCHW and channels-last), side by side in
one run, with achieved GFLOP/s against the f32 matmul rate measured in the same run.

Run:  ``nice -n 5 python benchmarks/train_throughput.py [--quick] [--out benchmarks/results/throughput.json]``

FLOPs are counted analytically (convolution multiply-adds × 2; a train step = 3 × forward:
forward, input gradient, weight gradient). Compile time is reported separately and excluded
from the step times (median of `--repeats` timed calls after 2 warm-ups).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------- FLOP counts

def unet_macs_per_px(widths=(32, 64, 128)) -> float:
    c1, c2, c3 = widths
    full = 9 * 1 * c1 + 9 * c1 * c1 + 9 * (c2 + c1) * c1 + 9 * c1 * c1 + c1
    half = 9 * c1 * c2 + 9 * c2 * c2 + 9 * (c3 + c2) * c2 + 9 * c2 * c2
    quarter = 9 * c2 * c3 + 9 * c3 * c3
    return full + half / 4 + quarter / 16


def ae_macs_per_px(f=32) -> float:
    return 9 * f + 9 * f + (9 * f * f) / 4 * 2 + (9 * f * f) / 16


def _timeit(fn, repeats):
    fn(); fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# ---------------------------------------------------------------------------- peak

def matmul_peak(n=2048, repeats=5):
    import jax, jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    t = _timeit(lambda: f(a, b).block_until_ready(), repeats)
    return 2 * n ** 3 / t / 1e9


# ---------------------------------------------------------------------------- JAX

def jax_case(kind, *, batch, size, repeats, dtype="float32", im2col=False, widths=(32, 64, 128), infer=(4, 512)):
    import jax, jax.numpy as jnp, optax
    from flax import nnx
    from jaxdn.losses import mae, mse
    from jaxdn.train.loop import make_supervised_step, split_model_and_optimizer
    dt = jnp.bfloat16 if dtype == "bfloat16" else None
    if kind == "unet":
        from jaxdn.models.unet import UNet
        model = UNet(widths=widths, compute_dtype=dt, im2col_first=im2col, rngs=nnx.Rngs(0))
        loss, macs = mae, unet_macs_per_px(widths)
    else:
        from jaxdn.models.stripe_autoencoder import StripeAutoencoder
        model = StripeAutoencoder(compute_dtype=dt, im2col_thin=im2col, rngs=nnx.Rngs(0))
        loss, macs = mse, ae_macs_per_px()
    gdef, state = split_model_and_optimizer(model, optax.adam(1e-3))
    step = jax.jit(make_supervised_step(gdef, lambda m, b, k: loss(m(b["x"]), b["y"])), donate_argnums=0)
    x = jax.random.uniform(jax.random.key(0), (batch, size, size, 1))
    b = {"x": x, "y": x}
    t0 = time.perf_counter()
    compiled = step.lower(state, b, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def run():
        holder[0], m = compiled(holder[0], b, jax.random.key(0))
        m["loss"].block_until_ready()
    t = _timeit(run, repeats)
    # inference (eval mode, `infer` = (batch, side), default 4 × 512²)
    from jaxdn.train.loop import merge_model
    mdl = merge_model(gdef, holder[0]); mdl.eval()
    g2, s2 = nnx.split(mdl)
    fwd = jax.jit(lambda s, x: nnx.merge(g2, s)(x))
    nb, side = infer
    xi = jax.random.uniform(jax.random.key(1), (nb, side, side, 1))
    ti = _timeit(lambda: fwd(s2, xi).block_until_ready(), repeats)
    px = batch * size * size
    return {"step_s": t, "images_per_s": batch / t, "train_gflops": 6 * macs * px / t / 1e9,
            "compile_s": compile_s, "infer_mp_per_s": nb * side * side / ti / 1e6,
            "infer_gflops": 2 * macs * nb * side * side / ti / 1e9}


# ---------------------------------------------------------------------------- torch

def torch_case(kind, *, batch, size, repeats, channels_last=False, widths=(32, 64, 128), infer=(4, 512)):
    import torch
    from benchmarks.peers.torch_models import StripeAutoencoder, UNet
    torch.manual_seed(0)
    if kind == "unet":
        model, lossf, macs = UNet(widths), torch.nn.functional.l1_loss, unet_macs_per_px(widths)
    else:
        model, lossf, macs = StripeAutoencoder(), torch.nn.functional.mse_loss, ae_macs_per_px()
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, size, size).to(memory_format=mf)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x), x)
        loss.backward()
        opt.step()
    model.train()
    t = _timeit(run, repeats)
    model.eval()
    nb, side = infer
    xi = torch.rand(nb, 1, side, side).to(memory_format=mf)
    with torch.no_grad():
        ti = _timeit(lambda: model(xi), repeats)
    px = batch * size * size
    return {"step_s": t, "images_per_s": batch / t, "train_gflops": 6 * macs * px / t / 1e9,
            "infer_mp_per_s": nb * side * side / ti / 1e6, "infer_gflops": 2 * macs * nb * side * side / ti / 1e9}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", default="", help="comma list of case names to run")
    p.add_argument("--infer", default="4,512", help="inference batch,side (default 4,512)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    a = p.parse_args(argv)
    import jax
    import torch
    rep = 2 if a.quick else a.repeats
    res = {"argv": list(argv) if argv is not None else sys.argv[1:], "jax": jax.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "cases": {}}
    res["matmul_f32_gflops"] = matmul_peak(repeats=rep)
    print(f"f32 matmul 2048²: {res['matmul_f32_gflops']:.1f} GFLOP/s", flush=True)
    inf = tuple(int(v) for v in a.infer.split(","))
    ub, us = (32, 64)
    ab, as_ = (8, 256)
    cases = {
        "unet/jax-f32": lambda: jax_case("unet", batch=ub, size=us, repeats=rep, infer=inf),
        "unet/jax-f32-im2col": lambda: jax_case("unet", batch=ub, size=us, repeats=rep, infer=inf, im2col=True),
        "unet/jax-bf16-im2col": lambda: jax_case("unet", batch=ub, size=us, repeats=rep, infer=inf, im2col=True, dtype="bfloat16"),
        "unet/jax-f32-im2col-b64": lambda: jax_case("unet", batch=64, size=us, repeats=rep, infer=inf, im2col=True),
        "unet/torch": lambda: torch_case("unet", batch=ub, size=us, repeats=rep, infer=inf),
        "unet/torch-channels-last": lambda: torch_case("unet", batch=ub, size=us, repeats=rep, infer=inf, channels_last=True),
        "stripes/jax-f32": lambda: jax_case("ae", batch=ab, size=as_, repeats=rep, infer=inf),
        "stripes/jax-f32-im2col": lambda: jax_case("ae", batch=ab, size=as_, repeats=rep, infer=inf, im2col=True),
        "stripes/jax-bf16-im2col": lambda: jax_case("ae", batch=ab, size=as_, repeats=rep, infer=inf, im2col=True, dtype="bfloat16"),
        "stripes/torch": lambda: torch_case("ae", batch=ab, size=as_, repeats=rep, infer=inf),
        "stripes/torch-channels-last": lambda: torch_case("ae", batch=ab, size=as_, repeats=rep, infer=inf, channels_last=True),
    }
    only = [s for s in a.only.split(",") if s]
    for name, fn in cases.items():
        if only and name not in only:
            continue
        r = fn()
        r["pct_of_matmul_peak"] = 100 * r["train_gflops"] / res["matmul_f32_gflops"]
        res["cases"][name] = r
        print(f"{name:28s} step {r['step_s']*1e3:8.1f} ms  {r['images_per_s']:7.1f} img/s  "
              f"{r['train_gflops']:6.1f} GFLOP/s ({r['pct_of_matmul_peak']:4.1f} % of matmul)  "
              f"infer {r['infer_mp_per_s']:6.2f} MP/s" + (f"  compile {r['compile_s']:.1f} s" if "compile_s" in r else ""),
              flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2) + "\n")  # after every case: partial runs keep results
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
