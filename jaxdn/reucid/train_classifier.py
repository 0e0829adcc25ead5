"""Train REUCID's eigenpatch classifier on simulated labels (`jaxdn.reucid.labels`).

    python -m jaxdn.reucid.train_classifier --config configs/reucid.py[:variant] --workdir DIR
    jaxdn train reucid-classifier --config configs/reucid.py --workdir DIR   (same `train`)

Steps: build (or load the cached ``DIR/dataset.npz``) label data set → split by image into
train / held-out → Adam on a class-weighted binary cross-entropy through the shared loop
(`jaxdn.train.loop.fit`: orbax checkpoints in ``DIR/checkpoints``, config saved with each, resume
from the latest) → held-out metrics → ``DIR/reucid_classifier.npz`` inference weights
(`jaxdn.weights_io.save_weights`, meta: config, metrics, seed).

Each training example is one eigenpatch in one of its 8 orientations (rotations and flips, drawn
per step) with a random sign (`random_sign`: singular vectors have no intrinsic sign); its label
is 1 for ranks 1..α*. Held-out metrics: accuracy over all 8 orientations, and the PSNR reached by
the classifier's keep count (`pipeline.keep_count`) versus the oracle α* on held-out images.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from . import labels as labels_lib

__all__ = ["train", "load_or_build_dataset", "split_dataset", "evaluate_curves", "main"]

DATASET_FILE = "dataset.npz"
WEIGHTS_FILE = "reucid_classifier.npz"


def _data_meta(config) -> str:
    from ..train.config import to_dict
    full = to_dict(config)
    return json.dumps({k: full[k] for k in labels_lib.DATA_FIELDS}, sort_keys=True)


def load_or_build_dataset(config, *, workdir: Path, quiet=False) -> dict[str, np.ndarray]:
    """The label data set of `config`, cached in ``workdir/dataset.npz`` (rebuilt if stale)."""
    path = Path(workdir) / DATASET_FILE
    meta = _data_meta(config)
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if "__meta__" in f.files and str(f["__meta__"]) == meta:
                return {k: f[k] for k in f.files if k != "__meta__"}
    t0 = time.perf_counter()

    def progress(done, total):
        if not quiet:
            print(f"\r[reucid labels] {done}/{total} images ({time.perf_counter() - t0:.0f} s)",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)

    data = labels_lib.build_dataset(config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, __meta__=np.asarray(meta), **data)
    tmp.replace(path)
    return data


def split_dataset(data, config):
    """Image indices (train, held-out): the last ``eval_fraction`` of the (random) images."""
    n = data["psnr"].shape[0]
    n_eval = max(1, int(round(config.eval_fraction * n))) if n > 1 else 0
    idx = np.arange(n)
    return idx[:n - n_eval], idx[n - n_eval:]


def _alpha(data, idx, config):
    return np.asarray(labels_lib.alpha_star(psnr=data["psnr"][idx], ief=data["ief"][idx],
                                            metric=config.label_metric, c=config.c))  # (n, d)


def _flat(data, idx, config):
    """Per-eigenpatch arrays of images `idx`: patches (N, 25, 25, 1), eigvals (N, 1), labels (N,)."""
    alpha = _alpha(data, idx, config)
    rank = data["psnr"].shape[-1]
    y = np.asarray(labels_lib.useful_labels(alpha, rank))  # (n, d, R)
    pv = data["patches"][idx].reshape((-1,) + data["patches"].shape[-3:])
    ev = data["eigvals"][idx].reshape(-1, 1)
    return pv, ev, y.reshape(-1).astype(np.float32)


def _orient(patches, code):
    """Apply orientation `code` (0..7, per example) to (B, S, S, 1) patches."""
    allo = labels_lib.augment8(patches)  # (8, B, S, S, 1)
    return jnp.take_along_axis(allo, code[None, :, None, None, None], axis=0)[0]


def make_batch_fn(config):
    """``make_batch(key, step, data) -> batch`` sampling examples, orientations and signs."""
    bsz = int(config.batch_size)

    def make_batch(key, step, data):
        k_idx, k_or, k_sign = jax.random.split(key, 3)
        n = data["labels"].shape[0]
        idx = jax.random.randint(k_idx, (bsz,), 0, n)
        code = jax.random.randint(k_or, (bsz,), 0, 8)
        pv = _orient(data["patches"][idx], code)
        if config.random_sign:
            sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (bsz,)), 1.0, -1.0)
            pv = pv * sign[:, None, None, None]
        return {"patches": pv, "eigvals": data["eigvals"][idx], "labels": data["labels"][idx]}

    return make_batch


def make_loss_fn(pos_weight: float):
    """Class-weighted binary cross-entropy on logits; aux: accuracy."""
    import optax

    def loss_fn(model, batch, key):
        logits = model(batch["patches"], batch["eigvals"])
        y = batch["labels"]
        w = jnp.where(y > 0.5, pos_weight, 1.0)
        loss = jnp.sum(w * optax.sigmoid_binary_cross_entropy(logits, y)) / jnp.sum(w)
        acc = jnp.mean((logits > 0) == (y > 0.5))
        return loss, {"accuracy": acc}

    return loss_fn


def evaluate_curves(probs, psnr, alpha_oracle):
    """PSNR reached by the classifier's keep counts vs the oracle α*.

    Args:
      probs: (n, d, R) classifier probabilities (rank order).
      psnr: (n, d, R) PSNR of keeping 1..R components.
      alpha_oracle: (n, d) the label α*.

    Returns:
      dict: ``psnr_classifier``, ``psnr_oracle``, ``psnr_best`` (max over α), ``delta_psnr``
      (classifier − oracle, mean), ``keep_mae`` (mean |keep − α*|), ``keep_mean``, ``alpha_mean``.
    """
    from .pipeline import keep_count
    keep = np.asarray(keep_count(jnp.asarray(probs)))  # (n, d)
    take = lambda k: np.take_along_axis(psnr, (k - 1)[..., None], axis=-1)[..., 0]
    pc, po = take(keep), take(np.asarray(alpha_oracle))
    return {"psnr_classifier": float(pc.mean()), "psnr_oracle": float(po.mean()),
            "psnr_best": float(psnr.max(-1).mean()), "delta_psnr": float((pc - po).mean()),
            "keep_mae": float(np.abs(keep - alpha_oracle).mean()), "keep_mean": float(keep.mean()),
            "alpha_mean": float(np.mean(alpha_oracle))}


def _heldout(predict, data, idx, config):
    """Held-out accuracy (8 orientations) and PSNR metrics for images `idx`."""
    from .pipeline import keep_count  # noqa: F401  (import check)
    pv, ev, y = _flat(data, idx, config)
    correct = 0.0
    for code in range(8):
        pr = np.asarray(predict(_orient(jnp.asarray(pv), jnp.full(len(pv), code)), jnp.asarray(ev)))
        correct += float(np.mean((pr >= 0.5) == (y > 0.5)))
    probs = np.asarray(predict(jnp.asarray(data["patches"][idx]), jnp.asarray(data["eigvals"][idx])))
    out = {"accuracy": correct / 8}
    out.update(evaluate_curves(probs, data["psnr"][idx], _alpha(data, idx, config)))
    return out


def train(config, *, workdir: Path, quiet: bool = False, stop_after: int | None = None, **extra) -> dict:
    """Build the label data set, train the classifier, export ``workdir/reucid_classifier.npz``.

    Args:
      config: a `configs/reucid.py` config.
      workdir: run folder (data-set cache, checkpoints, metrics, weights); resumes from its
        latest checkpoint.
      quiet: no progress output.
      stop_after: stop (as if interrupted) after this many steps, leaving the checkpoints for a
        later resume (tests); no export.

    Returns:
      Final metrics: train ``loss``/``accuracy``, held-out ``eval_*`` (accuracy, PSNR vs oracle),
      ``steps_run``, ``resumed_from``, ``weights`` (path), ``alpha_hist`` (counts of α* = 1..R).
    """
    if extra:
        raise InputError(f"reucid-classifier trainer: unknown options "
                         f"{', '.join('--' + k.replace('_', '-') for k in extra)}")
    if config.label_metric not in ("psnr", "edited_ief"):
        raise InputError(f"label_metric must be 'psnr' or 'edited_ief', got {config.label_metric!r}")
    from flax import nnx

    from .. import sharding as shd
    from ..models.eigenpatch_classifier import EigenpatchClassifier, make_predictor
    from ..train.config import to_dict
    from ..train.loop import (abstract_model_and_optimizer, fit, make_supervised_step, merge_model)
    from ..weights_io import save_weights
    import optax

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_or_build_dataset(config, workdir=workdir, quiet=quiet)
    t_data = time.perf_counter() - t0
    tr, ev_idx = split_dataset(data, config)
    pv, ev, y = _flat(data, tr, config)
    n_pos = float(y.sum())
    pos_weight = float((len(y) - n_pos) / max(n_pos, 1.0)) if config.class_balance else 1.0
    alpha_all = _alpha(data, np.arange(data["psnr"].shape[0]), config)
    rank = data["psnr"].shape[-1]
    hist = np.bincount(alpha_all.ravel(), minlength=rank + 1)[1:]

    schedule = optax.cosine_decay_schedule(config.lr, max(1, config.steps),
                                           alpha=config.lr_end / config.lr)
    tx = optax.adam(schedule)
    graphdef, init_state = abstract_model_and_optimizer(
        lambda: EigenpatchClassifier(rngs=nnx.Rngs(config.seed)), tx)
    step = make_supervised_step(graphdef, make_loss_fn(pos_weight), has_aux=True)
    train_data = {"patches": jnp.asarray(pv), "eigvals": jnp.asarray(ev), "labels": jnp.asarray(y)}

    def eval_fn(state, key):
        if len(ev_idx) == 0:
            return {}
        res = _heldout(make_predictor(merge_model(graphdef, state)), data, ev_idx, config)
        return {k: res[k] for k in ("accuracy", "delta_psnr", "keep_mae")}

    hooks = []
    if stop_after is not None:
        class _Stop(Exception):
            pass

        def stop(done, state):
            if done > stop_after:
                raise _Stop

        hooks.append(stop)
    try:
        result = fit(init_state=init_state, train_step=step, make_batch=make_batch_fn(config),
                     steps=config.steps, workdir=workdir, config=config, seed=config.seed,
                     eval_fn=eval_fn, eval_every=config.eval_every, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every,
                     keep_checkpoints=config.keep_checkpoints, data=train_data, hooks=hooks,
                     quiet=quiet)
    except Exception as err:
        if stop_after is not None and type(err).__name__ == "_Stop":
            return {"stopped_at": stop_after}
        raise
    model = merge_model(graphdef, shd.local_copy(result.state))
    predict = make_predictor(model)
    metrics = {"train_" + k if not k.startswith("eval_") else k: v for k, v in result.metrics.items()}
    if len(ev_idx):
        held = _heldout(predict, data, ev_idx, config)
        metrics.update({f"eval_{k}": v for k, v in held.items()})
    metrics.update({"n_train_eigenpatches": int(len(y)), "n_train_datapoints_x8": int(8 * len(y)),
                    "n_eval_images": int(len(ev_idx)), "pos_weight": pos_weight,
                    "alpha_hist": hist.tolist(), "dataset_seconds": round(t_data, 1),
                    "total_seconds": round(time.perf_counter() - t0, 1)})
    weights = save_weights(workdir / WEIGHTS_FILE, model,
                           meta={"config": to_dict(config), "metrics": metrics, "seed": config.seed,
                                 "architecture": "EigenpatchClassifier(conv_features=(14, 15), hidden=16)"})
    (workdir / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {**metrics, "steps_run": result.steps_run, "resumed_from": result.resumed_from,
            "weights": str(weights)}


def main(argv=None) -> int:
    from ..train.config import load_config
    ap = argparse.ArgumentParser(prog="python -m jaxdn.reucid.train_classifier", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/reucid.py", help="FILE[:variant]")
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    config = load_config(args.config, args.set)
    res = train(config, workdir=args.workdir, quiet=args.quiet)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
