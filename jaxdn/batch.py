"""File-level denoising: input paths -> output paths, with safety checks, provenance and reports.

The CLI calls `expand_inputs`, `output_path_for` and `denoise_file`; nothing here parses arguments.
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
                 channel: int | None = None, progress: bool = False, options: dict[str, Any] | None = None) -> FileResult:
    """Read, denoise and write one file (atomically), keeping calibration; never touches the input.

    Raises `JaxdnError` subclasses for bad input; the output is written only after a complete result.
    """
    from . import validate
    options = dict(options or {})
    check_output(input_path, output_path, overwrite=overwrite)
    api.method_function(method)  # refuse unavailable methods before reading anything
    image = io.read(input_path, channel=channel)
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


def example_path() -> Path:
    """The bundled example: a small simulated noisy STEM frame stack shipped inside the package."""
    return Path(__file__).parent / "data" / "example_stem_stack.tif"
