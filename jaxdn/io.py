"""Read and write microscopy images with their calibration.

`read(path)` returns an `Image`: float32 pixels, shape (H, W) or (T, H, W), the pixel size (in nm
whenever the source gives a physical length unit), the source's metadata and the source path.
`write(path, image)` writes by extension, atomically (temporary file in the same folder, then
rename), never over the input file, and optionally with a JSON provenance sidecar.

Readers, one small function per format, picked by extension:

| extension | library | calibration |
|---|---|---|
| .tif .tiff | tifffile (plain, multi-page, ImageJ hyperstack, OME, FEI/Thermo) | ImageJ unit +
  XResolution, OME PhysicalSizeX, FEI PixelWidth, ResolutionUnit=cm |
| .png .jpg .jpeg .bmp | imageio | the `jaxdn` text chunk written by `write` (PNG) |
| .npy .npz | numpy | `pixel_size` and `unit` arrays in a .npz written by `write` |
| .mrc | mrcfile | voxel size (Å) |
| .emd | h5py (Berkeley EMD); rosettasciio (Velox EMD, optional extra) | dimension vectors / axes |
| .dm3 .dm4 .ser | rosettasciio (optional extra `jaxdn[formats]`, GPL-3, imported lazily) | axes |
| .sxm | built-in Nanonis parser (the `nanonispy` releases fail on NumPy >= 1.24) | SCAN_RANGE / SCAN_PIXELS |
| .mat | scipy.io (v5) or h5py (v7.3); StatSTEM `input.obs` + `input.dx` (Å) | StatSTEM dx |

Orientation: arrays are returned with row 0 at the top of the image as the acquisition software
shows it — rosettasciio's orientation for TIA SER files (rows flipped relative to the file order),
Nanonis SXM scans taken bottom-up ("SCAN_DIR up") flipped so the top row comes first, backward SXM
scans mirrored left-right so they overlay the forward scan.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from .errors import InputError, JaxdnError, MissingExtraError, OutputExistsError
from .validate import check_shape, is_color, select_channel, to_float32

__all__ = [
    "Image", "LazyStack", "SUPPORTED_EXTENSIONS", "WRITABLE_EXTENSIONS",
    "read", "read_sxm", "write", "write_frames", "open_lazy", "sha256_file", "atomic_output",
]


# --------------------------------------------------------------------------------------------
# The Image record
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Image:
    """A 2-D image or a stack of frames with its calibration.

    Attributes:
      data: float32 pixels, (H, W) or (T, H, W).
      pixel_size: size of one pixel in `unit` (x direction; see metadata["pixel_size_y"] when the
        source's y size differs), or None when the source is uncalibrated.
      unit: length unit of `pixel_size`, "nm" whenever the source gives a physical length.
      metadata: the source's metadata, JSON-serialisable (original metadata under "original").
      source: the file the image was read from, or None.
    """

    data: np.ndarray
    pixel_size: float | None = None
    unit: str | None = None
    metadata: dict = field(default_factory=dict)
    source: Path | None = None

    def __post_init__(self):
        data = to_float32(np.asarray(self.data))
        check_shape(data)
        object.__setattr__(self, "data", data)
        if self.pixel_size is None:
            object.__setattr__(self, "unit", None)
        else:
            size = float(self.pixel_size)
            if not (math.isfinite(size) and size > 0):
                raise InputError(f"pixel size must be a positive number, got {self.pixel_size!r}")
            if self.unit is not None and _unit_key(self.unit) in _TO_NM:  # any length unit -> nm
                size, unit = _to_nm(size, self.unit)
                object.__setattr__(self, "unit", unit)
            object.__setattr__(self, "pixel_size", size)
        if self.source is not None:
            object.__setattr__(self, "source", Path(self.source))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def is_stack(self) -> bool:
        """True for a (T, H, W) stack of frames."""
        return self.data.ndim == 3

    @property
    def n_frames(self) -> int:
        return self.data.shape[0] if self.is_stack else 1

    def with_data(self, data: np.ndarray, **changes) -> "Image":
        """The same calibration, metadata and source with new pixels (e.g. the denoised result)."""
        return dataclasses.replace(self, data=data, **changes)


# --------------------------------------------------------------------------------------------
# Helpers: units, metadata, channels
# --------------------------------------------------------------------------------------------

_TO_NM = {
    "m": 1e9, "meter": 1e9, "metre": 1e9, "cm": 1e7, "mm": 1e6,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "u00b5m": 1e3, "\\u00b5m": 1e3,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "a": 0.1, "å": 0.1, "Å": 0.1, "\u212b": 0.1, "angstrom": 0.1, "angstroms": 0.1,
    "pm": 1e-3, "picometer": 1e-3,
}
_NO_UNIT = {"", "pixel", "pixels", "px", "none", "<undefined>", "undefined", "t.b.d."}


def _to_nm(size, unit) -> tuple[float | None, str | None]:
    """(pixel size, unit) converted to nm for length units; unknown units are kept as given."""
    if size is None:
        return None, None
    try:
        size = float(size)
    except (TypeError, ValueError):
        return None, None
    if not (math.isfinite(size) and size > 0):
        return None, None
    if unit is None:
        return size, None
    key = _unit_key(unit)
    if key in _NO_UNIT:
        return None, None
    if key not in _TO_NM:
        return size, str(unit).strip()
    return size * _TO_NM[key], "nm"


def _unit_key(unit) -> str:
    """'[n_m]' -> 'nm', 'Micron' -> 'micron' (Berkeley EMD writes units with underscores)."""
    if isinstance(unit, bytes):
        unit = unit.decode("latin-1")
    return str(unit).strip().strip("[]()").replace("_", "").replace(" ", "").lower()


def _jsonable(obj, depth: int = 0):
    """A JSON-serialisable copy of `obj`: small arrays as lists, big ones summarised."""
    if depth > 24:
        return None
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", errors="replace").rstrip("\x00")
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), depth + 1)
    if isinstance(obj, np.ndarray):
        if obj.size <= 64 and obj.dtype.kind in "biufUSO":
            return _jsonable(obj.tolist(), depth + 1)
        return {"array_shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        items = list(obj)
        if len(items) > 256:
            return {"list_length": len(items)}
        return [_jsonable(v, depth + 1) for v in items]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "_fieldnames"):  # scipy.io MATLAB struct
        return {name: _jsonable(getattr(obj, name), depth + 1) for name in obj._fieldnames}
    text = str(obj)
    return text if len(text) <= 1000 else text[:1000] + "..."


def _take_channel(data: np.ndarray, axis: int, channel: int | None, what: str) -> np.ndarray:
    """Pick `channel` along an explicit channel axis; refuse when it has several and none is given."""
    n = data.shape[axis]
    if n == 1:
        return np.take(data, 0, axis=axis)
    if channel is None:
        raise InputError(f"image has {n} {what}; choose one with --channel 0..{n - 1}")
    if not 0 <= channel < n:
        raise InputError(f"--channel {channel} out of range for an image with {n} {what}")
    return np.take(data, channel, axis=axis)


def _as_image_array(data: np.ndarray) -> np.ndarray:
    """Squeeze singleton axes and check the result is (H, W) or (T, H, W)."""
    data = np.asarray(data)
    if data.ndim > 2:
        keep = [i for i, n in enumerate(data.shape) if n != 1 or i >= data.ndim - 2]
        data = data.reshape([data.shape[i] for i in keep])
    if data.ndim > 3:
        raise InputError(f"array has shape {data.shape}; jaxdn reads 2-D images (H, W) and stacks "
                         "(T, H, W) — split the extra dimensions first")
    if data.ndim < 2:
        raise InputError(f"array has shape {data.shape}; expected an image (H, W) or a stack (T, H, W)")
    return data


def _array_with_colour(data: np.ndarray, channel: int | None) -> np.ndarray:
    """For formats without axis labels: (H, W), (T, H, W), or colour (…, H, W, 3|4)."""
    data = np.asarray(data)
    if data.ndim in (3, 4):
        data = select_channel(data, channel)
    elif channel not in (None, 0):
        raise InputError(f"--channel {channel} given but the image is grayscale")
    return _as_image_array(data)


# --------------------------------------------------------------------------------------------
# Readers (each returns data, pixel size, unit, metadata)
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _tiff_errors():
    """Refuse files tifffile only logs as corrupt (it would return the readable part silently)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if records:
        raise InputError(f"corrupted or truncated TIFF ({records[0].getMessage().split('> ')[-1]})")


def _read_tiff(path: Path, channel: int | None):
    with _tiff_errors(), tifffile.TiffFile(path) as tif:
        first = tif.series[0]
        alike = [s for s in tif.series if (s.shape, s.dtype, s.axes) == (first.shape, first.dtype, first.axes)]
        if len(tif.series) > 1 and len(alike) == len(tif.series):  # pages written one by one: a stack
            data, axes = np.stack([s.asarray() for s in alike]), "I" + first.axes
        else:  # a single series, or the main image followed by thumbnails / pyramid levels
            data, axes = first.asarray(), first.axes
        size, unit, meta = _tiff_calibration(tif)
        meta["axes"] = axes
        if len(tif.series) > 1:
            meta["tiff_series"] = len(tif.series)
    return _tiff_axes(data, axes, channel), size, unit, meta


def _tiff_calibration(tif: tifffile.TiffFile) -> tuple[float | None, str | None, dict]:
    """Pixel size and unit from OME, ImageJ, FEI/Thermo or plain-TIFF resolution tags."""
    page = tif.pages[0]
    meta: dict = {"format": "tiff"}
    original: dict = {}
    size = unit = None
    if tif.is_ome and tif.ome_metadata:
        meta["format"] = "ome-tiff"
        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        original["ome_pixels"] = {k: v for k, v in pixels.items() if not isinstance(v, (dict, list))}
        if "PhysicalSizeX" in pixels:
            size, unit = _to_nm(pixels["PhysicalSizeX"], pixels.get("PhysicalSizeXUnit", "µm"))
    if tif.is_imagej:
        meta["format"] = "imagej-tiff" if not tif.is_ome else meta["format"]
        ij = dict(tif.imagej_metadata or {})
        original["imagej"] = ij
        if size is None and "XResolution" in page.tags:
            num, den = page.tags["XResolution"].value
            if num and ij.get("unit") is not None:
                size, unit = _to_nm(den / num, ij["unit"])
    fei = getattr(tif, "fei_metadata", None)
    if fei:
        original["fei"] = fei
        if size is None:
            size, unit = _to_nm(fei.get("Scan", {}).get("PixelWidth"), "m")
    if size is None and not tif.is_imagej and "XResolution" in page.tags:
        # Plain TIFF: trust a centimetre resolution; inch resolution is usually screen dpi.
        num, den = page.tags["XResolution"].value
        res_unit = page.tags["ResolutionUnit"].value if "ResolutionUnit" in page.tags else 2
        original["resolution"] = [num, den, int(res_unit)]
        if num and int(res_unit) == 3:
            size, unit = _to_nm(den / num, "cm")
    if "ImageDescription" in page.tags and not tif.is_ome and not tif.is_imagej:
        original["description"] = str(page.tags["ImageDescription"].value)[:4000]
    meta["original"] = _jsonable(original)
    return size, unit, meta


def _tiff_axes(data: np.ndarray, axes: str, channel: int | None) -> np.ndarray:
    """Reduce a tifffile series (axes like 'TZCYXS') to (H, W) or (T, H, W)."""
    axes = list(axes)
    colour = [a for a in ("S", "C") if a in axes and data.shape[axes.index(a)] > 1]
    if len(colour) > 1:
        raise InputError(f"image has both samples (S) and channels (C) axes, shape {data.shape}; "
                         "save one channel first")
    if colour:
        i = axes.index(colour[0])
        what = "colour channels (RGB/RGBA)" if colour[0] == "S" else "channels (C axis)"
        data = _take_channel(data, i, channel, what)
        del axes[i]
    elif channel not in (None, 0):
        raise InputError(f"--channel {channel} given but the image is grayscale")
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = [axes[i] for i in keep]
    extra = [f"{a}={data.shape[i]}" for i, a in enumerate(axes) if a not in "YX"]
    if len(extra) > 1:
        raise InputError(f"image has {len(extra)} non-spatial dimensions ({', '.join(extra)}); jaxdn "
                         "reads 2-D images and (T, H, W) stacks — reduce the hyperstack to one of them first")
    if axes[-2:] != ["Y", "X"]:
        raise InputError(f"unexpected TIFF axes {''.join(axes)}")
    return data


def _read_imageio(path: Path, channel: int | None):
    import imageio.v3 as iio

    data = iio.imread(path)
    meta: dict = {"format": path.suffix.lower().lstrip(".")}
    size = unit = None
    try:
        info = iio.immeta(path)
    except Exception:  # metadata is optional
        info = {}
    if "jaxdn" in info:
        try:
            saved = json.loads(info["jaxdn"])
            size, unit = _to_nm(saved.get("pixel_size"), saved.get("unit"))
            meta["jaxdn"] = saved
        except (ValueError, AttributeError):
            pass
    meta["original"] = _jsonable({k: v for k, v in info.items() if k not in ("exif", "icc_profile")})
    if data.ndim == 3 and data.shape[-1] == 2:  # gray + alpha: the gray plane is the image
        data = data[..., 0] if channel is None else _take_channel(data, -1, channel, "channels (gray+alpha)")
        channel = None
    return _array_with_colour(data, channel), size, unit, meta


def _check_magic(path: Path, magic: bytes, what: str) -> None:
    with open(path, "rb") as fh:
        if fh.read(len(magic)) != magic:
            raise InputError(f"not a {what} file")


def _read_npy(path: Path, channel: int | None):
    _check_magic(path, b"\x93NUMPY", "NumPy .npy")
    data = np.load(path, allow_pickle=False)
    return _array_with_colour(data, channel), None, None, {"format": "npy"}


def _read_npz(path: Path, channel: int | None):
    _check_magic(path, b"PK", "NumPy .npz (zip)")
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        arrays = [k for k in keys if npz[k].ndim >= 2]
        if "data" in keys:
            key = "data"
        elif "image" in keys:
            key = "image"
        elif len(arrays) == 1:
            key = arrays[0]
        else:
            raise InputError(f"cannot choose an image among the arrays {keys}; name it 'data' or 'image'")
        data = npz[key]
        size = float(npz["pixel_size"]) if "pixel_size" in keys and npz["pixel_size"].size == 1 else None
        unit = str(npz["unit"]) if "unit" in keys and npz["unit"].size == 1 else None
    size, unit = _to_nm(size, unit)
    return _array_with_colour(data, channel), size, unit, {"format": "npz", "key": key, "keys": keys}


def _read_mrc(path: Path, channel: int | None):
    import mrcfile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mrc = mrcfile.open(path, mode="r", permissive=True)
    with mrc:
        if mrc.data is None:
            reason = str(caught[0].message) if caught else "bad header or truncated data"
            raise InputError(f"not a valid MRC file ({reason})")
        data = np.array(mrc.data)
        voxel = mrc.voxel_size
        header = {name: mrc.header[name] for name in mrc.header.dtype.names if name not in ("label",)}
        labels = [bytes(l).decode("latin-1").strip() for l in mrc.header.label[: int(mrc.header.nlabl)]]
    if channel not in (None, 0):
        raise InputError(f"--channel {channel} given but MRC files hold grayscale images")
    size, unit = _to_nm(float(voxel.x), "Å")
    meta = {"format": "mrc", "voxel_size_angstrom": [float(voxel.x), float(voxel.y), float(voxel.z)],
            "original": _jsonable({"header": header, "labels": labels})}
    if caught:
        meta["warnings"] = [str(w.message) for w in caught]
    return _as_image_array(data), size, unit, meta


def _read_emd(path: Path, channel: int | None):
    import h5py

    with h5py.File(path, "r") as f:
        groups = []
        if isinstance(f.get("data"), h5py.Group):
            f["data"].visititems(lambda name, obj: groups.append(obj) if isinstance(obj, h5py.Group)
                                 and "emd_group_type" in obj.attrs and "data" in obj else None)
        if groups:
            return _read_berkeley_emd(f, groups, channel)
        velox = "Data" in f and "Version" in f
    if velox:
        return _read_rsciio(path, channel, "emd", select_type="images")
    raise InputError("HDF5 file is neither a Berkeley EMD (data/<name>/data) nor a Velox EMD")


def _read_berkeley_emd(f, groups, channel: int | None):
    group = next((g for g in groups if g["data"].ndim >= 2), groups[0])
    data = group["data"][()]
    dims = []
    for i in range(data.ndim):
        dim = group.get(f"dim{i + 1}")
        if dim is None:
            dims.append({"name": "", "units": "", "step": None})
            continue
        vec = np.asarray(dim[()]).ravel()
        step = float(vec[1] - vec[0]) if vec.size > 1 and vec.dtype.kind in "iuf" else None
        dims.append({"name": _jsonable(dim.attrs.get("name", "")), "units": _jsonable(dim.attrs.get("units", "")),
                     "step": step})
    spatial = [i for i, d in enumerate(dims) if _to_nm(1.0, d["units"])[1] == "nm"]
    if data.ndim == 3 and spatial == [0, 1]:  # (Y, X, N) -> (N, Y, X)
        data, dims = np.moveaxis(data, 2, 0), [dims[2], dims[0], dims[1]]
    if channel not in (None, 0):
        raise InputError(f"--channel {channel} given but the EMD dataset is grayscale")
    size, unit = _to_nm(dims[-1]["step"], dims[-1]["units"])
    meta = {"format": "berkeley-emd", "dataset": group.name, "dims": dims,
            "original": _jsonable({name: dict(f[name].attrs) for name in ("microscope", "sample", "user", "stage")
                                   if name in f} | {"file": dict(f.attrs)})}
    if len(groups) > 1:
        meta["other_datasets"] = [g.name for g in groups if g is not group]
    return _as_image_array(data), size, unit, meta


def _read_rsciio(path: Path, channel: int | None, plugin: str, **kwargs):
    """DM3/DM4, TIA SER, Velox EMD through rosettasciio (GPL-3, optional extra, imported lazily)."""
    import importlib

    try:
        module = importlib.import_module(f"rsciio.{plugin}")
    except ImportError:
        raise MissingExtraError(f"{path}: reading {path.suffix.lower()} files needs the optional extra: "
                                'pip install "jaxdn[formats]"') from None
    try:
        signals = module.file_reader(str(path), **kwargs)
    except ModuleNotFoundError as err:  # e.g. Velox EDS files need `sparse` even for their images
        raise MissingExtraError(f"{path}: {str(err).splitlines()[0]}") from None
    images = [s for s in signals if sum(not a.get("navigate", False) for a in s["axes"]) == 2
              or (np.ndim(s["data"]) == 2)]
    if not images:
        raise InputError("the file holds no 2-D image (only spectra or other signals)")
    sig = images[0]
    data = np.asarray(sig["data"])
    axes = [{k: _jsonable(a.get(k)) for k in ("name", "scale", "offset", "units", "size", "navigate")}
            for a in sig["axes"]]
    x = axes[-1] if axes else {}
    size, unit = _to_nm(x.get("scale"), x.get("units"))
    meta = {"format": plugin if plugin != "emd" else "velox-emd", "axes": axes,
            "title": _jsonable(sig.get("metadata", {}).get("General", {}).get("title")),
            "original": _jsonable(sig.get("original_metadata", {}))}
    size_y = _to_nm(axes[-2].get("scale"), axes[-2].get("units"))[0] if len(axes) >= 2 else None
    if size is not None and size_y is not None and not math.isclose(size, size_y, rel_tol=1e-6):
        meta["pixel_size_y"] = size_y
    if len(images) > 1:
        meta["other_signals"] = [_jsonable(s.get("metadata", {}).get("General", {}).get("title")) for s in images[1:]]
    return _array_with_colour(data, channel), size, unit, meta


def read_sxm(path, *, channel: str = "Z", direction: str = "forward") -> Image:
    """Read one channel and scan direction of a Nanonis .sxm file.

    Args:
      path: the .sxm file.
      channel: channel name as in the file's DATA_INFO table ("Z" is the topography).
      direction: "forward" or "backward"; backward scans are mirrored left-right so that they
        overlay the forward scan.
    Returns:
      An `Image` (H = lines, W = pixels per line) in the channel's own value unit (metadata
      "value_unit", e.g. metres for Z), pixel size in nm from SCAN_RANGE / SCAN_PIXELS.
    """
    path = Path(path)
    if path.suffix.lower() != ".sxm":
        raise InputError(f"{path}: not a .sxm file")
    _check_input_file(path)
    return _guarded(path, lambda: _image(path, *_read_sxm(path, None, name=channel, direction=direction)))


def _read_sxm(path: Path, channel, *, name: str = "Z", direction: str = "forward"):
    raw = path.read_bytes()
    end = raw.find(b":SCANIT_END:")
    start = raw.find(b"\x1a\x04", end)
    if end < 0 or start < 0:
        raise InputError("not a Nanonis .sxm file (no :SCANIT_END: header end)")
    header: dict[str, list[str]] = {}
    key = None
    for line in raw[:end].decode("latin-1").splitlines():
        match = re.fullmatch(r":(.+):", line.strip())
        if match:
            key = match.group(1)
            header[key] = []
        elif key is not None and line.strip():
            header[key].append(line.strip("\n"))
    nx, ny = (int(v) for v in header["SCAN_PIXELS"][0].split())
    range_x, range_y = (float(v) for v in header["SCAN_RANGE"][0].split())
    rows = [r.split("\t") for r in header["DATA_INFO"]]
    cols = [c.strip() for c in rows[0] if c.strip()]
    table = [dict(zip(cols, [c.strip() for c in r if c.strip()])) for r in rows[1:] if r and any(c.strip() for c in r)]
    order = ">" if "MSBFIRST" in " ".join(header.get("SCANIT_TYPE", ["MSBFIRST"])) else "<"
    kind = "f4" if "FLOAT" in " ".join(header.get("SCANIT_TYPE", ["FLOAT"])).upper() else "i4"
    if channel is not None:  # an index into the file's channel list (DATA_INFO order)
        names = [e["Name"] for e in table]
        if not 0 <= channel < len(names):
            raise InputError(f"--channel {channel} out of range; the file's channels are "
                             + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
        name = names[channel]
    planes, index = {}, 0
    for entry in table:
        dirs = ["forward", "backward"] if entry.get("Direction", "both") == "both" else [entry["Direction"]]
        for d in dirs:
            planes[(entry["Name"], d)] = index
            index += 1
    if (name, direction) not in planes:
        raise InputError(f"no channel {name!r} ({direction}) in the file; it has "
                         f"{sorted({f'{n} {d}' for n, d in planes})}")
    values = np.frombuffer(raw, dtype=order + kind, offset=start + 2)
    if values.size < index * nx * ny:
        raise InputError(f"file is truncated: {values.size} values for {index} planes of {ny}x{nx}")
    data = values[: index * nx * ny].reshape(index, ny, nx)[planes[(name, direction)]].astype(np.float32)
    scan_dir = header.get("SCAN_DIR", ["down"])[0].strip().lower()
    if scan_dir == "up":
        data = data[::-1]
    if direction == "backward":
        data = data[:, ::-1]
    entry = next(e for e in table if e["Name"] == name)
    size, unit = _to_nm(range_x / nx, "m")
    meta = {"format": "nanonis-sxm", "channel": name, "direction": direction, "scan_dir": scan_dir,
            "value_unit": entry.get("Unit"), "scan_range_m": [range_x, range_y],
            "scan_pixels": [nx, ny], "channels": sorted({n for n, _ in planes}),
            "original": {k: "\n".join(v) for k, v in header.items()}}
    size_y = _to_nm(range_y / ny, "m")[0]
    if size_y is not None and size is not None and not math.isclose(size_y, size, rel_tol=1e-6):
        meta["pixel_size_y"] = size_y
    return np.ascontiguousarray(data), size, unit, meta


def _read_mat(path: Path, channel: int | None):
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        variables = {k: v for k, v in mat.items() if not k.startswith("__")}

        def field_of(name, sub):
            return getattr(variables.get(name), sub, None)
    except NotImplementedError:  # MATLAB v7.3 = HDF5, column-major
        return _read_mat73(path, channel)
    obs, dx = field_of("input", "obs"), field_of("input", "dx")
    if obs is not None:  # StatSTEM: input.obs image, input.dx pixel size in Å
        size, unit = _to_nm(dx, "Å")
        meta = {"format": "statstem-mat", "variable": "input.obs",
                "original": _jsonable({"input": {k: v for k, v in vars(variables["input"]).items()
                                                 if k not in ("obs", "_fieldnames")}})}
        return _mat_array(np.asarray(obs), channel), size, unit, meta
    key = _mat_pick(path, {k: v for k, v in variables.items() if isinstance(v, np.ndarray)})
    return _mat_array(variables[key], channel), None, None, {"format": "mat", "variable": key}


def _read_mat73(path: Path, channel: int | None):
    import h5py

    with h5py.File(path, "r") as f:
        if "input" in f and "obs" in f["input"]:
            obs = f["input/obs"][()].T
            dx = float(np.ravel(f["input/dx"][()])[0]) if "dx" in f["input"] else None
            size, unit = _to_nm(dx, "Å")
            return _mat_array(obs, channel), size, unit, {"format": "statstem-mat", "variable": "input.obs"}
        arrays = {k: v for k, v in f.items() if hasattr(v, "shape")}
        key = _mat_pick(path, arrays)
        return _mat_array(arrays[key][()].T, channel), None, None, {"format": "mat", "variable": key}


def _mat_pick(path: Path, arrays: dict) -> str:
    images = [k for k, v in arrays.items() if len(v.shape) in (2, 3, 4) and min(v.shape[:2]) > 1]
    for key in ("data", "image", "img", "obs"):
        if key in images:
            return key
    if len(images) == 1:
        return images[0]
    raise InputError(f"cannot choose an image among the variables {sorted(arrays)}; name it 'data' or 'image'")


def _mat_array(data: np.ndarray, channel: int | None) -> np.ndarray:
    """MATLAB stacks are (H, W, N): colour when N is 3 or 4, otherwise frames moved first."""
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[-1] not in (3, 4):
        data = np.moveaxis(data, -1, 0)
    return _array_with_colour(data, channel)


_READERS: dict[str, Callable] = {
    ".tif": _read_tiff, ".tiff": _read_tiff,
    ".png": _read_imageio, ".jpg": _read_imageio, ".jpeg": _read_imageio, ".bmp": _read_imageio,
    ".npy": _read_npy, ".npz": _read_npz,
    ".mrc": _read_mrc,
    ".emd": _read_emd,
    ".dm3": lambda p, c: _read_rsciio(p, c, "digitalmicrograph"),
    ".dm4": lambda p, c: _read_rsciio(p, c, "digitalmicrograph"),
    ".ser": lambda p, c: _read_rsciio(p, c, "tia"),
    ".sxm": _read_sxm,
    ".mat": _read_mat,
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".ome.tif", ".ome.tiff") + tuple(_READERS)  # matched on name endings


# --------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------

def _check_input_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise InputError(f"{path}: unsupported file type '{suffix or path.name}'; supported: "
                         f"{' '.join(SUPPORTED_EXTENSIONS)}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    return suffix


def _guarded(path: Path, fn: Callable):
    """Run a reader; turn any failure into a one-line InputError that names the file."""
    try:
        return fn()
    except MissingExtraError:
        raise
    except JaxdnError as err:
        message = str(err)
        raise type(err)(message if str(path) in message else f"{path}: {message}") from None
    except MemoryError:
        raise InputError(f"{path}: not enough memory to read this file") from None
    except Exception as err:  # any library failure on a bad file
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        raise InputError(f"{path}: cannot read as {path.suffix.lower()} ({reason})") from None


def _image(path: Path, data, size, unit, meta) -> Image:
    data = np.asarray(data)
    if data.dtype.kind in "iub" and data.dtype.itemsize <= 2:  # exact in float32: skip float64
        data = data.astype(np.float32)
    meta = dict(meta)
    meta.setdefault("original", {})
    return Image(data=to_float32(data), pixel_size=size, unit=unit if size is not None else None,
                 metadata=meta, source=path)


def read(path, *, channel: int | None = None) -> Image:
    """Read an image or a stack of frames with its calibration.

    Args:
      path: image file; the reader is chosen by extension (see `SUPPORTED_EXTENSIONS`).
      channel: colour/channel index to keep for RGB(A) or multi-channel images, which are refused
        without it; for Nanonis .sxm, the index of the channel in the file (default: "Z").
    Returns:
      `Image` with float32 data (H, W) or (T, H, W), pixel size in nm where the file gives a
      physical length, metadata and source path.
    Raises:
      InputError: missing, empty, unreadable or unsupported file; colour without `channel`;
        more than one non-spatial dimension; complex data. One line, naming the file.
      MissingExtraError: a DM3/DM4/SER/Velox file without the optional extra `jaxdn[formats]`.
    """
    path = Path(path)
    suffix = _check_input_file(path)
    return _guarded(path, lambda: _image(path, *_READERS[suffix](path, channel)))


# --------------------------------------------------------------------------------------------
# Lazy frame access for big stacks
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class LazyStack:
    """Frames of a (T, H, W) stack read on demand (memory-mapped where the format allows).

    Use `frames(start, stop)` to get float32 (stop - start, H, W) blocks; a 2-D image counts as
    one frame. `shape` is the full (H, W) or (T, H, W) shape.
    """

    path: Path
    shape: tuple[int, ...]
    pixel_size: float | None
    unit: str | None
    metadata: dict
    _get: Callable[[int, int], np.ndarray] = field(repr=False, compare=False)

    @property
    def n_frames(self) -> int:
        return self.shape[0] if len(self.shape) == 3 else 1

    def __len__(self) -> int:
        return self.n_frames

    def frames(self, start: int, stop: int) -> np.ndarray:
        """float32 (k, H, W) frames start..stop-1 (clipped to the stack)."""
        start, stop, _ = slice(start, stop).indices(self.n_frames)
        # np.array: a copy in memory, never the memory map itself
        block = _guarded(self.path, lambda: np.array(self._get(start, max(start, stop))))
        return to_float32(block.reshape((-1,) + tuple(self.shape[-2:])))

    def __getitem__(self, index: int) -> np.ndarray:
        """One float32 (H, W) frame."""
        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range for {self.n_frames} frames")
        index %= self.n_frames
        return self.frames(index, index + 1)[0]

    def read(self) -> Image:
        """Everything as an `Image`."""
        data = self.frames(0, self.n_frames).reshape(self.shape)
        return Image(data=data, pixel_size=self.pixel_size, unit=self.unit, metadata=self.metadata,
                     source=self.path)


def open_lazy(path, *, channel: int | None = None) -> LazyStack:
    """Open an image or stack for frame-by-frame reading in bounded memory.

    Memory-maps uncompressed TIFF and .npy files and reads TIFF pages one block at a time
    otherwise; other formats are read whole once and sliced.
    """
    path = Path(path)
    suffix = _check_input_file(path)
    lazy = None
    if channel is None:
        if suffix in (".tif", ".tiff"):
            lazy = _guarded(path, lambda: _lazy_tiff(path))
        elif suffix == ".npy":
            lazy = _guarded(path, lambda: _lazy_npy(path))
    if lazy is not None:
        return lazy
    image = read(path, channel=channel)
    data = image.data if image.is_stack else image.data[None]
    return LazyStack(path, image.shape, image.pixel_size, image.unit, image.metadata, lambda a, b: data[a:b])


def _lazy_tiff(path: Path) -> LazyStack | None:
    with _tiff_errors(), tifffile.TiffFile(path) as tif:
        if len(tif.series) > 1:
            return None
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        size, unit, meta = _tiff_calibration(tif)
        n_pages = len(series.pages)
    meta["axes"] = axes
    squeezed = tuple(n for a, n in zip(axes, shape) if a in "YX" or n > 1)
    if "S" in axes or "C" in axes and shape[axes.index("C")] > 1 or len(squeezed) not in (2, 3):
        return None
    frames = squeezed[0] if len(squeezed) == 3 else 1
    try:
        mm = tifffile.memmap(path, mode="r")
        mm = mm.reshape((frames,) + squeezed[-2:])
        getter = lambda a, b: mm[a:b]  # noqa: E731
    except (ValueError, OSError):
        if n_pages != frames:
            return None

        def getter(a, b):
            if b <= a:
                return np.empty((0,) + squeezed[-2:], np.float32)
            with tifffile.TiffFile(path) as tif:
                return tif.asarray(key=range(a, b), series=0)
    return LazyStack(path, squeezed, size, unit, meta, getter)


def _lazy_npy(path: Path) -> LazyStack | None:
    mm = np.load(path, mmap_mode="r", allow_pickle=False)
    if is_color(mm) or mm.ndim not in (2, 3):
        return None
    stack = mm if mm.ndim == 3 else mm[None]
    return LazyStack(path, mm.shape, None, None, {"format": "npy"}, lambda a, b: stack[a:b])


# --------------------------------------------------------------------------------------------
# Writers (each writes `image` to a temporary path that already has the right extension)
# --------------------------------------------------------------------------------------------

_IMAGEJ_UNIT = {"nm": "nm", "µm": "micron", "um": "micron", "micron": "micron"}


def _write_tiff(tmp: Path, image: Image) -> None:
    data = image.data
    axes = "TYX" if image.is_stack else "YX"
    kwargs: dict = {}
    if data.nbytes < 3_900_000_000:  # ImageJ hyperstack, opens calibrated in ImageJ/Fiji
        meta = {"axes": axes}
        if image.pixel_size is not None:
            kwargs["resolution"] = (1.0 / image.pixel_size, 1.0 / image.pixel_size)
            if image.unit:
                meta["unit"] = _IMAGEJ_UNIT.get(image.unit, image.unit)
        tifffile.imwrite(tmp, data, imagej=True, metadata=meta, **kwargs)
    else:  # ImageJ cannot hold more than 4 GB: BigTIFF with centimetre resolution
        per_cm = 1e7 / image.pixel_size if image.pixel_size is not None and image.unit == "nm" else None
        if per_cm is not None and per_cm < 4e9:  # TIFF rationals are 32-bit
            kwargs.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
        tifffile.imwrite(tmp, data, bigtiff=True, metadata={"axes": axes}, **kwargs)


def _write_npy(tmp: Path, image: Image) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, image.data)


def _write_npz(tmp: Path, image: Image) -> None:
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, data=image.data,
                            pixel_size=np.float64(np.nan if image.pixel_size is None else image.pixel_size),
                            unit=np.str_(image.unit or ""))


def _write_png(tmp: Path, image: Image) -> None:
    from PIL import Image as PILImage, PngImagePlugin

    if image.is_stack:
        raise InputError("PNG holds a single frame; write stacks as .tif")
    data = image.data
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = (np.clip(np.nan_to_num(data, nan=lo), lo, hi) - lo) / (hi - lo or 1.0)
    pixels = np.round(scaled * 65535).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("jaxdn", json.dumps({
        "pixel_size": image.pixel_size, "unit": image.unit, "value_min": lo, "value_max": hi,
        "note": "16-bit min-max scaled copy; use .tif for the float32 values"}))
    PILImage.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)


def _write_mrc(tmp: Path, image: Image) -> None:
    import mrcfile

    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(image.data)
        if image.is_stack:
            mrc.set_image_stack()
        if image.pixel_size is not None and image.unit == "nm":
            mrc.voxel_size = image.pixel_size * 10.0  # Å


_WRITERS: dict[str, Callable[[Path, Image], None]] = {
    ".tif": _write_tiff, ".tiff": _write_tiff, ".npy": _write_npy, ".npz": _write_npz,
    ".png": _write_png, ".mrc": _write_mrc,
}
WRITABLE_EXTENSIONS: tuple[str, ...] = tuple(_WRITERS)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on error removed.

    For files written by other libraries (figures, weights) with the same crash-safety as `write`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        _commit(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def write(path, image: Image | np.ndarray, *, overwrite: bool = False, provenance: dict | None = None) -> Path:
    """Write an image atomically, by extension, keeping its calibration.

    .tif/.tiff: float32 ImageJ hyperstack ('YX' or 'TYX') with resolution and unit, so ImageJ/Fiji
    shows the pixel size. .npz: data + pixel_size + unit. .mrc: float32 with voxel size in Å.
    .npy: pixels only. .png: a single frame, min-max scaled to 16 bits (calibration and the scaling
    in a `jaxdn` text chunk).

    Args:
      path: output file; its folder is created.
      image: an `Image` (or an array, written uncalibrated).
      overwrite: replace an existing output (never the input file itself).
      provenance: if given, also write `<path>.json` with it plus pixel size, unit, shape, dtype
        and the output's SHA-256.
    Returns:
      The output path.
    Raises:
      OutputExistsError: the output (or its sidecar) exists and `overwrite` is False, or the
        output is the image's source file.
      InputError: unsupported output extension, or a stack written to PNG.
    """
    path = Path(path)
    if not isinstance(image, Image):
        image = Image(data=image)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise InputError(f"{path}: cannot write '{suffix or path.name}'; supported output types: "
                         f"{' '.join(WRITABLE_EXTENSIONS)}")
    summary = {"pixel_size": image.pixel_size, "unit": image.unit, "shape": list(image.shape), "dtype": "float32"}
    return _write_atomic(path, lambda tmp: _WRITERS[suffix](tmp, image), source=image.source,
                         overwrite=overwrite, provenance=provenance, summary=summary)


def write_frames(path, frames: Iterable[np.ndarray], *, shape: tuple[int, int, int],
                 pixel_size: float | None = None, unit: str | None = None, source=None,
                 overwrite: bool = False, provenance: dict | None = None) -> Path:
    """Stream frames into a float32 ImageJ 'TYX' TIFF without holding the stack in memory.

    Same safety as `write`: atomic, never over `source`, `overwrite` rule, optional sidecar.

    Args:
      path: output .tif/.tiff file.
      frames: iterable of T arrays (H, W), any real dtype (converted to float32 one at a time).
      shape: (T, H, W) of the whole stack.
      pixel_size, unit: calibration (length units are converted to nm).
      source: the input file, which is never overwritten.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"{path}: streamed stacks are written as .tif; got '{path.suffix}'")
    t, h, w = (int(n) for n in shape)
    calib = Image(np.zeros((1, 1), np.float32), pixel_size=pixel_size, unit=unit)  # normalises the unit

    def checked():
        count = 0
        for frame in frames:
            frame = to_float32(np.asarray(frame))
            if frame.shape != (h, w):
                raise InputError(f"frame {count} has shape {frame.shape}, expected {(h, w)}")
            count += 1
            if count > t:
                raise InputError(f"more than the {t} frames announced")
            yield frame
        if count != t:
            raise InputError(f"got {count} frames, expected {t}")

    def writer(tmp: Path) -> None:
        meta, kwargs = {"axes": "TYX"}, {}
        if calib.pixel_size is not None:
            kwargs["resolution"] = (1.0 / calib.pixel_size, 1.0 / calib.pixel_size)
            if calib.unit:
                meta["unit"] = _IMAGEJ_UNIT.get(calib.unit, calib.unit)
        tifffile.imwrite(tmp, checked(), shape=(t, h, w), dtype=np.float32, imagej=True, metadata=meta,
                         **kwargs)

    summary = {"pixel_size": calib.pixel_size, "unit": calib.unit, "shape": [t, h, w], "dtype": "float32"}
    return _write_atomic(path, writer, source=source, overwrite=overwrite, provenance=provenance,
                         summary=summary)


def _write_atomic(path: Path, writer: Callable[[Path], None], *, source, overwrite: bool,
                  provenance: dict | None, summary: dict) -> Path:
    """Refuse unsafe outputs, then write to temporary files in the same folder and rename."""
    if source is not None and _same_file(path, Path(source)):
        raise OutputExistsError(f"{path}: output is the input file; choose another output name or folder")
    sidecar = path.with_name(path.name + ".json") if provenance is not None else None
    for target in (path, sidecar):
        if target is not None and target.is_dir():
            raise OutputExistsError(f"{target}: is a folder")
        if target is not None and target.exists() and not overwrite:
            raise OutputExistsError(f"{target}: already exists; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise JaxdnError(f"{path}: cannot create the output folder ({err.strerror or err})") from None
    tmp = _temp_path(path)
    tmp_json = _temp_path(sidecar) if sidecar is not None else None
    try:
        writer(tmp)
        if sidecar is not None:
            record = {"provenance": _jsonable(provenance), "output": path.name,
                      "output_sha256": sha256_file(tmp), **summary}
            tmp_json.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        _commit(tmp, path)
        if sidecar is not None:
            _commit(tmp_json, sidecar)
    except JaxdnError as err:
        message = str(err)
        raise type(err)(message if str(path) in message else f"{path}: {message}") from None
    except OSError as err:
        raise JaxdnError(f"{path}: cannot write ({err.strerror or err})") from None
    finally:
        for t in (tmp, tmp_json):
            if t is not None and t.exists():
                t.unlink()
    return path


def sha256_file(path, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
