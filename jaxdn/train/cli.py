"""``jaxdn train METHOD --config FILE[:variant] --workdir DIR [--set a.b=c ...] [-q] [--opt value ...]``.

`TRAINERS` maps a method to a lazily imported ``"module:function"`` with the signature
``train(config, *, workdir: Path, quiet=False, **extra) -> dict``. Options the CLI does not know
(``--data F``, ``--frames N``, ``--init W``, ``--clean-dir D``; a bare ``--flag`` means True) are
passed to the trainer as strings in ``extra`` with dashes turned into underscores; ``method`` is
passed too when the trainer declares a ``method`` keyword (one trainer serving several methods,
e.g. ``unet-g`` ... ``unet-bbg``). Multi-host runs
take ``--coordinator HOST:PORT --num-processes N --process-id I`` or the ``JAX_*`` environment
variables (see `jaxdn.sharding.maybe_initialize_distributed`).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError, JaxdnError, MethodNotAvailable

TRAINERS: dict[str, str] = {
    "toy": "jaxdn.train.toy:train",
    "unet-g": "jaxdn.train.unet:train",
    "unet-sp": "jaxdn.train.unet:train",
    "unet-gsp": "jaxdn.train.unet:train",
    "unet-bbg": "jaxdn.train.unet:train",
    "stripes": "jaxdn.train.stripes:train",
    "noise2atom": "jaxdn.train.noise2atom:train",
    "reucid-classifier": "jaxdn.reucid.train_classifier:train",
}

# Config used when --config is omitted: configs/<name>.py:default, name from the method.
DEFAULT_CONFIGS: dict[str, str] = {
    "toy": "configs/toy.py", "unet-g": "configs/unet.py:g", "unet-sp": "configs/unet.py:sp",
    "unet-gsp": "configs/unet.py:gsp", "unet-bbg": "configs/unet.py:bbg",
    "stripes": "configs/stripes.py", "noise2atom": "configs/noise2atom.py",
    "reucid-classifier": "configs/reucid.py",
}


def resolve(registry: dict[str, str], name: str, *, what: str) -> Callable:
    """Import ``"module:function"`` registered under `name`; clear errors when it is missing."""
    if name not in registry:
        raise InputError(f"unknown {what} method {name!r}; choose one of: {', '.join(registry)}")
    module_name, _, fn_name = registry[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (err.name == module_name or module_name.startswith(err.name + ".")):
            raise MethodNotAvailable(
                f"{what} for {name!r} is not implemented in this version of jaxdn ({module_name} missing)") from None
        raise
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise MethodNotAvailable(f"{what} for {name!r} is not implemented ({module_name}.{fn_name} missing)")
    return fn


def parse_extra(tokens: Sequence[str]) -> dict[str, str | bool]:
    """``["--data", "x.tif", "--quick", "--frames=5"]`` -> ``{"data": "x.tif", "quick": True, "frames": "5"}``."""
    extra: dict[str, str | bool] = {}
    i = 0
    tokens = list(tokens)
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise InputError(f"unexpected argument {tok!r}")
        name, eq, value = tok[2:].partition("=")
        key = name.replace("-", "_")
        if not key.isidentifier():
            raise InputError(f"bad option {tok!r}")
        if eq:
            extra[key] = value
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            extra[key] = tokens[i + 1]
            i += 1
        else:
            extra[key] = True
        i += 1
    return extra


def call_with_extra(fn: Callable, args: tuple, kwargs: dict, extra: dict, *, method: str, what: str):
    """Call `fn`, passing `extra` and `method` only where its signature accepts them."""
    params = inspect.signature(fn).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "method" in params:
        kwargs = {**kwargs, "method": method}
    unknown = [k for k in extra if k not in params and not var_kw]
    if unknown:
        raise InputError(f"{what} {method!r} does not take option(s) "
                         f"{', '.join('--' + k.replace('_', '-') for k in unknown)}")
    return fn(*args, **kwargs, **extra)


def _sigterm_as_interrupt():
    """Let SIGTERM stop training like Ctrl-C (the loop then checkpoints); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxdn train", description="Train a jaxdn model.",
                                epilog=f"methods: {', '.join(TRAINERS)}; other --options go to the trainer")
    p.add_argument("method", help="what to train")
    p.add_argument("--config", help="config file, optionally :variant (default: configs/<method>.py)")
    p.add_argument("--workdir", required=True, help="run folder (checkpoints, logs); an existing run resumes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--coordinator", help="multi-host: coordinator HOST:PORT")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's id")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry for ``jaxdn train``; returns the exit code (2 for user errors)."""
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exc:  # argparse usage error or --help
        return int(exc.code or 0)
    previous = _sigterm_as_interrupt()
    try:
        extra = parse_extra(rest)
        train = resolve(TRAINERS, args.method, what="trainer")
        from .loop import run_computations_inline_on_cpu
        run_computations_inline_on_cpu()  # before any computation starts JAX's backend
        from ..sharding import maybe_initialize_distributed
        maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        from .config import load_config
        spec = args.config or DEFAULT_CONFIGS.get(args.method, f"configs/{args.method}.py")
        config = load_config(spec, args.overrides)
        result = call_with_extra(train, (config,), {"workdir": Path(args.workdir), "quiet": args.quiet},
                                 extra, method=args.method, what="trainer")
    except JaxdnError as err:
        print(f"jaxdn train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxdn train: interrupted; re-run the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    import jax
    if jax.process_index() == 0 and result:
        print(json.dumps(result, default=str))
    return 0
