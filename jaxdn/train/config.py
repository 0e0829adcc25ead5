"""Experiment configs: frozen, typed dataclasses defined by Python files, with ``a.b=c`` overrides.

A config file ``configs/<experiment>.py`` defines ``get_config(variant: str = "default")``
returning a frozen dataclass (nested dataclasses allowed); its docstring gives the run command.
`load_config("configs/unet.py:tiny", overrides=["optim.lr=1e-4", "steps=10"])` imports the file
by path, calls ``get_config("tiny")`` and applies the overrides, converting each value from text to
the field's declared type (int, float, bool, str, tuples, ``X | None``, `Literal`). Unknown keys
and unparsable values raise `InputError`. `to_dict` / `from_dict` give the JSON form stored in
every checkpoint and in ``workdir/config.json``.

Conventional top-level fields read by the trainers (none is required by this module):
``steps``, ``batch_size`` (global, split over devices), ``seed``, ``log_every``, ``eval_every``,
``checkpoint_every``, ``keep_checkpoints``, ``compute_dtype`` (``"float32"`` or ``"bfloat16"``;
passed to the model as its computation dtype, parameters stay float32 — fast variants are configs,
not forks).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError

# Fields (dotted for nested ones) that may change when a run is resumed: they do not change what is
# computed (`model.impl` picks how convolutions are computed: same parameters, same values to rounding).
RESUME_SAFE_KEYS = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "model.impl")

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _resolve_file(path_text: str) -> Path:
    path = Path(path_text).expanduser()
    candidates = [path]
    if not path.is_absolute():
        candidates.append(_REPO_ROOT / path)
        if path.suffix != ".py" and len(path.parts) == 1:  # "unet" -> configs/unet.py
            candidates += [Path("configs") / f"{path}.py", _REPO_ROOT / "configs" / f"{path}.py"]
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"config file not found: {path_text}")


def split_spec(spec: str) -> tuple[str, str]:
    """``"configs/unet.py:tiny"`` -> ``("configs/unet.py", "tiny")``; no variant -> ``"default"``."""
    head, sep, variant = spec.rpartition(":")
    if not sep or not head or "/" in variant or "\\" in variant or variant.endswith(".py"):
        return spec, "default"
    return head, variant or "default"


def import_config_module(path: str | Path) -> types.ModuleType:
    """Import a config file by path (not via `sys.path`)."""
    file = _resolve_file(str(path))
    name = f"jaxdn_config_{file.stem}_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need their module registered
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        raise
    if not hasattr(module, "get_config"):
        raise InputError(f"config file {file} defines no get_config(variant)")
    return module


def load_config(spec: str, overrides: Iterable[str] = ()) -> Any:
    """Load ``FILE[:variant]`` and apply ``a.b=c`` overrides.

    Args:
      spec: path of a config file, optionally ``:variant`` (default ``"default"``).
      overrides: strings ``"dotted.key=value"``.
    Returns:
      The frozen config dataclass.
    """
    path, variant = split_spec(spec)
    module = import_config_module(path)
    try:
        config = module.get_config(variant)
    except (KeyError, ValueError) as err:
        raise InputError(f"config {path}: unknown variant {variant!r} ({err})") from None
    if not dataclasses.is_dataclass(config):
        raise InputError(f"config {path}: get_config must return a dataclass, got {type(config).__name__}")
    return apply_overrides(config, overrides)


def apply_overrides(config: Any, overrides: Iterable[str]) -> Any:
    """Return a copy of `config` with each ``"a.b=c"`` applied (value parsed to the field type)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"override {item!r} is not of the form key=value")
        config = _set(config, key.split("."), text.strip(), key)
    return config


def _field_types(cls) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns=vars(module) if module else None)


def _set(obj: Any, parts: list[str], text: str, full: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise InputError(f"override {full!r}: {'.'.join(parts)!r} is not a config section")
    names = [f.name for f in dataclasses.fields(obj)]
    name = parts[0]
    if name not in names:
        raise InputError(f"unknown config key {full!r}; valid keys here: {', '.join(names)}")
    current = getattr(obj, name)
    if len(parts) > 1:
        return dataclasses.replace(obj, **{name: _set(current, parts[1:], text, full)})
    if dataclasses.is_dataclass(current):
        raise InputError(f"override {full!r}: it is a section; set one of its fields instead")
    value = parse_value(text, _field_types(type(obj))[name], key=full)
    return dataclasses.replace(obj, **{name: value})


_NONE = {"none", "null"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(text: str, tp: Any, *, key: str = "value") -> Any:
    """Convert override text to type `tp` (int, float, bool, str, tuple[...], X | None, Literal)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, a, key=key)
            except InputError as err:
                errors.append(str(err))
        raise InputError(f"cannot set {key!r} to {text!r}: expected {tp}")
    if origin is typing.Literal:
        for a in args:
            try:
                if parse_value(text, type(a), key=key) == a:
                    return a
            except InputError:
                pass
        raise InputError(f"cannot set {key!r} to {text!r}: choose one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        body = text.strip()
        if body[:1] in "([" and body[-1:] in ")]":
            body = body[1:-1]
        items = [t.strip() for t in body.split(",") if t.strip()]
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise InputError(f"cannot set {key!r} to {text!r}: expected {len(args)} comma-separated values")
            return tuple(parse_value(t, a, key=key) for t, a in zip(items, args))
        elem = args[0] if args else str
        out = [parse_value(t, elem, key=key) for t in items]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InputError(f"cannot set {key!r} to {text!r}: expected true or false")
    if tp is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise InputError(f"cannot set {key!r} to {text!r}: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise InputError(f"cannot set {key!r} to {text!r}: expected a number") from None
    if tp is str:
        return text
    raise InputError(f"cannot override {key!r}: unsupported field type {tp}")


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready nested dict of a config dataclass (tuples become lists)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"not a config dataclass: {type(config).__name__}")
    return conv(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass of type `cls` from `to_dict` output (lists become tuples)."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise InputError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {k: _from_json(v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def _from_json(v: Any, tp: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(v, dict):
        return from_dict(tp, v)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            return None
        for a in (a for a in args if a is not type(None)):
            if dataclasses.is_dataclass(a) and isinstance(v, dict):
                return from_dict(a, v)
            if typing.get_origin(a) in (tuple, list) and isinstance(v, list):
                return _from_json(v, a)
        return v
    if origin is tuple and isinstance(v, list):
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            return tuple(_from_json(x, a) for x, a in zip(v, args))
        return tuple(_from_json(x, args[0] if args else Any) for x in v)
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def field_defaults(config: Any) -> dict[str, Any]:
    """Nested dict (as `to_dict`) of the declared defaults of a config dataclass's fields; fields
    without a default are left out, nested dataclass values are walked."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = field_defaults(value)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = to_dict({"v": f.default})["v"]
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict({"v": f.default_factory()})["v"]
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], *, ignore: Iterable[str] = (),
                defaults: dict[str, Any] | None = None) -> list[str]:
    """Dotted keys whose values differ between two `to_dict` outputs, as ``"key: old -> new"``.

    `defaults` (`field_defaults` of the new config): a key missing from `old` — a field added to the
    config after that run was written — whose new value is its declared default is no difference."""
    ignore = set(ignore)
    out: list[str] = []
    defaults = json.loads(json.dumps(defaults or {}))

    def walk(a, b, prefix, dflt):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                key = f"{prefix}{k}"
                if key in ignore:
                    continue
                sub = dflt.get(k, "<no default>") if isinstance(dflt, dict) else "<no default>"
                if k not in a and k in b and sub != "<no default>" and b[k] == sub:
                    continue
                walk(a.get(k, "<missing>"), b.get(k, "<missing>"), key + ".", sub)
        elif a != b:
            out.append(f"{prefix.rstrip('.')}: {a!r} -> {b!r}")

    walk(json.loads(json.dumps(old)), json.loads(json.dumps(new)), "", defaults)
    return out


def compute_dtype(name: str):
    """``"float32"`` / ``"bfloat16"`` (config field ``compute_dtype``) -> a `jnp.dtype`."""
    import jax.numpy as jnp
    table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if name not in table:
        raise InputError(f"compute_dtype must be one of {', '.join(table)}, got {name!r}")
    return table[name]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer section shared by the trainers (see `loop.make_optimizer`).

    Attributes:
      name: "adam", "adamw", "rmsprop" or "sgd".
      lr: peak learning rate.
      schedule: "constant", "cosine" (decay to 0 over the run) or "warmup_cosine".
      warmup_steps: linear warm-up length for "warmup_cosine".
      grad_clip: global-norm clipping threshold (0: off).
    """
    name: typing.Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: typing.Literal["constant", "cosine", "warmup_cosine"] = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0
