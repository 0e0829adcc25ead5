"""Streaming: stacks read, denoised and written frame-chunk by frame-chunk in bounded memory.

`denoise_stack(input, output, ...)` opens the input lazily (`io.open_lazy`: memory-mapped TIFF and
NPY, page-wise TIFF otherwise), denoises `batch_frames` frames at a time through `api.denoise`,
and appends each result chunk to a temporary file beside the output — a TIFF written page by page
with `tifffile.TiffWriter` (byte-identical to `io.write` of the whole stack: ImageJ hyperstack
with the same calibration) or a .npy written header-first then chunk by chunk. Only when every
frame is written is the file renamed onto the output, followed by its provenance sidecar (the same
record `io.write` writes). Peak memory is one chunk of input, output and the method's working
memory, whatever the number of frames. Other output formats fall back to the in-memory path.

Chunks are independent calls of the method with the same seed and options; the last chunk is
padded to the chunk size (last frame repeated, output cropped) so a method compiles once. A stack
with no more frames than the chunk size is one call, exactly as without streaming. A method whose
result for a frame depends on other frames (e.g. a parameter estimated from the whole stack) can
fix such parameters for all chunks by defining, in its module,
``stream_options(stack: io.LazyStack, options: dict[, weights=...]) -> dict`` (options to use for
every chunk; it gets the run's `weights` when it names that parameter). A method whose frames depend
on their neighbours defines ``stream_halo(options) -> int``: each chunk is then called with that
many frames of context on either side (from the whole stack, never padded) and only its own
frames are kept.

Multi-process runs (``jaxdn denoise --coordinator ...``): with at least as many files as processes
each process takes a contiguous share of the files; with fewer, every process streams its share of
each stack's frames (`denoise_stack(frame_range=...)`) into a hidden part file beside the output and
process 0 concatenates them (`assemble_parts`) — see `batch.denoise_file_shared`.

Interruption: `interrupt_on_sigterm()` turns SIGTERM into KeyboardInterrupt; temporary files are
removed in ``finally`` so Ctrl-C or SIGTERM leaves no partial output. `is_complete` implements
``--resume``: an output is complete when the file and its sidecar exist and the sidecar records
the same method and the input's current SHA-256.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import select
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import api, io, validate
from .errors import InputError, JaxdnError, OutputExistsError

STREAM_OUTPUTS = (".tif", ".tiff", ".npy")
LAZY_INPUTS = (".tif", ".tiff", ".npy")      # formats `io.open_lazy` reads without loading everything
MAX_CHUNK_FRAMES = 64
_WORK_FACTOR = 48   # bytes of method working memory assumed per input byte when sizing chunks


@dataclass
class StreamResult:
    """What `denoise_stack` wrote."""
    output: Path
    shape: tuple[int, ...]
    filled_nonfinite: int
    first_noisy: np.ndarray      # (H, W) first input frame (for the report)
    first_denoised: np.ndarray   # (H, W) first output frame
    pixel_size: float | None
    unit: str | None
    chunks: int
    options: dict | None = None  # the method options used (after the method's `stream_options`)


def frames_per_chunk(frame_shape: tuple[int, int], *, memory_budget: int | None = None,
                     n_frames: int | None = None) -> int:
    """Frames per chunk: as many as fit `memory_budget` (default: `tiling.default_memory_budget()`)
    assuming ~48 bytes of working memory per input byte, at most 64 (and at most `n_frames`)."""
    from .tiling import default_memory_budget
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    frame_bytes = 4 * int(np.prod(frame_shape))
    k = max(1, min(MAX_CHUNK_FRAMES, budget // (_WORK_FACTOR * frame_bytes)))
    return int(min(k, n_frames)) if n_frames else int(k)


def lazy_from_image(image: io.Image) -> io.LazyStack:
    """A `LazyStack` view of an image already in memory (formats that cannot be read lazily)."""
    data = image.data if image.is_stack else image.data[None]
    return io.LazyStack(image.source, image.shape, image.pixel_size, image.unit, image.metadata,
                        lambda a, b: data[a:b])


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that per-chunk allocations
    in long streams do not pile up as fragmented heap; a no-op elsewhere."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _file_reader(lazy: io.LazyStack):
    """Frames of an uncompressed .npy or contiguous TIFF read with plain file reads, or None.

    `io.open_lazy` memory-maps these files; pages touched through a memory map stay resident in the
    process (they count in its RSS until unmapped), so a full pass over a memory-mapped stack looks
    like the whole stack in memory. Plain reads of each chunk keep the resident set to one chunk.
    """
    path = lazy.path
    if path is None or not Path(path).is_file():
        return None
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                offset = fh.tell()
            if fortran or dtype.hasobject:
                return None
        elif suffix in (".tif", ".tiff"):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                offset = series.dataoffset
                if offset is None:
                    return None
                shape, dtype = series.shape, np.dtype(series.dtype).newbyteorder(tif.byteorder)
        else:
            return None
    except Exception:  # anything unusual: keep io's reader
        return None
    if int(np.prod(shape)) != int(np.prod(lazy.shape)):
        return None
    frame = int(np.prod(lazy.shape[-2:]))

    def frames(start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(lazy.n_frames, stop)
        with open(path, "rb") as fh:
            fh.seek(offset + start * frame * dtype.itemsize)
            data = np.fromfile(fh, dtype=dtype, count=(stop - start) * frame)
        if data.size != (stop - start) * frame:
            raise InputError(f"{path}: file is truncated (expected {lazy.n_frames} frames)")
        return validate.to_float32(data.reshape((stop - start,) + tuple(lazy.shape[-2:])).astype(dtype.newbyteorder("=")))

    return frames


def can_stream(output_path: Path) -> bool:
    """True for output formats written chunk by chunk (.tif, .tiff, .npy)."""
    return Path(output_path).suffix.lower() in STREAM_OUTPUTS


# --------------------------------------------------------------------------------------------
# Resume and interruption
# --------------------------------------------------------------------------------------------

def sidecar_path(output_path: Path) -> Path:
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".json")


def is_complete(input_path: Path, output_path: Path, *, method: str | None = None) -> bool:
    """True when `output_path` and its sidecar exist and the sidecar records `input_path`'s current
    SHA-256 (and `method`, when given): the output of a finished earlier run (``--resume``)."""
    output_path, side = Path(output_path), sidecar_path(output_path)
    if not (output_path.is_file() and side.is_file() and Path(input_path).is_file()):
        return False
    try:
        record = json.loads(side.read_text())
        prov = record["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if record.get("output") != output_path.name:
        return False
    if method is not None and prov.get("method") != method:
        return False
    return bool(prov.get("input_sha256")) and prov["input_sha256"] == io.sha256_file(input_path)


#: Temporary and part files that exist right now; removed by the interrupt watchdog before a forced exit.
ACTIVE_TEMP_FILES: set[Path] = set()


def _remove_active_temp_files() -> None:
    for path in list(ACTIVE_TEMP_FILES):
        try:
            Path(path).unlink(missing_ok=True)
        except OSError:
            pass


@contextlib.contextmanager
def interrupt_on_sigterm(*, grace_s: float = 3.0):
    """Within the block, SIGTERM raises KeyboardInterrupt (so `finally` clauses remove temp files).

    Python runs signal handlers only between bytecodes, so while the main thread waits inside a
    long XLA computation an interrupt would wait for it. A watchdog thread therefore listens on the
    signal wakeup fd: if the process is still inside the block `grace_s` seconds after SIGINT or
    SIGTERM, it removes every file in `ACTIVE_TEMP_FILES` and exits with status 130 at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter thread after all
        previous_fd = None
    stop = threading.Event()

    def watchdog():
        while not stop.is_set():
            if not select.select([r], [], [], 0.2)[0]:
                continue
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not set(data) & {int(signal.SIGINT), int(signal.SIGTERM)}:
                continue
            if stop.wait(grace_s):
                return  # the main thread handled it and left the block
            _remove_active_temp_files()
            try:
                sys.stderr.write("jaxdn: interrupted; no partial output was left behind\n")
                sys.stderr.flush()
            finally:
                os._exit(130)

    thread = threading.Thread(target=watchdog, name="jaxdn-interrupt-watchdog", daemon=True)
    if previous_fd is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if previous_fd is not None:
            signal.set_wakeup_fd(previous_fd)
            thread.join(timeout=1.0)
        signal.signal(signal.SIGTERM, previous)
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

def _write_tiff(tmp: Path, chunks: Iterator[np.ndarray], shape: tuple[int, ...], pixel_size, unit) -> None:
    """Same layout and tags as `io.write` for a float32 stack, from an iterator of (k, H, W) chunks."""
    import tifffile
    nbytes = 4 * int(np.prod(shape))
    kwargs: dict = {}
    if nbytes < 3_900_000_000:
        meta = {"axes": "TYX"}
        if pixel_size is not None:
            kwargs["resolution"] = (1.0 / pixel_size, 1.0 / pixel_size)
            if unit:
                meta["unit"] = io._IMAGEJ_UNIT.get(unit, unit)
        with tifffile.TiffWriter(tmp, imagej=True) as tw:
            tw.write(chunks, shape=shape, dtype=np.float32, metadata=meta, **kwargs)
    else:
        if pixel_size is not None and unit == "nm":
            kwargs.update(resolution=(1e7 / pixel_size, 1e7 / pixel_size), resolutionunit="CENTIMETER")
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            tw.write(chunks, shape=shape, dtype=np.float32, metadata={"axes": "TYX"}, **kwargs)


def _write_npy(tmp: Path, chunks: Iterator[np.ndarray], shape: tuple[int, ...]) -> None:
    """A .npy header for float32 `shape` (as `np.save` writes it), then the chunks appended with plain
    writes (no memory map,
    so written pages never count against the process's resident memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    written = 0
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for chunk in chunks:
            data = np.ascontiguousarray(chunk, dtype="<f4")
            fh.write(memoryview(data).cast("B"))
            written += data.shape[0]
    if written != shape[0]:
        raise RuntimeError(f"streamed {written} frames, expected {shape[0]}")


# --------------------------------------------------------------------------------------------
# The streaming denoiser
# --------------------------------------------------------------------------------------------

def _method_hook(method: str, name: str):
    """The method module's streaming hook `name` (``stream_options``, ``stream_halo``), or None."""
    module_name = api.METHODS[method][0]
    try:
        return getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return None


def _write_output(output_path: Path, chunks: Iterator[np.ndarray], *, shape: tuple[int, ...], pixel_size,
                  unit, record_fn=None) -> None:
    """Write `chunks` into a temporary file, add the sidecar (``record_fn()`` -> provenance dict,
    called after the data are written; None: no sidecar), then rename both into place."""
    sidecar = sidecar_path(output_path)
    tmp = io._temp_path(output_path)
    tmp_json = io._temp_path(sidecar)
    ACTIVE_TEMP_FILES.update((tmp, tmp_json))
    try:
        if output_path.suffix.lower() == ".npy":
            _write_npy(tmp, chunks, shape)
        else:
            _write_tiff(tmp, chunks, shape if len(shape) == 3 else (1,) + tuple(shape), pixel_size, unit)
        if record_fn is not None:
            record = {
                "provenance": io._jsonable(record_fn()),
                "output": output_path.name,
                "output_sha256": io.sha256_file(tmp),
                "pixel_size": pixel_size,
                "unit": unit if pixel_size is not None else None,
                "shape": list(shape),
                "dtype": "float32",
            }
            tmp_json.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        io._commit(tmp, output_path)
        if record_fn is not None:
            io._commit(tmp_json, sidecar)
    except OSError as err:
        raise JaxdnError(f"{output_path}: cannot write ({err.strerror or err})") from None
    finally:
        for t in (tmp, tmp_json):
            if t.exists():
                t.unlink()
        ACTIVE_TEMP_FILES.difference_update((tmp, tmp_json))


def _check_targets(output_path: Path, *, overwrite: bool, sidecar: bool = True) -> None:
    for target in (output_path, sidecar_path(output_path) if sidecar else None):
        if target is None:
            continue
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target}: already exists; pass --overwrite to replace it")
        if target.is_dir():
            raise OutputExistsError(f"{target}: is a folder")
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise JaxdnError(f"{output_path}: cannot create the output folder ({err.strerror or err})") from None


def denoise_stack(input_path: Path, output_path: Path, *, method: str = api.DEFAULT_METHOD, weights=None,
                  seed: int = 0, overwrite: bool = False, fill_nonfinite: bool = False,
                  channel: int | None = None, progress: bool = False, options: dict[str, Any] | None = None,
                  batch_frames: int | None = None, stack: io.LazyStack | None = None,
                  frame_range: tuple[int, int] | None = None, sidecar: bool = True) -> StreamResult:
    """Denoise a (T, H, W) stack chunk by chunk into `output_path` (.tif/.tiff/.npy), atomically.

    Args:
      input_path: the input file (read lazily; never modified).
      output_path: the output file; its provenance sidecar is `<output>.json`.
      method, weights, seed, fill_nonfinite, channel, options: as `batch.denoise_file`.
      progress: a progress bar over frames.
      batch_frames: frames per chunk (default `frames_per_chunk` from ``options['memory_budget']``).
      stack: an already opened `io.open_lazy(input_path)`.
      frame_range: only frames ``start..stop-1`` (a multi-process share), chunked and padded exactly
        as in a run over the whole stack.
      sidecar: write the provenance sidecar (False for the parts of a multi-process run).
    Returns:
      `StreamResult`. Raises `JaxdnError` subclasses for bad input or outputs; on any error or
      interruption no output, sidecar or temporary file is left behind.
    """
    from tqdm import tqdm
    from .provenance import provenance

    input_path, output_path = Path(input_path), Path(output_path)
    options = dict(options or {})
    if output_path.suffix.lower() not in STREAM_OUTPUTS:
        raise InputError(f"{output_path}: streaming writes {' '.join(STREAM_OUTPUTS)} only")
    lazy = stack if stack is not None else io.open_lazy(input_path, channel=channel)
    shape = tuple(int(n) for n in lazy.shape)
    if len(shape) == 2:
        shape = (1,) + shape
    n, frame_shape = shape[0], shape[1:]
    first, last = (0, n) if frame_range is None else (max(0, frame_range[0]), min(n, frame_range[1]))
    read_frames = (_file_reader(lazy) if channel is None else None) or lazy.frames
    hook = _method_hook(method, "stream_options")
    if hook is not None:
        import inspect
        kw = {"weights": weights} if "weights" in inspect.signature(hook).parameters else {}
        options = dict(hook(lazy, options, **kw))
    k = int(batch_frames) if batch_frames else frames_per_chunk(
        frame_shape, memory_budget=options.get("memory_budget"), n_frames=n)
    if k < 1:
        raise InputError("--batch-frames must be at least 1")
    k = min(k, n)
    halo_hook = _method_hook(method, "stream_halo")
    halo = max(0, int(halo_hook(options))) if halo_hook is not None and len(lazy.shape) == 3 else 0
    pad = n > k and not halo   # several chunks in the whole stack: every call gets exactly k frames
    n_chunks = math.ceil((last - first) / k) if last > first else 0
    _check_targets(output_path, overwrite=overwrite, sidecar=sidecar)

    state = {"filled": 0, "first": None, "first_out": None}

    def chunks() -> Iterator[np.ndarray]:
        bar = tqdm(total=last - first, desc=input_path.name, unit="frame", disable=not progress, leave=False)
        try:
            for start in range(first, last, k):
                stop = min(start + k, last)
                lo, hi = max(0, start - halo), min(n, stop + halo)         # temporal context (`stream_halo`)
                block = read_frames(lo, hi)                                # float32 (m + context, H, W)
                m, off = stop - start, start - lo
                state["filled"] += int((~np.isfinite(block[off:off + m])).sum())
                block, _ = validate.fill_nonfinite(block, fill=fill_nonfinite)
                if state["first"] is None:
                    state["first"] = block[off].copy()
                if m < k and pad:                                          # same shape for every call
                    block = np.concatenate([block, np.repeat(block[-1:], k - m, axis=0)])
                data = block if len(lazy.shape) == 3 else block[0]
                out = api.denoise(data, method, weights=weights, seed=seed, progress=False, **options)
                out = np.asarray(out, np.float32).reshape((-1,) + frame_shape)[off:off + m]
                if state["first_out"] is None:
                    state["first_out"] = out[0].copy()
                bar.update(m)
                yield out
                del block, data, out
                _release_free_memory()
        finally:
            bar.close()

    def record():
        return provenance(method=method, input_path=input_path, weights=api.weights_path(method, weights), seed=seed,
                          parameters={**options, "fill_nonfinite": fill_nonfinite or None,
                                      "filled_pixels": state["filled"] or None, "channel": channel})

    out_shape = tuple(lazy.shape) if frame_range is None else (last - first,) + tuple(frame_shape)
    unit = lazy.unit if lazy.pixel_size is not None else None
    _write_output(output_path, chunks(), shape=out_shape, pixel_size=lazy.pixel_size, unit=unit,
                  record_fn=record if sidecar else None)
    return StreamResult(output=output_path, shape=out_shape, filled_nonfinite=state["filled"],
                        first_noisy=state["first"], first_denoised=state["first_out"],
                        pixel_size=lazy.pixel_size, unit=unit, chunks=n_chunks, options=options)


def assemble_parts(parts: list[Path], output_path: Path, *, shape: tuple[int, ...], pixel_size, unit,
                   record: dict, overwrite: bool = False) -> Path:
    """Concatenate per-process .npy parts (frames in order) into `output_path` with its sidecar,
    streaming, atomically; the parts are left for the caller to remove."""
    output_path = Path(output_path)
    _check_targets(output_path, overwrite=overwrite)

    def chunks():
        for part in parts:
            lazy = io.open_lazy(part)
            read = _file_reader(lazy) or lazy.frames
            k = max(1, frames_per_chunk(tuple(lazy.shape[-2:]), n_frames=lazy.n_frames) * 4)
            for start in range(0, lazy.n_frames, k):
                yield read(start, start + k)

    _write_output(output_path, chunks(), shape=tuple(shape), pixel_size=pixel_size, unit=unit,
                  record_fn=lambda: record)
    return output_path
