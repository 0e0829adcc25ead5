"""Toy trainer: a 2-layer residual conv denoiser on generated smooth images (`configs/toy.py`).

It is the smallest complete user of `jaxdn.train.loop.fit` and the reference for how a trainer
is written: config -> model/optimizer split once -> on-device `make_batch` -> `make_supervised_step`
-> `fit` -> exported weights. The tests drive the loop (devices, resume, multi-process) through it.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ..errors import InputError
from .config import compute_dtype


class ToyDenoiser(nnx.Module):
    """Residual conv denoiser: x + conv(relu(bn(conv(x)))); (B, H, W, 1) float32 in and out.

    The first conv has no bias: BatchNorm removes it, so its gradient is pure rounding noise that
    Adam would amplify into device-count-dependent values.
    """

    def __init__(self, *, channels: int, dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, channels, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)  # BN follows
        self.norm = nnx.BatchNorm(channels, dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(channels, 1, (3, 3), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.norm(self.conv1(x)))
        return x + self.conv2(h).astype(jnp.float32)


def build_model(config, *, rngs: nnx.Rngs) -> ToyDenoiser:
    """The toy denoiser for `config` (channels, compute_dtype)."""
    return ToyDenoiser(channels=config.channels, dtype=compute_dtype(config.compute_dtype), rngs=rngs)


def make_batch_fn(config):
    """``make_batch(key, step) -> {"clean", "noisy"}``, each (batch_size, size, size, 1) float32."""
    n = config.size

    def one(key):
        k_freq, k_phase, k_noise = jax.random.split(key, 3)
        freq = jax.random.uniform(k_freq, (3, 2), minval=0.5, maxval=3.0) * (2 * jnp.pi / n)
        phase = jax.random.uniform(k_phase, (3,), maxval=2 * jnp.pi)
        yy, xx = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")
        waves = jnp.sin(freq[:, 0, None, None] * yy + freq[:, 1, None, None] * xx + phase[:, None, None])
        clean = 0.5 + waves.mean(axis=0) / 2
        noisy = clean + config.noise_sigma * jax.random.normal(k_noise, clean.shape)
        return clean[..., None], noisy[..., None]

    def make_batch(key, step):
        clean, noisy = jax.vmap(one)(jax.random.split(key, config.batch_size))
        return {"clean": clean, "noisy": noisy}

    return make_batch


def train(config, *, workdir: Path, quiet: bool = False, step_delay: float | str = 0.0, **extra) -> dict:
    """Train the toy denoiser; writes ``workdir/toy.npz`` inference weights.

    Args:
      config: a `configs/toy.py` config.
      workdir: run folder (resumes from its checkpoints).
      step_delay: seconds to sleep after each update (tests use it to make a run killable).
    Returns:
      Final metrics (``loss``, ``eval_mse``, ...), ``steps_run``, ``resumed_from``, ``weights``.
    """
    if extra:
        raise InputError(f"toy trainer: unknown options {', '.join('--' + k.replace('_', '-') for k in extra)}")
    from ..weights_io import save_weights
    from .loop import abstract_model_and_optimizer, fit, make_optimizer, make_supervised_step, merge_model

    workdir = Path(workdir)
    tx = make_optimizer(config.optim, steps=config.steps)
    graphdef, init_state = abstract_model_and_optimizer(
        lambda: build_model(config, rngs=nnx.Rngs(config.seed)), tx)
    make_batch = make_batch_fn(config)

    def loss_fn(model, batch, key):
        return jnp.mean((model(batch["noisy"]) - batch["clean"]) ** 2)

    @jax.jit
    def eval_fn(state, key):
        model = merge_model(graphdef, state)
        model.eval()
        batch = make_batch(key, 0)
        return {"mse": jnp.mean((model(batch["noisy"]) - batch["clean"]) ** 2)}

    weights = workdir / "toy.npz"

    def export(state):
        save_weights(weights, merge_model(graphdef, state), meta={"config": config.__class__.__name__})

    delay = float(step_delay)
    hooks = [lambda step, state: time.sleep(delay)] if delay > 0 else []
    result = fit(init_state=init_state, train_step=make_supervised_step(graphdef, loss_fn),
                 make_batch=make_batch, steps=config.steps, workdir=workdir, config=config,
                 seed=config.seed, eval_fn=eval_fn if config.eval_every > 0 else None, eval_every=config.eval_every,
                 log_every=config.log_every, checkpoint_every=config.checkpoint_every,
                 keep_checkpoints=config.keep_checkpoints, export_fn=export, hooks=hooks, quiet=quiet)
    return {**result.metrics, "steps_run": result.steps_run, "resumed_from": result.resumed_from,
            "weights": str(weights)}
