"""Training checkpoints with orbax: any state pytree + the config JSON, keep the last N, resume.

The state is stored as a flat dict of its leaves (``"00000"``, ``"00001"``, ...) next to a JSON
item holding the config, the leaf paths and (for typed PRNG keys) the key implementation. Storing
leaves flat makes any pytree (an `nnx.State` of model + optimizer, optax named tuples, dicts of
several optimizers for a GAN) checkpointable without orbax knowing its node types; restoring
unflattens into the caller's abstract state, so shapes, dtypes and shardings come from the run
that restores (including multi-process shardings).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError


def _is_key(x) -> bool:
    import jax
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_paths(tree) -> list[str]:
    import jax
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class Checkpointer:
    """Orbax `CheckpointManager` for ``(step, state, config dict)`` under ``directory``.

    Args:
      directory: folder of step subfolders (created).
      keep: how many most recent checkpoints to keep.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3):
        import orbax.checkpoint as ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True,
                                               cleanup_tmp_directories=True)  # left by a killed run
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, config: dict[str, Any], *, force: bool = True) -> None:
        """Start writing `state` at `step` (asynchronous; `wait()` or `close()` to finish)."""
        import jax
        import orbax.checkpoint as ocp
        leaves = jax.tree.leaves(state)
        key_impls = {}
        flat = {}
        for i, leaf in enumerate(leaves):
            if _is_key(leaf):
                key_impls[str(i)] = str(jax.random.key_impl(leaf))
                leaf = jax.random.key_data(leaf)
            flat[f"{i:05d}"] = leaf
        meta = {"step": int(step), "config": config, "paths": _leaf_paths(state),
                "key_impls": key_impls}
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)), force=force)

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON item (config, leaf paths) of checkpoint `step` (default: latest)."""
        import orbax.checkpoint as ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise InputError(f"no checkpoint in {self.directory}")
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out["meta"]

    def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
        """Restore checkpoint `step` into the structure of `abstract_state`.

        Args:
          step: a step from `all_steps()`.
          abstract_state: pytree of `jax.ShapeDtypeStruct` (with `.sharding`) or arrays giving the
            target structure, shapes, dtypes and shardings.
        Returns:
          ``(state, meta)``; meta holds ``config`` (dict) and ``step``.
        """
        import jax
        import orbax.checkpoint as ocp
        meta = self.read_meta(step)
        leaves, treedef = jax.tree.flatten(abstract_state)
        paths = _leaf_paths(abstract_state)
        if paths != meta["paths"]:
            missing = sorted(set(meta["paths"]) - set(paths))[:3]
            extra = sorted(set(paths) - set(meta["paths"]))[:3]
            raise InputError(f"checkpoint {self.directory / str(step)} does not match this model/optimizer "
                             f"(only in checkpoint: {missing}, only in this run: {extra})")
        key_impls = meta.get("key_impls", {})
        targets = {}
        for i, leaf in enumerate(leaves):
            sharding = getattr(leaf, "sharding", None)
            if _is_key(leaf):
                data = jax.eval_shape(jax.random.key_data, leaf)
                targets[f"{i:05d}"] = jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
            else:
                targets[f"{i:05d}"] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(targets)))
        flat = out["state"]
        restored = []
        for i in range(len(leaves)):
            x = flat[f"{i:05d}"]
            if str(i) in key_impls:
                x = jax.random.wrap_key_data(x, impl=key_impls[str(i)])
            restored.append(x)
        return jax.tree.unflatten(treedef, restored), meta

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
