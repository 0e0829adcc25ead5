"""Command line: `jaxdn denoise | info | simulate | train | evaluate | bench`.

A thin layer over the Python API. Bad input gives a one-line error and exit code 2; a folder run
that skipped unreadable files exits 1 after writing the others.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import JaxdnError

EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 1


def _size_bytes(text: str) -> int:
    """'2G', '512M', '1.5GB', '1000000' -> bytes."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)") from None


def _add_denoise(sub) -> None:
    from .api import METHODS, DEFAULT_METHOD
    p = sub.add_parser("denoise", help="denoise image files or folders",
                       description="Denoise images/stacks; writes OUTDIR/<stem>_denoised.tif with calibration kept.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("--example", action="store_true", help="denoise the bundled simulated STEM example stack")
    p.add_argument("-o", "--outdir", default="denoised",
                   help="output folder (default: denoised/); a file name such as out.tif writes that file (one input)")
    p.add_argument("--output", help="output file (single input only); extension chooses the format")
    p.add_argument("-m", "--method", default=DEFAULT_METHOD, choices=list(METHODS), help=f"default: {DEFAULT_METHOD}")
    p.add_argument("--weights", help="weights file/folder (default: the shipped weights)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the input)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (results are deterministic per seed)")
    p.add_argument("--report", action="store_true", help="also write a PNG: noisy | denoised | residual | spectrum")
    p.add_argument("--fill-nonfinite", action="store_true", help="replace NaN/inf pixels by the local median")
    p.add_argument("--channel", type=int, help="colour channel to use for RGB/RGBA inputs")
    p.add_argument("--patch-size", type=int, help="REUCID: odd patch size (default: from the PSF)")
    p.add_argument("--memory-budget", type=_size_bytes, help="memory budget, e.g. 2G (default: a safe fraction of free memory)")
    p.add_argument("--max-stacks", type=int, help="REUCID: stop after this many patch stacks (interim result)")
    p.add_argument("--refine", choices=("none", "frame", "movie"),
                   help="Noise2Atom: fit Gaussian columns to each input frame at the atom map's columns "
                        "(output in the input's units, background removed); 'movie' also averages column "
                        "tracks over neighbouring frames after drift correction and adds the columns the atom "
                        "map missed from the fit's residual and the neighbouring frames' fits (default: none, the atom map)")
    p.add_argument("--track-window", type=int, help="Noise2Atom --refine movie: frames averaged on each side (default 2)")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose output and sidecar exist for the same input (SHA-256) and method")
    p.add_argument("--batch-frames", type=int, help="frames per chunk when streaming stacks (default: from the memory budget)")
    g = p.add_argument_group("multi-process (one process per host, shared output folder): files are split "
                             "between processes, or the frames of each stack when there are fewer files")
    g.add_argument("--coordinator", help="HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, help="number of processes (default: $JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="this process's id 0..N-1 (default: $JAX_PROCESS_ID)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")


def _outdir_as_file(outdir: str, n_inputs: int, *, quiet: bool) -> str | None:
    """`-o out.tif` names a file, not a folder: the output file for one input (None: a folder).

    Raises JaxdnError for several inputs, which cannot share one file."""
    from .io import SUPPORTED_EXTENSIONS, WRITABLE_EXTENSIONS
    path = Path(outdir)
    if path.is_dir() or not path.name.lower().endswith(tuple(SUPPORTED_EXTENSIONS) + WRITABLE_EXTENSIONS):
        return None
    if n_inputs != 1:
        raise JaxdnError(f"-o {outdir} looks like a file name but -o is the output folder for {n_inputs} "
                         "inputs; pass a folder")
    if not quiet:
        print(f"jaxdn: -o {outdir} is a file name: writing that file (as --output)", file=sys.stderr)
    return outdir


def _cmd_denoise(args) -> int:
    from .stream import interrupt_on_sigterm
    with interrupt_on_sigterm():
        return _denoise_files(args)


def _denoise_files(args) -> int:
    from tqdm import tqdm
    from . import batch
    from .sharding import maybe_initialize_distributed, process_share

    multi = maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if args.batch_frames is not None and args.batch_frames < 1:
        raise JaxdnError("--batch-frames must be at least 1")

    inputs = list(args.inputs)
    if args.example:
        inputs.append(str(batch.example_path()))
    if not inputs:
        raise JaxdnError("no input given; pass image files/folders or --example")
    paths = batch.expand_inputs(inputs)
    if args.output and len(paths) != 1:
        raise JaxdnError("--output takes a single input; use -o OUTDIR for several")
    args.output = args.output or _outdir_as_file(args.outdir, len(paths), quiet=args.quiet)
    outdir = Path(args.outdir)
    options = {k: v for k, v in (("patch_size", args.patch_size), ("memory_budget", args.memory_budget),
                                 ("max_stacks", args.max_stacks), ("refine", args.refine),
                                 ("track_window", args.track_window)) if v is not None}
    targets = [(p, Path(args.output) if args.output else batch.output_path_for(p, outdir)) for p in paths]
    # Refuse unavailable methods and clashing outputs before any work is done.
    from .api import method_function
    method_function(args.method)
    outs = [t for _, t in targets]
    if len(set(map(str, outs))) != len(outs):
        raise JaxdnError("two inputs would write the same output name; denoise them into different folders")
    single = len(targets) == 1
    denoise_one, speak = batch.denoise_file, not args.quiet
    if multi:
        import jax
        if len(targets) >= jax.process_count():
            # every process sees the same sorted list and takes its contiguous share of the files
            targets, single = process_share(targets), False
            if speak:
                print(f"jaxdn: process {jax.process_index()} of {jax.process_count()}: {len(targets)} files",
                      file=sys.stderr)
        else:
            # fewer files than processes: all processes share the frames of each stack
            denoise_one, speak = batch.denoise_file_shared, speak and jax.process_index() == 0
            if speak:
                print(f"jaxdn: {jax.process_count()} processes share the frames of each stack", file=sys.stderr)
    failed = 0
    bar = tqdm(targets, desc="files", unit="file", disable=not speak or single)
    for inp, out in bar:
        try:
            res = denoise_one(inp, out, method=args.method, weights=args.weights, seed=args.seed,
                              overwrite=args.overwrite, report=args.report,
                              fill_nonfinite=args.fill_nonfinite, channel=args.channel,
                              progress=speak, options=options, resume=args.resume,
                              batch_frames=args.batch_frames)
        except JaxdnError as err:
            if single:
                raise
            failed += 1
            tqdm.write(f"jaxdn: skipped {inp}: {err}", file=sys.stderr)
            continue
        if res.skipped:
            if speak:
                tqdm.write(f"{inp} -> {res.output} already complete (--resume)")
            continue
        if speak:
            msg = f"{inp} -> {res.output} {res.shape}"
            if res.filled_nonfinite:
                msg += f" (replaced {res.filled_nonfinite} NaN/inf pixels by the local median)"
            if res.report:
                msg += f"; report {res.report}"
            tqdm.write(msg)
    if multi:  # wait for every process, so no one tears down the coordinator under the others
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxdn denoise done")
    if failed:
        print(f"jaxdn: {failed} of {len(targets)} files failed", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="shape, dtype, calibration and intensity range of a file")
    p.add_argument("file")
    p.add_argument("--channel", type=int)


def _cmd_info(args) -> int:
    import numpy as np
    from . import io
    img = io.read(args.file, channel=args.channel)
    d = img.data
    finite = np.isfinite(d)
    print(f"file:        {args.file}")
    print(f"shape:       {d.shape} ({'stack of %d frames' % d.shape[0] if d.ndim == 3 else 'single image'})")
    print(f"dtype:       {d.dtype} (source: {img.metadata.get('source_dtype', 'unknown')})")
    cal = f"{img.pixel_size:g} {img.unit}/px" if img.pixel_size else "none"
    print(f"calibration: {cal}")
    if finite.any():
        print(f"intensity:   min {d[finite].min():g}, max {d[finite].max():g}, mean {d[finite].mean():g}")
    if not finite.all():
        print(f"non-finite:  {int((~finite).sum())} NaN/inf pixels")
    return 0


def _add_simulate(sub) -> None:
    from .simulate_cli import KINDS
    p = sub.add_parser("simulate", help="write simulated noisy/clean images for testing and training")
    p.add_argument("kind", choices=list(KINDS))
    p.add_argument("-n", type=int, default=1, help="number of images (frames for movies)")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dose", type=float, default=500.0, help="electron dose in e/Å² (STEM kinds)")
    p.add_argument("--overwrite", action="store_true")


def _cmd_simulate(args) -> int:
    from .simulate_cli import simulate_to_dir
    written = simulate_to_dir(args.kind, n=args.n, outdir=Path(args.outdir), size=args.size, seed=args.seed,
                              dose=args.dose, overwrite=args.overwrite)
    for path in written:
        print(path)
    return 0


def _passthrough(module: str, fn: str, argv: list[str]) -> int:
    import importlib
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise JaxdnError(f"this command is not available in this version of jaxdn yet ({module} missing)") from None
        raise
    return int(getattr(mod, fn)(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxdn", description="Denoise atomic-resolution microscopy images.")
    parser.add_argument("--version", action="version", version=f"jaxdn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_denoise(sub)
    _add_info(sub)
    _add_simulate(sub)
    for name, text in (("train", "train a model: jaxdn train METHOD --config FILE[:variant] --workdir DIR"),
                       ("evaluate", "evaluate a method on simulated data or a movie"),
                       ("bench", "benchmark throughput on this machine against peers")):
        sp = sub.add_parser(name, help=text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


PASSTHROUGH = {"train": ("jaxdn.train.cli", "main"), "evaluate": ("jaxdn.evaluate", "main"),
               "bench": ("jaxdn.bench", "main")}


def enable_compilation_cache() -> None:
    """Persist XLA compilations across CLI runs (~/.cache/jaxdn/xla; JAXDN_CACHE_DIR overrides,
    JAXDN_NO_CACHE=1 disables), so the second `jaxdn denoise` of a shape skips most compile time."""
    if os.environ.get("JAXDN_NO_CACHE"):
        return
    cache = os.environ.get("JAXDN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxdn", "xla")
    try:
        os.makedirs(cache, exist_ok=True)
        import jax
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception:  # a read-only home or an old JAX must never stop denoising
        pass


COMPUTE_COMMANDS = ("denoise", "train", "evaluate")  # compiled XLA work: cache and allocator apply


def main(argv: list[str] | None = None) -> int:
    as_command = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMPUTE_COMMANDS:
        if as_command:  # the command process only, never a caller's: jemalloc when installed
            from .allocator import maybe_reexec
            maybe_reexec()
        enable_compilation_cache()
    if argv and argv[0] in PASSTHROUGH:
        try:
            return _passthrough(*PASSTHROUGH[argv[0]], argv[1:])
        except JaxdnError as err:
            print(f"jaxdn {argv[0]}: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"denoise": _cmd_denoise, "info": _cmd_info, "simulate": _cmd_simulate}
    try:
        return commands[args.command](args)
    except JaxdnError as err:
        print(f"jaxdn {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("jaxdn: interrupted; no partial output was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
