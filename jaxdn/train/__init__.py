"""The shared training machinery of jaxdn (one loop for every trained model).

API (see each module for details)::

    from jaxdn.train.config import load_config, OptimConfig, to_dict, from_dict, compute_dtype
    config = load_config("configs/unet.py:tiny", overrides=["optim.lr=1e-4", "steps=10"])

    from jaxdn.train.loop import (fit, FitResult, split_model_and_optimizer,
                                  abstract_model_and_optimizer, make_supervised_step,
                                  merge_model, make_optimizer)
    result = fit(init_state=..., train_step=..., make_batch=..., steps=N, workdir=DIR,
                 config=config, seed=0, eval_fn=None, eval_every=0, log_every=50,
                 checkpoint_every=0, keep_checkpoints=3, export_fn=None, data=None,
                 host_batches=False, batch_spec=None, mesh=None, hooks=(), quiet=False,
                 allow_config_change=False)  # -> FitResult(state, metrics, step, resumed_from, steps_run, first_step_s)

    jaxdn.train.cli.main(argv) -> int           # `jaxdn train METHOD --config F[:v] --workdir D ...`
    jaxdn.train.cli.TRAINERS                    # method -> "module:train"
    jaxdn.evaluate.main(argv) -> int            # `jaxdn evaluate METHOD ...`, EVALUATORS registry
    jaxdn.sharding                              # data_mesh, shard_batch, replicate, local_copy, ...

A trainer (``train(config, *, workdir, quiet=False, **extra) -> dict``), cf. `jaxdn.train.toy`::

    tx = make_optimizer(config.optim, steps=config.steps)
    graphdef, init_state = abstract_model_and_optimizer(lambda: UNet(rngs=nnx.Rngs(config.seed)), tx)
    def make_batch(key, step):             # global batch, generated on device, batch axis first
        clean, noisy = jax.vmap(simulate_pair)(jax.random.split(key, config.batch_size))
        return {"clean": clean, "noisy": noisy}
    def loss_fn(model, batch, key):
        return jnp.mean(jnp.abs(model(batch["noisy"]) - batch["clean"]))
    result = fit(init_state=init_state, train_step=make_supervised_step(graphdef, loss_fn),
                 make_batch=make_batch, steps=config.steps, workdir=workdir, config=config,
                 seed=config.seed, export_fn=lambda s: save_weights(path, merge_model(graphdef, s)),
                 quiet=quiet, ...)
    return result.metrics

Semantics:
* State: any pytree, replicated on the ``'data'`` mesh and donated to the jitted step. The step
  is jitted once (one trace for the whole run). Batches: every leaf has the global batch on axis 0
  (or `batch_spec`), split over devices; `config.batch_size` is the global batch and must be a
  multiple of the device count.
* Keys: ``data_key, step_key, eval_key = split(key(seed), 3)``; update ``i`` (0-based) uses
  ``fold_in(data_key, i)`` for its batch and ``fold_in(step_key, i)`` for the step, so results do
  not depend on interruptions and resumes are exact. Data also do not depend on the device or
  process count (generation is one SPMD program), so 1 and N devices agree to float tolerance.
* Checkpoints: ``workdir/checkpoints/<step>`` (orbax; state leaves + config JSON), every
  `checkpoint_every` steps and at the end; an existing checkpoint always resumes (a different
  config is refused, except for `config.RESUME_SAFE_KEYS` such as ``steps``).
* Output (process 0 only): ``config.json``, ``metrics.jsonl`` (``{"step", "kind": "train"|"eval",
  "wall_s", ...}``; train values are means over the last `log_every` steps; ``wall_s`` is the
  time since this call started, compilation, evaluations and checkpoints included, as of the end
  of that step, so curves of quality against time compare variants), ``loss.png``, tqdm bar.
* BatchNorm: `make_supervised_step` puts the model in train mode; batch statistics updated in the
  forward pass are part of the returned state. Eval functions call ``model.eval()``.
* GAN / several optimizers: pack them in one state and write one pure step, e.g.
  ``gdef, g = split_model_and_optimizer(gen, tx_g); cdef, c = split_model_and_optimizer(critic, tx_c)``,
  ``state = {"gen": g, "critic": c}``, and ``train_step(state, batch, key)`` merges both, runs
  ``n_critic`` critic updates (a Python loop unrolled at trace time or `lax.fori_loop`, each on
  its own slice ``batch["real"][:, i]`` of a batch shaped (B, n_critic + 1, ...)) then one
  generator update, and returns ``{"gen": nnx.state((gen, opt_g)), "critic": ...}`` and metrics.
* bf16 / larger batch: config fields (``compute_dtype="bfloat16"`` passed to the model's ``dtype``
  with float32 params; ``batch_size``), never separate code paths.
* Multi-host: call `jaxdn.sharding.maybe_initialize_distributed()` first (the CLI does); every
  process runs the same `fit`; each computes only its devices' rows of the batch; orbax writes
  checkpoints collectively; logs, PNG, eval and export run on process 0.
"""
