"""File-level denoising: input paths -> output paths, with safety checks, provenance and reports.

The CLI calls `expand_inputs`, `output_path_for` and `denoise_file`; nothing here parses arguments.
Stacks written to .tif/.tiff/.npy are streamed chunk by chunk (`jaxdn.stream`), so memory does not
grow with the number of frames; single images and other output formats are denoised in memory.
Both paths write atomically with the same calibration and provenance sidecar.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import api, io
from .errors import InputError, OutputExistsError
from .provenance import provenance


@dataclass
class FileResult:
    """What happened to one input file."""
    input: Path
    output: Path | None
    shape: tuple[int, ...] | None = None
    filled_nonfinite: int = 0
    report: Path | None = None
    error: str | None = None
    skipped: bool = False          # --resume found a complete output
    streamed: bool = False         # written chunk by chunk


def _is_supported(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in io.SUPPORTED_EXTENSIONS)


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expanded to the supported image files they contain (sorted, not recursive)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_supported(p))
            if not found:
                raise InputError(f"folder {path} contains no supported image files")
            out.extend(found)
        else:
            out.append(path)
    return out


def output_path_for(input_path: Path, outdir: Path, suffix: str = ".tif") -> Path:
    """`OUTDIR/<stem>_denoised.tif` for an input file."""
    name = input_path.name
    for ext in sorted(io.SUPPORTED_EXTENSIONS, key=len, reverse=True):  # '.ome.tif' before '.tif'
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    else:
        name = input_path.stem
    return outdir / f"{name}_denoised{suffix}"


def check_output(input_path: Path, output_path: Path, *, overwrite: bool) -> None:
    """Refuse an output equal to the input (always) or an existing output (unless overwrite)."""
    if output_path.exists() and input_path.exists() and os.path.samefile(output_path, input_path):
        raise OutputExistsError(f"output {output_path} is the input file; choose another output")
    if output_path.resolve() == input_path.resolve():
        raise OutputExistsError(f"output {output_path} is the input file; choose another output")
    if output_path.exists() and not overwrite:
        raise OutputExistsError(f"output {output_path} exists; pass --overwrite to replace it")


def denoise_file(input_path: Path, output_path: Path, *, method: str = api.DEFAULT_METHOD, weights=None,
                 seed: int = 0, overwrite: bool = False, report: bool = False, fill_nonfinite: bool = False,
                 channel: int | None = None, progress: bool = False, options: dict[str, Any] | None = None,
                 resume: bool = False, batch_frames: int | None = None, stream: bool | None = None) -> FileResult:
    """Read, denoise and write one file (atomically), keeping calibration; never touches the input.

    Args:
      resume: return at once (``skipped=True``) when the output and its sidecar already exist and
        the sidecar records this method and the input's current SHA-256; a sidecar whose output
        is missing is replaced. Existing outputs that do not match still need `overwrite`.
      batch_frames: frames per chunk when streaming a stack (default from the memory budget).
      stream: force (True) or forbid (False) chunked streaming; default: stacks written to
        .tif/.tiff/.npy are streamed.
    Raises `JaxdnError` subclasses for bad input; the output is written only after a complete result.
    """
    from . import validate
    from . import stream as _stream
    input_path, output_path = Path(input_path), Path(output_path)
    options = dict(options or {})
    if resume and _stream.is_complete(input_path, output_path, method=method):
        return FileResult(input=input_path, output=output_path, skipped=True)
    if resume and not output_path.exists() and _stream.sidecar_path(output_path).is_file():
        overwrite = True  # a sidecar without its output is a leftover of an interrupted run: replace it
    check_output(input_path, output_path, overwrite=overwrite)
    api.method_function(method)  # refuse unavailable methods before reading anything
    image = None
    if stream is not False and _stream.can_stream(output_path):
        if input_path.suffix.lower() in _stream.LAZY_INPUTS:
            lazy = io.open_lazy(input_path, channel=channel)      # memory-mapped / page-wise
        else:                                                      # read once, then slice
            image = io.read(input_path, channel=channel)
            lazy = _stream.lazy_from_image(image)
        if stream or len(lazy.shape) == 3:
            res = _stream.denoise_stack(input_path, output_path, method=method, weights=weights, seed=seed,
                                        overwrite=overwrite, fill_nonfinite=fill_nonfinite, channel=channel,
                                        progress=progress, options=options, batch_frames=batch_frames,
                                        stack=lazy)
            rep = None
            if report:
                from .report import save_report
                rep = save_report(res.output.with_name(res.output.stem + "_report.png"), res.first_noisy,
                                  res.first_denoised, pixel_size=res.pixel_size, unit=res.unit,
                                  title=f"{input_path.name} — {method}")
            return FileResult(input=input_path, output=res.output, shape=res.shape,
                              filled_nonfinite=res.filled_nonfinite, report=rep, streamed=True)
    image = io.read(input_path, channel=channel) if image is None else image
    data, n_filled = validate.fill_nonfinite(image.data, fill=fill_nonfinite)
    image = replace(image, data=data)
    result = api.denoise(image, method, weights=weights, seed=seed, progress=progress, **options)
    record = provenance(method=method, input_path=input_path, weights=api.weights_path(method, weights),
                        seed=seed, parameters={**options, "fill_nonfinite": fill_nonfinite or None,
                                               "filled_pixels": n_filled or None, "channel": channel})
    out = io.write(output_path, result, overwrite=overwrite, provenance=record)
    rep = None
    if report:
        from .report import save_report
        rep = save_report(out.with_name(out.stem + "_report.png"), image.data, result.data,
                          pixel_size=image.pixel_size, unit=image.unit,
                          title=f"{input_path.name} — {method}")
    return FileResult(input=input_path, output=out, shape=tuple(result.data.shape),
                      filled_nonfinite=n_filled, report=rep)


def _all_ok(ok: bool) -> bool:
    """True on every process when `ok` is True on every process (a collective: also a barrier)."""
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)], np.int32))))


def _all_sum(value: int) -> int:
    import numpy as np
    from jax.experimental import multihost_utils
    return int(np.sum(multihost_utils.process_allgather(np.array([int(value)], np.int64))))


def _raise_if_any_failed(err: Exception | None, message: str) -> None:
    """Collective check: every process learns whether any failed; re-raise ours, or report theirs."""
    if not _all_ok(err is None):
        if err is not None:
            raise err
        raise InputError(message)


def denoise_file_shared(input_path: Path, output_path: Path, *, method: str = api.DEFAULT_METHOD, weights=None,
                        seed: int = 0, overwrite: bool = False, report: bool = False,
                        fill_nonfinite: bool = False, channel: int | None = None, progress: bool = False,
                        options: dict[str, Any] | None = None, resume: bool = False,
                        batch_frames: int | None = None) -> FileResult:
    """One file denoised by all processes of a multi-process run (every process calls this).

    A stack written to .tif/.tiff/.npy is split into contiguous frame ranges (`process_share`);
    each process streams its range into a hidden part file beside the output (the output folder
    must be shared by all processes), then process 0 concatenates the parts into the output and
    its sidecar, and the parts are removed. Single images, other output formats and stacks with
    fewer frames than processes are denoised by process 0 alone. A failure on any process fails
    the file on every process (no partial output).
    """
    import jax
    from . import stream as _stream
    from .provenance import provenance
    from .sharding import process_share

    pid, count = jax.process_index(), jax.process_count()
    input_path, output_path = Path(input_path), Path(output_path)
    options = dict(options or {})
    if resume and _stream.is_complete(input_path, output_path, method=method):
        return FileResult(input=input_path, output=output_path, skipped=True)
    if resume and not output_path.exists() and _stream.sidecar_path(output_path).is_file():
        overwrite = True
    check_output(input_path, output_path, overwrite=overwrite)
    api.method_function(method)
    lazy = io.open_lazy(input_path, channel=channel) if _stream.can_stream(output_path) else None
    if lazy is None or len(lazy.shape) == 2 or lazy.n_frames < count:
        res, err = None, None
        if pid == 0:
            try:
                res = denoise_file(input_path, output_path, method=method, weights=weights, seed=seed,
                                   overwrite=overwrite, report=report, fill_nonfinite=fill_nonfinite,
                                   channel=channel, progress=progress, options=options, batch_frames=batch_frames)
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other processes know
                err = e
        _raise_if_any_failed(err, f"{input_path}: failed on process 0")
        return res or FileResult(input=input_path, output=output_path)

    share = process_share(range(lazy.n_frames))
    part = output_path.with_name(f".{output_path.name}.part{pid}-of-{count}.npy")
    parts = [output_path.with_name(f".{output_path.name}.part{i}-of-{count}.npy") for i in range(count)]
    err, res = None, None
    _stream.ACTIVE_TEMP_FILES.add(part)
    try:
        try:
            res = _stream.denoise_stack(input_path, part, method=method, weights=weights, seed=seed, overwrite=True,
                                        fill_nonfinite=fill_nonfinite, channel=channel, progress=progress,
                                        options=options, batch_frames=batch_frames, stack=lazy,
                                        frame_range=(share[0], share[-1] + 1), sidecar=False)
        except Exception as e:  # noqa: BLE001
            err = e
        _raise_if_any_failed(err, f"{input_path}: failed on another process")
        filled = _all_sum(res.filled_nonfinite)
        if pid == 0:
            try:
                record = provenance(method=method, input_path=input_path, weights=api.weights_path(method, weights),
                                    seed=seed, parameters={**res.options, "fill_nonfinite": fill_nonfinite or None,
                                                           "filled_pixels": filled or None, "channel": channel,
                                                           "processes": count})
                unit = lazy.unit if lazy.pixel_size is not None else None
                _stream.assemble_parts(parts, output_path, shape=tuple(lazy.shape), pixel_size=lazy.pixel_size,
                                       unit=unit, record=record, overwrite=overwrite)
            except Exception as e:  # noqa: BLE001
                err = e
        _raise_if_any_failed(err, f"{input_path}: assembling the output failed on process 0")
    finally:
        part.unlink(missing_ok=True)
        _stream.ACTIVE_TEMP_FILES.discard(part)
    rep = None
    if report and pid == 0:
        from .report import save_report
        rep = save_report(output_path.with_name(output_path.stem + "_report.png"), res.first_noisy,
                          res.first_denoised, pixel_size=res.pixel_size, unit=res.unit,
                          title=f"{input_path.name} — {method}")
    return FileResult(input=input_path, output=output_path, shape=tuple(lazy.shape), filled_nonfinite=filled,
                      report=rep, streamed=True)


def example_path() -> Path:
    """The bundled example: a small simulated noisy STEM frame stack shipped inside the package."""
    return Path(__file__).parent / "data" / "example_stem_stack.tif"
