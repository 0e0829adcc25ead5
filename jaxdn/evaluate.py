"""``jaxdn evaluate METHOD [--weights PATH] [--data FILE] [-o OUTDIR] [--quick] [--seed N] [-q]``.

`EVALUATORS` maps a method (family) to a lazily imported ``"module:function"`` with the signature
``evaluate(*, method, weights=None, data=None, outdir: Path, quick=False, seed=0, quiet=False) -> dict``;
the function prints its own tables and writes its files under `outdir`. Options the CLI does not
know are passed through as strings (``--report`` -> ``report=True``) where the function accepts them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import JaxdnError

EVALUATORS: dict[str, str] = {
    "unet": "jaxdn.train.unet:evaluate",
    "unet-g": "jaxdn.train.unet:evaluate", "unet-sp": "jaxdn.train.unet:evaluate",
    "unet-gsp": "jaxdn.train.unet:evaluate", "unet-bbg": "jaxdn.train.unet:evaluate",
    "stripes": "jaxdn.train.stripes:evaluate",
    "noise2atom": "jaxdn.train.noise2atom:evaluate",
    "reucid": "jaxdn.reucid.evaluate:evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxdn evaluate", description="Evaluate a jaxdn method against ground truth.",
                                epilog=f"methods: {', '.join(EVALUATORS)}")
    p.add_argument("method")
    p.add_argument("--weights", type=Path, help="weights file (default: the shipped ones)")
    p.add_argument("--data", type=Path, help="data file (default: simulated data)")
    p.add_argument("-o", "--outdir", type=Path, default=None, help="output folder (default: eval-METHOD)")
    p.add_argument("--quick", action="store_true", help="small, fast evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry for ``jaxdn evaluate``; returns the exit code (2 for user errors)."""
    from .train.cli import call_with_extra, parse_extra, resolve
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        extra = parse_extra(rest)
        fn = resolve(EVALUATORS, args.method, what="evaluator")
        outdir = args.outdir if args.outdir is not None else Path(f"eval-{args.method}")
        kwargs = dict(weights=args.weights, data=args.data, outdir=outdir, quick=args.quick,
                      seed=args.seed, quiet=args.quiet)
        result = call_with_extra(fn, (), kwargs, extra, method=args.method, what="evaluator")
    except JaxdnError as err:
        print(f"jaxdn evaluate: error: {err}", file=sys.stderr)
        return 2
    if result and not args.quiet:
        print(json.dumps(result, default=str))
    return 0
