"""Trainer and evaluator for the STM stripe-removal autoencoder (`stripes`).

`train(config, workdir=..., clean_dir=None)` trains with the shared `fit` loop on augmented,
stripe-corrupted topographies generated on device (`jaxdn.train.data_supervised`) and writes
``workdir/stripes.npz``. `evaluate(...)` compares the autoencoder with the classical peer (row
alignment by median of differences, `jaxdn.classical`) and the noisy input (PSNR/SSIM against
clean ground truth at mild/moderate/severe stripe levels), and with ``report=True`` writes
figures of both on the real STM and streaked HAADF images in ``../shared/realdata`` if present.
"""
from __future__ import annotations

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
from .data_supervised import STRIPE_LEVELS, load_clean_dir, stripes_batch

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"


def build_model(config, *, rngs: nnx.Rngs):
    """The stripe autoencoder for `config` (features, thin-layer im2col, compute dtype)."""
    from ..models.stripe_autoencoder import StripeAutoencoder
    return StripeAutoencoder(features=config.model.features, im2col_thin=config.model.im2col_thin,
                             compute_dtype=compute_dtype(config.compute_dtype), rngs=rngs)


def _loss(name):
    from .. import losses
    table = {"mse": losses.mse, "mae": losses.mae, "bce": losses.bce, "mae_ssim": losses.mae_ssim}
    if name not in table:
        raise InputError(f"unknown loss {name!r}; choose one of {', '.join(table)}")
    return table[name]


def train(config, *, workdir: Path, quiet: bool = False, clean_dir: str | None = None, **extra) -> dict:
    """Train the stripe autoencoder; writes ``workdir/stripes.npz`` (inference weights + meta).

    Args:
      config: a `configs/stripes.py` config.
      workdir: run folder (resumes from its checkpoints).
      clean_dir: optional folder of the user's clean images (any format `jaxdn.io.read` reads),
        mixed into every batch with probability `config.data.p_user`.
    Returns:
      Final metrics (train ``loss``, held-out ``eval_psnr`` / ``eval_psnr_noisy``), ``wall_s``, ``weights``.
    """
    if extra:
        raise InputError(f"stripes trainer: unknown options {', '.join('--' + k.replace('_', '-') for k in extra)}")
    from ..weights_io import save_weights
    from .data_supervised import source_size
    from .loop import abstract_model_and_optimizer, fit, make_optimizer, make_supervised_step, merge_model

    t0 = time.time()
    workdir = Path(workdir)
    d = config.data
    pool = None
    if clean_dir:
        pool = jnp.asarray(load_clean_dir(clean_dir, min_size=source_size(d.size, d.max_angle)))
    tx = make_optimizer(config.optim, steps=config.steps)
    graphdef, init_state = abstract_model_and_optimizer(lambda: build_model(config, rngs=nnx.Rngs(config.seed)), tx)
    loss = _loss(config.loss)
    kw = dict(batch=config.batch_size, size=d.size, levels=tuple(tuple(l) for l in d.levels), kinds=tuple(d.kinds),
              max_angle=d.max_angle, p_aug=d.p_aug, sp_prob=d.sp_prob)

    def make_batch(key, step, data=None):
        if data is None:
            noisy, clean = stripes_batch(key, **kw)
        else:
            noisy, clean = stripes_batch(key, clean_pool=data, p_user=d.p_user, **kw)
        return {"noisy": noisy, "clean": clean}

    def loss_fn(model, batch, key):
        return loss(model(batch["noisy"]), batch["clean"])

    val_noisy, val_clean = jax.jit(lambda k: stripes_batch(k, **kw))(jax.random.key(4321))

    # The held-out batch is an argument, not a closed-over constant (XLA would constant-fold the
    # forward pass over it at compile time).
    @jax.jit
    def _eval(state, noisy, clean):
        model = merge_model(graphdef, state)
        model.eval()
        pred = model(noisy)
        return {"psnr": 10 * jnp.log10(1.0 / jnp.mean((pred - clean) ** 2)),
                "psnr_noisy": 10 * jnp.log10(1.0 / jnp.mean((noisy - clean) ** 2))}

    def eval_fn(state, key):
        return _eval(state, val_noisy, val_clean)

    weights = workdir / "stripes.npz"
    command = "jaxdn train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 and sys.argv[1] == "train" else None
    holder = {}
    fit_kw = {} if pool is None else {"data": pool}
    result = fit(init_state=init_state, train_step=make_supervised_step(graphdef, loss_fn),
                 make_batch=make_batch, steps=config.steps, workdir=workdir, config=config, seed=config.seed,
                 eval_fn=eval_fn, eval_every=config.eval_every, log_every=config.log_every,
                 checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
                 export_fn=lambda s: holder.setdefault("state", s), quiet=quiet, **fit_kw)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    wall = time.time() - t0
    if "state" in holder:
        meta = {"config": to_dict(config), "method": "stripes", "metrics": metrics, "command": command,
                "wall_s": round(wall, 1), "clean_dir": str(clean_dir) if clean_dir else None}
        save_weights(weights, merge_model(graphdef, holder["state"]), meta=meta)
    return {**metrics, "steps_run": result.steps_run, "resumed_from": result.resumed_from,
            "wall_s": round(wall, 1), "weights": str(weights)}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def test_images(*, per_kind: int = 2, size: int = 256, seed: int = 0,
                kinds=("random", "hex", "square", "chain")) -> jax.Array:
    """Held-out clean topographies (n, size, size) in [0, 1] (keys disjoint from training)."""
    from ..simulate import stm
    from ..simulate._render import normalise01

    key = jax.random.fold_in(jax.random.key(555_000 + seed), 3)
    out = []
    for j, kind in enumerate(kinds):
        keys = jax.random.split(jax.random.fold_in(key, j), per_kind)
        out.append(jax.vmap(lambda k: stm.stm_topography(k, size=size, kind=kind))(keys))
    return normalise01(jnp.concatenate(out).astype(jnp.float32))


def row_offsets(key, x, *, sigma: float):
    """Realistic scan-line offsets: every row shifted by N(0, sigma²) (a random walk is not used)."""
    off = sigma * jax.random.normal(key, x.shape[:-1])
    return x + off[..., None]


def stripe_table(*, weights=None, per_kind: int = 2, size: int = 256, seed: int = 0, quiet: bool = False) -> dict:
    """PSNR/SSIM of noisy input, row-median peer and autoencoder at each stripe level.

    Levels: `STRIPE_LEVELS` (mild/moderate/severe thesis stripes: rows replaced by random values)
    plus "row-offsets" (each row shifted by N(0, 0.05²), the classical peer's home ground).
    Returns {level: {"noisy"|"row-median"|"autoencoder": {"psnr", "ssim"}}}.
    """
    from ..classical import align_rows_median_diff
    from ..metrics import psnr, ssim
    from ..methods.stripes import denoise
    from ..simulate import noise

    clean = test_images(per_kind=per_kind, size=size, seed=seed)
    levels = dict(STRIPE_LEVELS)
    levels["row-offsets"] = None
    out = {}
    for j, (name, lvl) in enumerate(levels.items()):
        key = jax.random.fold_in(jax.random.key(seed), 77 + j)
        if lvl is None:
            noisy = row_offsets(key, clean, sigma=0.05)
        else:
            noisy = noise.stripes(key, clean, row_fraction=lvl[0], max_width=lvl[1])
        noisy = np.asarray(noisy)
        cands = {"noisy": noisy, "row-median": align_rows_median_diff(noisy),
                 "autoencoder": denoise(noisy, weights=weights, normalize="none" if lvl is not None else "minmax")}
        out[name] = {}
        for m, y in cands.items():
            y = jnp.asarray(y)
            out[name][m] = {"psnr": float(jnp.mean(psnr(y, clean, data_range=1.0))),
                            "ssim": float(jnp.mean(ssim(y, clean, data_range=1.0)))}
        if not quiet:
            print(f"  {name:12s} " + "  ".join(f"{m}: {v['psnr']:.2f} dB / {v['ssim']:.3f}" for m, v in out[name].items()),
                  flush=True)
    return out


def table_markdown(table: dict) -> str:
    """Markdown: rows = stripe level, columns = PSNR (dB) / SSIM per method."""
    methods = list(next(iter(table.values())))
    lines = ["| stripe level | " + " | ".join(f"{m} PSNR / SSIM" for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    desc = {k: f"{k} (rows {int(v[0] * 100)} %, width ≤ {v[1]})" for k, v in STRIPE_LEVELS.items()}
    desc["row-offsets"] = "row offsets σ = 0.05"
    for lvl, row in table.items():
        lines.append(f"| {desc.get(lvl, lvl)} | " + " | ".join(f"{row[m]['psnr']:.2f} / {row[m]['ssim']:.3f}" for m in methods) + " |")
    return "\n".join(lines) + "\n"


def _real_images() -> list[tuple[str, np.ndarray]]:
    out = []
    stm_file = REALDATA / "pynxtools-stm" / "STM_nanonis_generic_4_5.npy"
    if stm_file.is_file():
        a = np.load(stm_file)
        out.append(("stm_nanonis_z_fwd", np.asarray(a[0] if a.ndim == 3 else a, np.float32)))
    tem_file = REALDATA / "r_em_workflows" / "Tecnai_Osiris_SrTiO3.npy"
    if tem_file.is_file():
        a = np.load(tem_file)
        out.append(("tecnai_osiris_srtio3", np.asarray(a if a.ndim == 2 else a[0], np.float32)))
    return out


def report_figures(outdir: Path, *, weights=None, quiet: bool = False) -> list[str]:
    """Input | row-median peer | autoencoder figures (PNG) for the real images that are present."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..classical import align_rows_median_diff
    from ..methods.stripes import denoise

    written = []
    for name, img in _real_images():
        if not np.all(np.isfinite(img)):
            img = np.nan_to_num(img, nan=float(np.nanmedian(img)))
        panels = {"input": img, "row alignment (median of differences)": align_rows_median_diff(img),
                  "stripe autoencoder": denoise(img, weights=weights)}
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
        for ax, (title, p) in zip(axes, panels.items()):
            lo, hi = np.percentile(p, [0.5, 99.5])
            ax.imshow(p, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=10)
            ax.axis("off")
        fig.suptitle(f"{name} ({img.shape[0]}×{img.shape[1]})")
        fig.tight_layout()
        path = Path(outdir) / f"stripes_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
        if not quiet:
            print(f"  wrote {path}")
    if not written and not quiet:
        print(f"  no real images found under {REALDATA}; skipping --report figures")
    return written


def evaluate(*, method: str = "stripes", weights=None, data=None, outdir: Path, quick: bool = False, seed: int = 0,
             quiet: bool = False, report: bool | str = False) -> dict:
    """Stripe-removal table (PSNR/SSIM vs clean) for noisy input, classical peer and autoencoder.

    Args:
      weights: autoencoder weights (default: shipped).
      data: unsupported (evaluation needs ground truth; use `report` for real images).
      outdir: writes ``stripes_table.md`` / ``.json`` (and figures with `report`).
      quick: one 128² image per lattice kind instead of two 256² ones.
      report: also write figures on the real STM / streaked HAADF images when present.
    """
    if data is not None:
        raise InputError("stripes evaluation uses simulated topographies with ground truth; use --report for real data")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    per_kind, size = (1, 128) if quick else (2, 256)
    if not quiet:
        print(f"Stripe removal on {4 * per_kind} held-out simulated topographies of {size}² (PSNR dB / SSIM):", flush=True)
    table = stripe_table(weights=weights, per_kind=per_kind, size=size, seed=seed, quiet=quiet)
    md = table_markdown(table)
    (outdir / "stripes_table.md").write_text(md)
    (outdir / "stripes_table.json").write_text(json.dumps(table, indent=2) + "\n")
    if not quiet:
        print(md)
    figures = report_figures(outdir, weights=weights, quiet=quiet) if str(report).lower() not in ("false", "0", "") else []
    return {"table": table, "figures": figures, "outdir": str(outdir)}
