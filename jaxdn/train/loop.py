"""The one training loop of jaxdn: `fit`, plus the NNX/optax helpers every trainer needs.

Sections: keys · jitted update · restore or init · loop (log, eval, checkpoint) · finish.

A trainer provides three pure pieces and calls `fit`:

* ``init_state() -> state`` (or a ready state): any pytree, usually the `nnx.State` of
  ``(model, optimizer)`` from `split_model_and_optimizer`; a GAN packs several, e.g.
  ``{"gen": gen_state, "critic": critic_state}``.
* ``make_batch(key, step) -> batch``: generates the *global* batch on device from a PRNG key
  (pytree of arrays, batch on axis 0). `fit` traces it inside the jitted update with the output
  constrained to the ``'data'`` sharding, so each device computes only its rows and the data do
  not depend on the number of devices or processes. Build it from per-example keys
  (``jax.random.split(key, batch_size)`` + `vmap`).
* ``train_step(state, batch, key) -> (state, metrics)``: pure; metrics a dict of scalars.

Per-step keys are ``fold_in(data_key, step)`` and ``fold_in(step_key, step)``, so a resumed run
repeats exactly what an uninterrupted one computes.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import sharding as shd
from ..errors import InputError
from . import config as config_lib
from .checkpoint import Checkpointer
from .logging import MetricsLog, Progress, plot_loss_curve


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
      state: final state (replicated over the mesh; use `sharding.local_copy` for host work).
      metrics: last logged train metrics (interval means) and ``eval_*`` metrics, as floats.
      step: the final step (== steps).
      resumed_from: the checkpoint step this run restored, or None.
      steps_run: updates executed by this call.
      first_step_s: wall time of this call's first update, compilation included (None if none);
        the logged ``steps_per_s`` exclude it.
    """
    state: Any
    metrics: dict[str, float]
    step: int
    resumed_from: int | None
    steps_run: int
    first_step_s: float | None = None


def _log(msg: str, *, enabled: bool) -> None:
    if enabled:
        print(f"[jaxdn train] {msg}", file=sys.stderr, flush=True)


def _abstract(tree, sharding):
    """ShapeDtypeStructs (with `sharding`) for every leaf of `tree` (arrays or structs)."""
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _mean_metrics(pending: list[dict[str, Any]]) -> dict[str, float]:
    import jax
    import numpy as np
    host = jax.device_get(shd.local_copy(pending))
    out: dict[str, float] = {}
    for k in host[0]:
        out[k] = float(np.mean([np.asarray(m[k], dtype=np.float64) for m in host]))
    return out


def _check_batch(shapes, mesh, batch_spec) -> None:
    """Refuse batch leaves whose split axis the number of devices does not divide."""
    import jax
    spec = tuple(batch_spec) if batch_spec is not None else (shd.DATA_AXIS,)
    if shd.DATA_AXIS not in spec:
        return
    axis = spec.index(shd.DATA_AXIS)
    d = shd.mesh_size(mesh)
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        if len(leaf.shape) <= axis:
            raise InputError(f"batch leaf {jax.tree_util.keystr(path)} has shape {leaf.shape}: "
                             f"no axis {axis} to split over devices")
        if leaf.shape[axis] % d:
            raise InputError(f"global batch size {leaf.shape[axis]} (batch leaf {jax.tree_util.keystr(path)}) "
                             f"is not divisible by the {d} devices; use a multiple of {d}")


def waits_for_each_step(mesh) -> bool:
    """Whether `fit` waits for each update before dispatching the next: on CPU devices.

    XLA:CPU takes an executable's scratch memory when a call is dispatched, so an update queued
    behind a running one holds a second copy (the Noise2Atom `paper` step: 6.6 GB more, a 17.5 GB
    process instead of 10.8 GB; benchmarks/results/noise2atom.md, session 22). Waiting narrows
    that to a race (the previous step frees its scratch just after its outputs are ready);
    `run_computations_inline_on_cpu` closes it for `jaxdn train`. Accelerators keep the queue.
    """
    return all(d.platform == "cpu" for d in mesh.devices.flat)


def run_computations_inline_on_cpu() -> bool:
    """Turn off XLA:CPU's asynchronous dispatch (``jax_cpu_enable_async_dispatch``) for a training
    process: each computation then runs and frees its scratch memory before the call returns.

    With it on, the next step could take its 8.6 GB scratch block while the previous one's was
    still held, and an allocator that keeps freed pages kept both: `paper_bf16` training grew from
    14 to 22.5-23.8 GB and was OOM-killed on a 24 GB machine (session 22); step times were level
    (`paper_bf16` 11.2-11.6 s both ways, `small` 0.72 inline vs 0.77 s). It only takes effect
    before JAX's backend starts, and never overrides a ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` the user
    set. Returns whether it was applied.
    """
    import os
    import jax
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        return False
    try:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            return False
    except (ImportError, AttributeError):  # a JAX without it: the update below is harmless late
        pass
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def fit(*, init_state: Any, train_step: Callable, make_batch: Callable, steps: int,
        workdir: str | Path, config: Any, seed: int = 0,
        eval_fn: Callable[[Any, Any], dict] | None = None, eval_every: int = 0,
        log_every: int = 50, checkpoint_every: int = 0, keep_checkpoints: int = 3,
        export_fn: Callable[[Any], Any] | None = None, data: Any = None,
        host_batches: bool = False, batch_spec=None, mesh=None,
        hooks: Sequence[Callable[[int, Any], None]] = (), quiet: bool = False,
        allow_config_change: bool = False) -> FitResult:
    """Train `steps` updates data-parallel over `mesh`, resuming from ``workdir/checkpoints``.

    Args:
      init_state: the initial state pytree, or a zero-argument traceable function returning it
        (preferred: it is jitted into one program, and on resume only shape-evaluated).
      train_step: pure ``(state, batch, key) -> (state, metrics dict of scalars)``; jitted once
        with the state replicated and donated and the batch split over ``'data'``.
      make_batch: ``(key, step) -> batch`` traced on device (see module doc), or with `data`
        given ``(key, step, data) -> batch``. With ``host_batches=True`` it runs in Python and
        returns the global batch as NumPy (every process computes the same batch; seed NumPy
        with ``np.random.default_rng(np.asarray(jax.random.key_data(key)))``).
      steps: total number of updates of the run (not of this call).
      workdir: run folder: ``checkpoints/``, ``config.json``, ``metrics.jsonl``, ``loss.png``.
      config: the config dataclass (or JSON-able dict); saved with every checkpoint. A resumed
        run refuses a different config (except `config.RESUME_SAFE_KEYS`) unless
        `allow_config_change`.
      seed: base of the data, step and eval keys.
      eval_fn: ``(state, key) -> dict`` of scalars; called on process 0 with the state on one
        local device every `eval_every` steps and at the end (0: only at the end).
      log_every: steps between metric fetches (means over the interval) and log lines.
      checkpoint_every: steps between checkpoints (0: only at the end); the last
        `keep_checkpoints` are kept.
      export_fn: called once at the end on process 0 with the final state on one local device
        (e.g. write inference weights); its return value is ignored.
      data: optional pytree of arrays (a fixed dataset) replicated once and passed to make_batch.
      host_batches: generate batches with NumPy on the host instead of on device.
      batch_spec: `PartitionSpec` for batch leaves (default ``P('data')``, batch on axis 0).
      mesh: default `sharding.data_mesh()` (every device of every process).
      hooks: ``hook(step, state)`` called on every process after each update (cheap host work
        only; touching the state waits for the device).
      quiet: no progress bar and no messages.
    Returns:
      `FitResult`.
    """
    import jax
    import jax.numpy as jnp

    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    log_every = max(1, int(log_every))
    mesh = shd.data_mesh() if mesh is None else mesh
    is_main = jax.process_index() == 0
    workdir = Path(workdir).absolute()
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    config_dict = config_lib.to_dict(config)
    state_sharding = shd.replicated(mesh)
    batch_sharding = shd.batch_sharding(mesh, spec=batch_spec)
    scalar_sharding = shd.replicated(mesh)
    wait_each_step = waits_for_each_step(mesh)

    # ---- keys -----------------------------------------------------------------------------
    data_key, step_key, eval_key = jax.random.split(jax.random.key(seed), 3)
    keys = shd.replicate((data_key, step_key), mesh)

    # ---- restore or init --------------------------------------------------------------------
    checkpointer = Checkpointer(workdir / "checkpoints", keep=keep_checkpoints)
    try:
        latest = checkpointer.latest_step()
        resumed_from = None
        if latest is not None:
            meta = checkpointer.read_meta(latest)
            defaults = config_lib.field_defaults(config) if not isinstance(config, dict) else None
            diff = config_lib.config_diff(meta["config"], config_dict, ignore=config_lib.RESUME_SAFE_KEYS,
                                          defaults=defaults)
            if diff and not allow_config_change:
                raise InputError(
                    f"{workdir} holds a run with a different config ({'; '.join(diff[:4])}); "
                    "use a new --workdir, or allow the change explicitly")
            abstract = jax.eval_shape(init_state) if callable(init_state) else init_state
            state, _ = checkpointer.restore(latest, _abstract(abstract, state_sharding))
            resumed_from = latest
            _log(f"resuming from checkpoint at step {latest} in {workdir / 'checkpoints'}",
                 enabled=is_main and not quiet)
        else:
            if callable(init_state):  # one compiled program instead of many eager initialiser ops
                state = jax.jit(init_state, out_shardings=state_sharding)()
            else:
                state = shd.replicate(init_state, mesh)
        start = 0 if latest is None else min(latest, steps)
        if latest is not None and latest > steps:
            _log(f"checkpoint step {latest} is beyond steps={steps}; nothing to train",
                 enabled=is_main and not quiet)
            start = steps

        if is_main:
            (workdir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
        metrics_log = MetricsLog(workdir / "metrics.jsonl", enabled=is_main)
        metrics_log.truncate_after(start)

        # ---- jitted update --------------------------------------------------------------------
        def _batch(step, data_key, data):
            k = jax.random.fold_in(data_key, step)
            return make_batch(k, step) if data is None else make_batch(k, step, data)

        if not host_batches:
            _check_batch(jax.eval_shape(lambda k, d: _batch(0, k, d), data_key, data), mesh, batch_spec)

            def update(state, step, keys, data):
                batch = jax.lax.with_sharding_constraint(_batch(step, keys[0], data), batch_sharding)
                return train_step(state, batch, jax.random.fold_in(keys[1], step))

            jitted = jax.jit(update, in_shardings=(state_sharding, scalar_sharding, state_sharding, state_sharding),
                             out_shardings=(state_sharding, scalar_sharding), donate_argnums=0)
        else:
            def update(state, batch, step, keys):
                return train_step(state, batch, jax.random.fold_in(keys[1], step))

            jitted = jax.jit(update, in_shardings=(state_sharding, batch_sharding, scalar_sharding, state_sharding),
                             out_shardings=(state_sharding, scalar_sharding), donate_argnums=0)
        if batch_spec is None:  # traced with the mesh in context: kernels that flatten the
            jitted = shd.calls_in_mesh(jitted, mesh)  # batch split it themselves (`per_batch_shard`)
        data = None if data is None else shd.replicate(data, mesh)

    except BaseException:
        checkpointer.close()
        raise

    # ---- loop -----------------------------------------------------------------------------
    def run_eval(step, state) -> dict[str, float]:
        import numpy as np
        wall_s = time.perf_counter() - t_start  # training time to this state, not the eval's own
        out = eval_fn(shd.local_copy(state), jax.random.fold_in(eval_key, step))
        out = {k: float(np.asarray(jax.device_get(v))) for k, v in out.items()}
        metrics_log.write(step, "eval", {**out, "wall_s": wall_s})
        return out

    progress = Progress(total=steps, initial=start, enabled=is_main and not quiet)
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    pending: list[dict[str, Any]] = []
    t_start = t_last = time.perf_counter()
    n_last = 0
    first_step_s = None
    done = saved = start
    try:
        for step in range(start, steps):
            step_arr = jnp.asarray(step, jnp.int32)
            if host_batches:
                batch = _batch(step, data_key, data)
                batch = shd.shard_batch(jax.device_get(batch), mesh, spec=batch_spec)
                state, metrics = jitted(state, batch, step_arr, keys)
            else:
                state, metrics = jitted(state, step_arr, keys, data)
            if wait_each_step:
                jax.block_until_ready(metrics)
            pending.append(metrics)
            done = step + 1
            if step == start:  # the first update includes compilation: time it apart
                jax.block_until_ready(metrics)
                t_last = time.perf_counter()
                first_step_s = t_last - t_start
            else:
                n_last += 1
            for hook in hooks:
                hook(done, state)
            progress.update()
            if done % log_every == 0 or done == steps:
                last_train = _mean_metrics(pending)
                pending = []
                now = time.perf_counter()
                if n_last:  # excludes the first (compiling) update
                    last_train["steps_per_s"] = n_last / max(now - t_last, 1e-9)
                t_last, n_last = now, 0
                metrics_log.write(done, "train", {**last_train, "wall_s": now - t_start})
                progress.set_metrics(last_train)
            if eval_fn is not None and is_main and (
                    (eval_every and done % eval_every == 0) or done == steps):
                last_eval = run_eval(done, state)
                progress.set_metrics({**last_train, **{f"eval_{k}": v for k, v in last_eval.items()}})
            if (checkpoint_every and done % checkpoint_every == 0) or done == steps:
                checkpointer.save(done, state, config_dict)
                saved = done
        if start == steps and eval_fn is not None and is_main:
            last_eval = run_eval(steps, state)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM turned into it by the CLI): keep the progress
        if done > saved and not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state)):
            checkpointer.save(done, state, config_dict)
            _log(f"interrupted: saved a checkpoint at step {done}; the same command resumes",
                 enabled=is_main and not quiet)
        raise
    finally:
        progress.close()
        checkpointer.close()

    # ---- finish -------------------------------------------------------------------------
    if is_main:
        plot_loss_curve(metrics_log.records(), workdir / "loss.png", title=workdir.name)
        if export_fn is not None:
            export_fn(shd.local_copy(state))
    summary = dict(last_train)
    summary.update({f"eval_{k}": v for k, v in last_eval.items()})
    return FitResult(state=state, metrics=summary, step=steps, resumed_from=resumed_from,
                     steps_run=max(0, steps - start), first_step_s=first_step_s)


# ---- NNX / optax helpers ----------------------------------------------------------------------

def split_model_and_optimizer(model, tx, *, wrt=None):
    """``nnx.split((model, nnx.Optimizer(model, tx, wrt=wrt)))`` once, for a functional loop.

    Args:
      model: an `nnx.Module` (its BatchNorm statistics etc. become non-param state).
      tx: an `optax.GradientTransformation`.
      wrt: which variables the optimizer updates (default `nnx.Param`).
    Returns:
      ``(graphdef, state)``: `nnx.merge(graphdef, state)` gives back ``(model, optimizer)``.
    """
    from flax import nnx
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param if wrt is None else wrt)
    return nnx.split((model, optimizer))


def abstract_model_and_optimizer(build: Callable[[], Any], tx, *, wrt=None):
    """Like `split_model_and_optimizer` but without running `build` (shape evaluation only).

    Returns ``(graphdef, init_state)`` where ``init_state()`` builds the real state; pass it to
    `fit(init_state=...)` so a resumed run never pays for initialisation.
    """
    from flax import nnx

    def init():
        return split_model_and_optimizer(build(), tx, wrt=wrt)[1]

    graphdef, _ = nnx.eval_shape(lambda: split_model_and_optimizer(build(), tx, wrt=wrt))
    return graphdef, init


def merge_model(graphdef, state):
    """The model (first element) of ``nnx.merge(graphdef, state)`` for eval/export."""
    from flax import nnx
    merged = nnx.merge(graphdef, state)
    return merged[0] if isinstance(merged, tuple) else merged


def make_supervised_step(graphdef, loss_fn: Callable, *, has_aux: bool = False):
    """A pure step for one model + one optimizer (the flax "functional training loop").

    Args:
      graphdef: from `split_model_and_optimizer`.
      loss_fn: ``loss_fn(model, batch, key) -> loss`` (or ``(loss, aux dict)`` with `has_aux`);
        the model is in train mode; BatchNorm statistics it updates are kept.
    Returns:
      ``train_step(state, batch, key) -> (state, {"loss": ..., **aux})`` for `fit`.
    """
    from flax import nnx

    def train_step(state, batch, key):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()

        def objective(model):
            return loss_fn(model, batch, key)

        if has_aux:
            (loss, aux), grads = nnx.value_and_grad(objective, has_aux=True)(model)
        else:
            loss, grads = nnx.value_and_grad(objective)(model)
            aux = {}
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), {"loss": loss, **aux}

    return train_step


def make_optimizer(cfg, *, steps: int):
    """optax transformation from an `OptimConfig`-like object (name, lr, schedule, clip, ...)."""
    import optax
    lr = cfg.lr
    schedule = getattr(cfg, "schedule", "constant")
    warmup = int(getattr(cfg, "warmup_steps", 0))
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(cfg.lr, max(1, steps))
    elif schedule == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(1, warmup), max(warmup + 1, steps))
    elif schedule != "constant":
        raise InputError(f"unknown schedule {schedule!r}")
    name = cfg.name
    if name == "adam":
        tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    elif name == "adamw":
        tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif name == "rmsprop":
        tx = optax.rmsprop(lr)
    elif name == "sgd":
        tx = optax.sgd(lr, momentum=cfg.momentum or None)
    else:
        raise InputError(f"unknown optimizer {name!r}")
    clip = float(getattr(cfg, "grad_clip", 0.0))
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
