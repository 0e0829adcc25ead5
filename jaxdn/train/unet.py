"""Trainer and evaluator for the TEM U-Nets (`unet-g`, `unet-sp`, `unet-gsp`, `unet-bbg`).

`train(config, workdir=..., method="unet-bbg")` trains one model with the shared `fit` loop on
patches generated on device (`jaxdn.train.data_supervised`) and writes ``workdir/unet_<m>.npz``.
`evaluate(method="unet", ...)` prints and writes the paper's MS-SSIM table (interpolation and
extrapolation noise levels) for the four shipped models on held-out simulated images.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..errors import InputError
from .config import compute_dtype, to_dict
from .data_supervised import NOISE_MODELS, add_tem_noise, make_graphene_pool, split_pool, unet_batch

INTERPOLATION = (0.18, 0.2, 0.22, 0.24)
EXTRAPOLATION = (0.27, 0.3, 0.33, 0.36)


def build_model(config, *, rngs: nnx.Rngs):
    """The U-Net for `config` (widths, BN momentum, compute dtype, im2col first layer)."""
    from ..models.unet import UNet
    m = config.model
    return UNet(widths=tuple(m.widths), bn_momentum=m.bn_momentum, im2col_first=m.im2col_first,
                compute_dtype=compute_dtype(config.compute_dtype), rngs=rngs)


def _loss(name):
    from .. import losses
    table = {"mae": losses.mae, "mse": losses.mse, "mae_ssim": losses.mae_ssim}
    if name not in table:
        raise InputError(f"unknown loss {name!r}; choose one of {', '.join(table)}")
    return table[name]


def _resolve_noise_model(config, method):
    if method:
        nm = method.split("-", 1)[1] if method.startswith("unet-") else method
        if nm not in NOISE_MODELS:
            raise InputError(f"unknown U-Net method {method!r}; choose unet-g, unet-sp, unet-gsp or unet-bbg")
        if nm != config.noise_model:
            config = dataclasses.replace(config, noise_model=nm)
    if config.noise_model not in NOISE_MODELS:
        raise InputError(f"noise_model must be one of {NOISE_MODELS}, got {config.noise_model!r}")
    return config


def make_pool(config):
    """(train_pool, val_pool) of clean images, each (n, S, S) float32."""
    d = config.data
    pool = make_graphene_pool(jax.random.key(d.pool_seed), n_images=d.n_images, size=d.image_size,
                              layouts=tuple(d.layouts))
    return split_pool(pool, val_fraction=d.val_fraction)


def train(config, *, workdir: Path, quiet: bool = False, method: str | None = None, **extra) -> dict:
    """Train one TEM U-Net; writes ``workdir/unet_<noise_model>.npz`` (inference weights + meta).

    Args:
      config: a `configs/unet.py` config.
      workdir: run folder (resumes from its checkpoints).
      method: "unet-g" | "unet-sp" | "unet-gsp" | "unet-bbg" (sets `config.noise_model`).
    Returns:
      Final metrics: train ``loss`` (MAE), ``eval_mae``, ``eval_psnr`` on held-out patches,
      ``steps_run``, ``wall_s``, ``weights``.
    """
    if extra:
        raise InputError(f"unet trainer: unknown options {', '.join('--' + k.replace('_', '-') for k in extra)}")
    from ..weights_io import save_weights
    from .loop import abstract_model_and_optimizer, fit, make_optimizer, make_supervised_step, merge_model

    t0 = time.time()
    config = _resolve_noise_model(config, method)
    workdir = Path(workdir)
    d = config.data
    train_pool, val_pool = make_pool(config)
    if val_pool.shape[0] == 0:
        val_pool = train_pool
    tx = make_optimizer(config.optim, steps=config.steps)
    graphdef, init_state = abstract_model_and_optimizer(lambda: build_model(config, rngs=nnx.Rngs(config.seed)), tx)
    loss = _loss(config.loss)
    batch_kw = dict(noise_model=config.noise_model, c_values=tuple(d.c_values), shifts=tuple(d.shifts), patch=d.patch)

    def make_batch(key, step, pool):
        noisy, clean = unet_batch(key, pool, batch=config.batch_size, **batch_kw)
        return {"noisy": noisy, "clean": clean}

    def loss_fn(model, batch, key):
        return loss(model(batch["noisy"]), batch["clean"])

    val_batch = unet_batch(jax.random.key(d.pool_seed + 1), val_pool, batch=32, **batch_kw)

    # The held-out batch is an argument, not a closed-over constant: XLA would constant-fold the
    # whole forward pass over it at compile time (minutes on CPU).
    @jax.jit
    def _eval(state, noisy, clean):
        model = merge_model(graphdef, state)
        model.eval()
        pred = model(noisy)
        mse = jnp.mean((pred - clean) ** 2)
        return {"mae": jnp.mean(jnp.abs(pred - clean)), "psnr": 10 * jnp.log10(1.0 / mse),
                "psnr_noisy": 10 * jnp.log10(1.0 / jnp.mean((noisy - clean) ** 2))}

    def eval_fn(state, key):
        return _eval(state, *val_batch)

    weights = workdir / f"unet_{config.noise_model}.npz"
    command = "jaxdn train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 and sys.argv[1] == "train" else None
    result_holder = {}

    def export(state):
        meta = {"config": to_dict(config), "method": f"unet-{config.noise_model}",
                "metrics": result_holder.get("metrics"), "command": command,
                "wall_s": round(time.time() - t0, 1)}
        save_weights(weights, merge_model(graphdef, state), meta=meta)

    result = fit(init_state=init_state, train_step=make_supervised_step(graphdef, loss_fn),
                 make_batch=make_batch, data=train_pool, steps=config.steps, workdir=workdir, config=config,
                 seed=config.seed, eval_fn=eval_fn, eval_every=config.eval_every, log_every=config.log_every,
                 checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
                 export_fn=lambda s: result_holder.setdefault("state", s), quiet=quiet)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    result_holder["metrics"] = metrics
    wall = time.time() - t0
    if "state" in result_holder:
        export(result_holder["state"])
    return {**metrics, "steps_run": result.steps_run, "resumed_from": result.resumed_from,
            "wall_s": round(wall, 1), "weights": str(weights)}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def test_images(*, n: int, size: int = 512, seed: int = 0, layouts=(3, 4, 2)) -> jax.Array:
    """Held-out clean test images (n, size, size): drawn from a key disjoint from training pools."""
    key = jax.random.fold_in(jax.random.key(987_654 + seed), 7)
    return make_graphene_pool(key, n_images=n, size=size, layouts=layouts)


def ms_ssim_table(*, models=NOISE_MODELS, weights=None, n_images: int = 3, size: int = 512, seed: int = 0,
                  levels=INTERPOLATION + EXTRAPOLATION, include_noisy: bool = True, quiet: bool = False) -> dict:
    """MS-SSIM of denoised vs clean for each model and C_noise (mean over `n_images` test images).

    Returns:
      {model: {c: {"denoised": ms_ssim, "noisy": ms_ssim}}}.
    """
    from ..metrics import ms_ssim
    from ..methods.unet import denoise

    clean = test_images(n=n_images, size=size, seed=seed)
    out = {}
    for nm in models:
        out[nm] = {}
        w = weights.get(nm) if isinstance(weights, dict) else weights
        for j, c in enumerate(levels):
            key = jax.random.fold_in(jax.random.key(seed), 1000 * NOISE_MODELS.index(nm) + j)
            noisy = jax.vmap(lambda k, x: add_tem_noise(k, x, noise_model=nm, c=c))(
                jax.random.split(key, n_images), clean)
            den = denoise(np.asarray(noisy), noise_model=nm, weights=w, normalize="none")
            row = {"denoised": float(jnp.mean(ms_ssim(jnp.asarray(den), clean, data_range=1.0)))}
            if include_noisy:
                row["noisy"] = float(jnp.mean(ms_ssim(noisy, clean, data_range=1.0)))
            out[nm][c] = row
            if not quiet:
                print(f"  unet-{nm} C_noise={c:.2f}: MS-SSIM {row['denoised']:.4f} (noisy {row.get('noisy', float('nan')):.4f})",
                      flush=True)
    return out


_LABEL = {"g": "G", "sp": "SP", "gsp": "G&SP", "bbg": "BB+G"}


def table_markdown(table: dict, *, levels=INTERPOLATION + EXTRAPOLATION) -> str:
    """Markdown table: rows C_noise (interp./extrap.), columns model (denoised, noisy input)."""
    models = list(table)
    head = "| C_noise | region | " + " | ".join(f"{_LABEL.get(m, m)} denoised (noisy)" for m in models) + " |"
    sep = "|---|---|" + "---|" * len(models)
    lines = [head, sep]
    for c in levels:
        region = "interpolation" if c < 0.26 else "extrapolation"
        cells = []
        for m in models:
            r = table[m].get(c) or table[m].get(str(c))
            cells.append(f"{r['denoised']:.3f} ({r['noisy']:.3f})" if "noisy" in r else f"{r['denoised']:.3f}")
        lines.append(f"| {c:.2f} | {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate(*, method: str = "unet", weights=None, data=None, outdir: Path, quick: bool = False, seed: int = 0,
             quiet: bool = False) -> dict:
    """MS-SSIM table of the U-Nets at the paper's interpolation and extrapolation noise levels.

    Args:
      method: "unet" (all four models) or "unet-<m>" (one).
      weights: weights for a single-model evaluation (default: shipped).
      data: a clean image file to use instead of the simulated test images (min–max normalised).
      outdir: writes ``unet_ms_ssim.md`` and ``unet_ms_ssim.json``.
      quick: one 256² test image instead of three 512² ones.
    Returns:
      {"ms_ssim": table, "markdown": str}.
    """
    models = NOISE_MODELS if method in ("unet", None) else (_resolve_noise_model(_DummyCfg(), method).noise_model,)
    if weights is not None and len(models) > 1:
        raise InputError("--weights needs a single model: use method unet-g, unet-sp, unet-gsp or unet-bbg")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    n, size = (1, 256) if quick else (3, 512)
    if data is not None:
        raise InputError("unet evaluation uses simulated graphene with known ground truth; --data is not supported")
    if not quiet:
        print(f"U-Net MS-SSIM on {n} held-out simulated graphene image(s) of {size}²:", flush=True)
    table = ms_ssim_table(models=models, weights=weights, n_images=n, size=size, seed=seed, quiet=quiet)
    md = table_markdown(table)
    (outdir / "unet_ms_ssim.md").write_text(md)
    (outdir / "unet_ms_ssim.json").write_text(json.dumps({m: {str(c): v for c, v in t.items()} for m, t in table.items()},
                                                         indent=2) + "\n")
    if not quiet:
        print(md)
    return {"ms_ssim": {m: {str(c): v for c, v in t.items()} for m, t in table.items()}, "outdir": str(outdir)}


@dataclasses.dataclass(frozen=True)
class _DummyCfg:
    noise_model: str = "g"
