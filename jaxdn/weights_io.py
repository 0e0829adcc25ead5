"""Save and load inference weights of Flax NNX models as small `.npz` files (offline, no orbax).

A weights file holds every `nnx.Variable` of a model (params and, e.g., BatchNorm statistics) under
its '/'-joined path, plus a JSON string `__meta__` (config, training provenance). Loading builds the
model abstractly with `nnx.eval_shape` (no `init` compute) and fills it from the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError

META_KEY = "__meta__"


def _flatten(state) -> dict[str, np.ndarray]:
    from flax import nnx
    flat = {}
    for path, value in nnx.to_flat_state(state):
        key = "/".join(str(p) for p in path)
        flat[key] = np.asarray(value.get_value() if hasattr(value, "get_value") else value.value)
    return flat


def save_weights(path: str | os.PathLike, model, *, meta: dict[str, Any] | None = None) -> Path:
    """Write all variables of an NNX `model` to `path` (.npz) atomically; returns the path."""
    from flax import nnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = _flatten(nnx.state(model))
    flat[META_KEY] = np.asarray(json.dumps(meta or {}, default=str))
    from .io import atomic_output
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **flat)
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata stored in a weights file."""
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f[META_KEY])) if META_KEY in f.files else {}


def load_weights(path: str | os.PathLike, build: Callable[[], Any]):
    """Build a model with `build()` abstractly (`nnx.eval_shape`) and fill it from `path`.

    Args:
      path: a `.npz` written by `save_weights`.
      build: zero-argument constructor, e.g. `lambda: UNet(rngs=nnx.Rngs(0))`.
    Returns:
      The model with every variable loaded. Raises InputError if names or shapes do not match.
    """
    from flax import nnx
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    abstract = nnx.eval_shape(build)
    graphdef, state = nnx.split(abstract)
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files if k != META_KEY}
    except Exception as err:  # corrupt file
        raise InputError(f"cannot read weights {path}: {err}") from None
    flat = list(nnx.to_flat_state(state))
    expected = {"/".join(str(p) for p in k) for k, _ in flat}
    if expected != set(stored):
        missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
        raise InputError(f"weights {path.name} do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    leaves = []
    for key, var in flat:
        name = "/".join(str(p) for p in key)
        arr = stored[name]
        if tuple(arr.shape) != tuple(var.shape):
            raise InputError(f"weights {path.name}: {name} has shape {arr.shape}, model expects {var.shape}")
        leaves.append((key, var.replace(arr.astype(var.dtype))))
    state = nnx.from_flat_state(leaves)
    return nnx.merge(graphdef, state)


def shipped(name: str) -> Path:
    """Path of a weights file shipped inside the package (`jaxdn/weights/<name>`)."""
    return Path(__file__).parent / "weights" / name


def resolve(weights, *, default_name: str, train_hint: str) -> Path:
    """Path of the weights to use: None or "default" → the shipped `default_name`; a directory
    (e.g. a training workdir) → its `default_name`, ``weights.npz`` or only ``.npz``; else the file.

    Raises MethodNotAvailable (shipped file missing; the message says how to train it: `train_hint`)
    or InputError (no such file / no weights in the directory).
    """
    from .errors import InputError, MethodNotAvailable
    if weights is None or str(weights) == "default":
        path = shipped(default_name)
        if not path.is_file():
            raise MethodNotAvailable(f"shipped weights {default_name} are missing in this installation; "
                                     f"train them with: {train_hint}")
        return path
    path = Path(weights)
    if path.is_dir():
        for cand in (path / default_name, path / "weights.npz", *sorted(path.glob("*.npz"))):
            if cand.is_file():
                return cand
        raise InputError(f"no .npz weights in directory {path}")
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    return path
