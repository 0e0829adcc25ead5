"""Tests for jaxdn.io: every reader, every writer, calibration, bad input and atomic output.

Formats with a writer are proven by round trips through files built here (with the reference
library where one exists: tifffile, imageio, mrcfile, h5py, scipy.io). Formats without one (TIA
SER, Nanonis SXM, real ImageJ/Berkeley EMD/StatSTEM/PNG files) are read from ../shared/realdata
next to the repository when it exists (CI has it), and skipped otherwise.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import h5py
import imageio.v3 as iio
import mrcfile
import numpy as np
import pytest
import scipy.io
import tifffile

from jaxdn import io
from jaxdn.errors import InputError, MissingExtraError, OutputExistsError

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def _ramp(shape=(12, 16), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _imagej_pixel_size(path):
    """(pixel size, unit, axes, dtype) exactly as ImageJ sees them: XResolution tag + IJ metadata."""
    with tifffile.TiffFile(path) as tif:
        num, den = tif.pages[0].tags["XResolution"].value
        ij = tif.imagej_metadata
        return den / num, ij.get("unit"), tif.series[0].axes, tif.pages[0].dtype


def _one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------

def test_tiff_round_trip_keeps_calibration_as_imagej_sees_it(tmp_path):
    data = _ramp()
    out = io.write(tmp_path / "a.tif", io.Image(data, pixel_size=0.0524, unit="nm"))
    size, unit, axes, dtype = _imagej_pixel_size(out)
    assert size == pytest.approx(0.0524, rel=1e-6)
    assert (unit, axes, dtype) == ("nm", "YX", np.float32)
    back = io.read(out)
    np.testing.assert_array_equal(back.data, data)
    assert back.data.dtype == np.float32
    assert back.pixel_size == pytest.approx(0.0524, rel=1e-6) and back.unit == "nm"
    assert back.source == out and back.metadata["format"] == "imagej-tiff"


def test_tiff_stack_is_a_TYX_hyperstack(tmp_path):
    data = _ramp((3, 8, 10))
    out = io.write(tmp_path / "stack.tiff", io.Image(data, pixel_size=0.01224652, unit="nm"))
    size, unit, axes, dtype = _imagej_pixel_size(out)
    assert (unit, axes, dtype) == ("nm", "TYX", np.float32)
    assert size == pytest.approx(0.01224652, rel=1e-6)
    with tifffile.TiffFile(out) as tif:
        assert tif.imagej_metadata["frames"] == 3
    back = io.read(out)
    assert back.shape == (3, 8, 10) and back.is_stack and back.n_frames == 3
    np.testing.assert_array_equal(back.data, data)


def test_float64_in_float32_out(tmp_path):
    data = _ramp(dtype=np.float64)
    out = io.write(tmp_path / "f64.tif", data)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].dtype == np.float32
    back = io.read(out)
    assert back.data.dtype == np.float32 and back.pixel_size is None and back.unit is None
    np.testing.assert_array_equal(back.data, data.astype(np.float32))


def test_uint16_and_negative_int32_convert_exactly(tmp_path):
    u16 = np.array([[0, 1, 65534, 65535]] * 4, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", u16)
    np.testing.assert_array_equal(io.read(tmp_path / "u16.tif").data, u16.astype(np.float64))
    i32 = np.array([[-2**24, -1, 0, 2**24]] * 4, dtype=np.int32)
    np.save(tmp_path / "i32.npy", i32)
    back = io.read(tmp_path / "i32.npy").data
    assert back.dtype == np.float32 and back.min() == -2**24
    np.testing.assert_array_equal(back, i32.astype(np.float64))


def test_imagej_hyperstack_singletons_squeezed_and_extra_dims_refused(tmp_path):
    tzcyx = _ramp((4, 1, 1, 6, 7))
    tifffile.imwrite(tmp_path / "h.tif", tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    assert io.read(tmp_path / "h.tif").shape == (4, 6, 7)
    tifffile.imwrite(tmp_path / "tz.tif", _ramp((2, 3, 6, 7)), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(InputError, match="non-spatial dimensions.*T=2.*Z=3") as err:
        io.read(tmp_path / "tz.tif")
    _one_line_naming(err, tmp_path / "tz.tif")


def test_multichannel_hyperstack_needs_channel(tmp_path):
    cyx = _ramp((2, 6, 7))
    tifffile.imwrite(tmp_path / "c.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(InputError, match="2 channels.*--channel"):
        io.read(tmp_path / "c.tif")
    np.testing.assert_array_equal(io.read(tmp_path / "c.tif", channel=1).data, cyx[1])


def test_plain_multipage_tiff_and_rgb_tiff(tmp_path):
    pages = _ramp((5, 6, 7))
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for page in pages:
            tw.write(page, contiguous=False)
    back = io.read(tmp_path / "pages.tif")
    assert back.shape == (5, 6, 7) and back.pixel_size is None
    np.testing.assert_array_equal(back.data, pages)
    rgb = np.random.default_rng(1).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(InputError, match="3 colour channels"):
        io.read(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(io.read(tmp_path / "rgb.tif", channel=1).data, rgb[..., 1])


@pytest.mark.parametrize(("size", "unit", "nm"), [(0.5, "µm", 500.0), (0.25, "nm", 0.25), (1.5, "Å", 0.15)])
def test_ome_tiff_physical_size(tmp_path, size, unit, nm):
    data = _ramp((2, 6, 7))
    tifffile.imwrite(tmp_path / "x.ome.tif", data, ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit,
        "PhysicalSizeY": size, "PhysicalSizeYUnit": unit})
    back = io.read(tmp_path / "x.ome.tif")
    assert back.metadata["format"] == "ome-tiff"
    assert back.pixel_size == pytest.approx(nm) and back.unit == "nm"
    np.testing.assert_array_equal(back.data, data)


def test_plain_tiff_resolution_units(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", _ramp(), resolution=(1e7 / 0.2, 1e7 / 0.2), resolutionunit="CENTIMETER")
    assert io.read(tmp_path / "cm.tif").pixel_size == pytest.approx(0.2, rel=1e-6)
    tifffile.imwrite(tmp_path / "dpi.tif", _ramp(), resolution=(72, 72), resolutionunit="INCH")
    assert io.read(tmp_path / "dpi.tif").pixel_size is None  # screen dpi, not a calibration


def test_micron_unit_converted_to_nm(tmp_path):
    tifffile.imwrite(tmp_path / "um.tif", _ramp(), imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "micron"})
    back = io.read(tmp_path / "um.tif")
    assert back.pixel_size == pytest.approx(250.0) and back.unit == "nm"


# --------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_png_read_exact(tmp_path, dtype):
    data = np.random.default_rng(2).integers(0, np.iinfo(dtype).max, (9, 11), dtype=dtype)
    iio.imwrite(tmp_path / "g.png", data)
    back = io.read(tmp_path / "g.png")
    assert back.shape == (9, 11) and back.data.dtype == np.float32 and back.pixel_size is None
    np.testing.assert_array_equal(back.data, data)


def test_rgb_png_refused_unless_channel(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 255, (9, 11, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "c.png", rgba)
    with pytest.raises(InputError, match="4 colour channels") as err:
        io.read(tmp_path / "c.png")
    _one_line_naming(err, tmp_path / "c.png")
    np.testing.assert_array_equal(io.read(tmp_path / "c.png", channel=2).data, rgba[..., 2])
    with pytest.raises(InputError, match="out of range"):
        io.read(tmp_path / "c.png", channel=4)


def test_gray_jpeg_and_bmp(tmp_path):
    data = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (16, 1))
    iio.imwrite(tmp_path / "g.jpg", data, quality=100)
    iio.imwrite(tmp_path / "g.bmp", data)
    assert io.read(tmp_path / "g.jpg").shape == (16, 16)
    assert np.abs(io.read(tmp_path / "g.jpg").data - data).max() <= 4
    np.testing.assert_array_equal(io.read(tmp_path / "g.bmp").data, data)


def test_png_writer_scales_to_16_bit_and_keeps_calibration(tmp_path):
    data = _ramp()
    out = io.write(tmp_path / "p.png", io.Image(data, pixel_size=0.1, unit="nm"))
    raw = iio.imread(out)
    assert raw.dtype == np.uint16 and raw.min() == 0 and raw.max() == 65535
    expected = np.round((data - data.min()) / (data.max() - data.min()) * 65535)
    np.testing.assert_array_equal(raw, expected)
    back = io.read(out)
    assert back.pixel_size == pytest.approx(0.1) and back.unit == "nm"
    assert back.metadata["jaxdn"]["value_min"] == pytest.approx(float(data.min()))
    with pytest.raises(InputError, match="single frame") as err:
        io.write(tmp_path / "s.png", _ramp((2, 5, 5)))
    _one_line_naming(err, tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


# --------------------------------------------------------------------------------------------
# NPY / NPZ
# --------------------------------------------------------------------------------------------

def test_npy_round_trip(tmp_path):
    data = _ramp((2, 5, 6))
    out = io.write(tmp_path / "a.npy", data)
    np.testing.assert_array_equal(np.load(out), data)
    np.testing.assert_array_equal(io.read(out).data, data)


def test_npz_round_trip_with_calibration(tmp_path):
    data = _ramp()
    out = io.write(tmp_path / "a.npz", io.Image(data, pixel_size=0.3, unit="nm"))
    back = io.read(out)
    np.testing.assert_array_equal(back.data, data)
    assert back.pixel_size == pytest.approx(0.3) and back.unit == "nm"
    uncal = io.read(io.write(tmp_path / "b.npz", data))
    assert uncal.pixel_size is None and uncal.unit is None


def test_npz_key_choice(tmp_path):
    np.savez(tmp_path / "one.npz", frame=np.ones((4, 5)))
    assert io.read(tmp_path / "one.npz").shape == (4, 5)
    np.savez(tmp_path / "img.npz", image=np.ones((4, 5)), mask=np.zeros((4, 5)))
    assert io.read(tmp_path / "img.npz").metadata["key"] == "image"
    np.savez(tmp_path / "two.npz", a=np.ones((4, 5)), b=np.zeros((4, 5)))
    with pytest.raises(InputError, match=r"\['a', 'b'\]") as err:
        io.read(tmp_path / "two.npz")
    _one_line_naming(err, tmp_path / "two.npz")


# --------------------------------------------------------------------------------------------
# MRC
# --------------------------------------------------------------------------------------------

def test_mrc_round_trip_and_mrcfile_voxel_size(tmp_path):
    data = _ramp((3, 6, 8))
    out = io.write(tmp_path / "a.mrc", io.Image(data, pixel_size=0.15, unit="nm"))
    with mrcfile.open(out) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.voxel_size.x == pytest.approx(1.5)
        assert mrc.is_image_stack()
    back = io.read(out)
    np.testing.assert_array_equal(back.data, data)
    assert back.pixel_size == pytest.approx(0.15) and back.unit == "nm"
    with mrcfile.new(tmp_path / "b.mrc") as mrc:
        mrc.set_data(np.arange(20, dtype=np.int16).reshape(4, 5) - 10)
        mrc.voxel_size = 2.0
    back = io.read(tmp_path / "b.mrc")
    assert back.pixel_size == pytest.approx(0.2) and back.data.min() == -10


def test_complex_mrc_refused(tmp_path):
    with mrcfile.new(tmp_path / "c.mrc") as mrc:
        mrc.set_data(np.ones((4, 5), np.complex64))
    with pytest.raises(InputError, match="complex") as err:
        io.read(tmp_path / "c.mrc")
    _one_line_naming(err, tmp_path / "c.mrc")


# --------------------------------------------------------------------------------------------
# Berkeley EMD (built with h5py as ncempy writes it)
# --------------------------------------------------------------------------------------------

def _berkeley_emd(path, data, step, units=b"n_m"):
    with h5py.File(path, "w") as f:
        f.attrs["version_major"], f.attrs["version_minor"] = 0, 2
        group = f.create_group("data/stack")
        group.attrs["emd_group_type"] = np.int32(1)
        group["data"] = data
        names = [b"t", b"Y", b"X"][-data.ndim:]
        for i, n in enumerate(data.shape):
            dim = group.create_dataset(f"dim{i + 1}", data=np.arange(n) * (step if i >= data.ndim - 2 else 1.0))
            dim.attrs["name"], dim.attrs["units"] = names[i], (units if i >= data.ndim - 2 else b"[s]")
        f.create_group("microscope").attrs["high tension"] = 300e3


def test_berkeley_emd(tmp_path):
    data = np.random.default_rng(4).integers(0, 60000, (6, 7), dtype=np.uint16)
    _berkeley_emd(tmp_path / "a.emd", data, 0.0125)
    back = io.read(tmp_path / "a.emd")
    np.testing.assert_array_equal(back.data, data)
    assert back.pixel_size == pytest.approx(0.0125) and back.unit == "nm"
    assert back.metadata["original"]["microscope"]["high tension"] == 300e3
    json.dumps(back.metadata)
    stack = _ramp((3, 6, 7))
    _berkeley_emd(tmp_path / "s.emd", stack, 1.25, units=b"[A]")
    back = io.read(tmp_path / "s.emd")
    assert back.shape == (3, 6, 7) and back.pixel_size == pytest.approx(0.125)


def test_hdf5_that_is_not_emd_refused(tmp_path):
    with h5py.File(tmp_path / "x.emd", "w") as f:
        f["something"] = np.ones(3)
    with pytest.raises(InputError, match="neither a Berkeley EMD"):
        io.read(tmp_path / "x.emd")


def _velox_emd(path, stack, pixel_m):
    """A minimal Velox EMD as Velox lays it out: Data/Image/<id>/Data (y, x, frame) + JSON Metadata."""
    with h5py.File(path, "w") as f:
        f["Version"] = np.array([json.dumps({"format": "Velox", "version": 11}).encode()])
        group = f.create_group("Data/Image/0123456789abcdef")
        group["Data"] = np.moveaxis(stack, 0, -1)
        meta = {"BinaryResult": {"PixelSize": {"width": str(pixel_m), "height": str(pixel_m)}, "PixelUnitX": "m",
                                 "PixelUnitY": "m", "Offset": {"x": "0", "y": "0"}, "DetectorIndex": "0"},
                "Detectors": {"Detector-0": {"DetectorName": "HAADF"}}, "Scan": {"FrameTime": "1.5"},
                "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1570217141"}}}
        raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        group["Metadata"] = np.concatenate([raw, np.zeros(16, np.uint8)])[:, None]


def test_velox_emd_through_the_formats_extra(tmp_path):
    pytest.importorskip("rsciio")
    stack = np.random.default_rng(8).integers(0, 4000, (3, 6, 7), dtype=np.uint16)
    _velox_emd(tmp_path / "v.emd", stack, 5e-11)
    back = io.read(tmp_path / "v.emd")
    np.testing.assert_array_equal(back.data, stack)
    assert back.pixel_size == pytest.approx(0.05) and back.unit == "nm" and "pixel_size_y" not in back.metadata
    assert back.metadata["format"] == "velox-emd" and back.metadata["title"] == "HAADF"
    json.dumps(back.metadata)


# --------------------------------------------------------------------------------------------
# Nanonis SXM (built here: non-square, bottom-up scan, backward + forward-only channels)
# --------------------------------------------------------------------------------------------

def _sxm(path, planes_raw, *, nx, ny, scan_dir, scan_range=(4e-9, 2e-9)):
    header = (
        ":NANONIS_VERSION:\n2\n:SCANIT_TYPE:\n              FLOAT            MSBFIRST\n"
        f":SCAN_PIXELS:\n       {nx}       {ny}\n"
        f":SCAN_RANGE:\n           {scan_range[0]:E}           {scan_range[1]:E}\n"
        f":SCAN_DIR:\n{scan_dir}\n"
        ":DATA_INFO:\n\tChannel\tName\tUnit\tDirection\tCalibration\tOffset\n"
        "\t14\tZ\tm\tboth\t1.764E-8\t0.000E+0\n\t0\tCurrent\tA\tforward\t3.330E-10\t0.000E+0\n\n"
        ":SCANIT_END:\n\n\n")
    path.write_bytes(header.encode() + b"\x1a\x04" + np.asarray(planes_raw, ">f4").tobytes())


@pytest.mark.parametrize("scan_dir", ["down", "up"])
def test_sxm_orientation_non_square(tmp_path, scan_dir):
    ny, nx = 4, 6  # 4 lines of 6 pixels; must not come back as 6 x 4
    rng = np.random.default_rng(5)
    z_fwd, z_bwd, current = (rng.normal(size=(ny, nx)).astype(np.float32) for _ in range(3))
    # File order: lines in acquisition order (bottom first for "up"), backward lines right to left.
    order = (lambda a: a[::-1]) if scan_dir == "up" else (lambda a: a)
    _sxm(tmp_path / "s.sxm", [order(z_fwd), order(z_bwd[:, ::-1]), order(current)], nx=nx, ny=ny, scan_dir=scan_dir)
    fwd = io.read(tmp_path / "s.sxm")
    assert fwd.shape == (ny, nx)
    np.testing.assert_array_equal(fwd.data, z_fwd)
    assert fwd.pixel_size == pytest.approx(4.0 / nx) and fwd.unit == "nm"
    assert fwd.metadata["pixel_size_y"] == pytest.approx(2.0 / ny) and fwd.metadata["value_unit"] == "m"
    np.testing.assert_array_equal(io.read_sxm(tmp_path / "s.sxm", direction="backward").data, z_bwd)
    np.testing.assert_array_equal(io.read_sxm(tmp_path / "s.sxm", channel="Current").data, current)
    np.testing.assert_array_equal(io.read(tmp_path / "s.sxm", channel=1).data, current)
    with pytest.raises(InputError, match="0=Z, 1=Current"):
        io.read(tmp_path / "s.sxm", channel=2)
    with pytest.raises(InputError, match="no channel 'Current' \\(backward\\)"):
        io.read_sxm(tmp_path / "s.sxm", channel="Current", direction="backward")


def test_truncated_sxm_refused(tmp_path):
    _sxm(tmp_path / "t.sxm", [np.zeros((4, 6))], nx=6, ny=4, scan_dir="down")
    with pytest.raises(InputError, match="truncated") as err:
        io.read(tmp_path / "t.sxm")
    _one_line_naming(err, tmp_path / "t.sxm")


# --------------------------------------------------------------------------------------------
# MATLAB
# --------------------------------------------------------------------------------------------

def test_statstem_and_plain_mat(tmp_path):
    obs = np.random.default_rng(6).integers(0, 2**16, (7, 9), dtype=np.uint16)
    scipy.io.savemat(tmp_path / "s.mat", {"input": {"obs": obs, "dx": 0.3109, "types": "1"}})
    back = io.read(tmp_path / "s.mat")
    np.testing.assert_array_equal(back.data, obs)
    assert back.pixel_size == pytest.approx(0.03109) and back.unit == "nm"
    scipy.io.savemat(tmp_path / "p.mat", {"img": obs.astype(float), "note": "x"})
    np.testing.assert_array_equal(io.read(tmp_path / "p.mat").data, obs)
    scipy.io.savemat(tmp_path / "hwn.mat", {"stack": np.stack([obs, obs + 1], axis=-1)})  # MATLAB H x W x N
    np.testing.assert_array_equal(io.read(tmp_path / "hwn.mat").data, np.stack([obs, obs + 1]))


def test_matlab_v73_is_read_through_h5py(tmp_path):
    """v7.3 MAT files are HDF5 behind a 512-byte MATLAB header, arrays stored column-major."""
    obs = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["input/obs"], f["input/dx"] = obs.T, np.array([[0.5]])
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
    with open(path, "r+b") as fh:
        fh.write(header)
    back = io.read(path)
    np.testing.assert_array_equal(back.data, obs)
    assert back.pixel_size == pytest.approx(0.05) and back.unit == "nm"


# --------------------------------------------------------------------------------------------
# Bad input and the optional extra
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["t.tif", "t.npy", "t.npz", "t.mrc", "t.png", "t.emd"])
def test_truncated_file_is_a_one_line_input_error(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".emd"):
        _berkeley_emd(path, _ramp((64, 64)), 0.1)
    else:
        io.write(path, _ramp((64, 64)) if name.endswith(".png") else _ramp((3, 64, 64)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError) as err:
        io.read(path)
    _one_line_naming(err, path)


@pytest.mark.parametrize("name", ["bad.tif", "bad.png", "bad.npy", "bad.npz", "bad.mrc", "bad.emd",
                                  "bad.sxm", "bad.mat", "bad.jpg"])
def test_garbage_file_is_a_one_line_input_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image file at all \x00\x01\x02" * 8)
    with pytest.raises(InputError) as err:
        io.read(path)
    _one_line_naming(err, path)


def test_missing_empty_folder_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="no such file") as err:
        io.read(tmp_path / "missing.tif")
    _one_line_naming(err, tmp_path / "missing.tif")
    (tmp_path / "empty.tif").touch()
    with pytest.raises(InputError, match="empty"):
        io.read(tmp_path / "empty.tif")
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(InputError, match="folder"):
        io.read(tmp_path / "d.tif")
    (tmp_path / "x.xyz").write_bytes(b"123")
    with pytest.raises(InputError, match=r"unsupported file type '\.xyz'; supported: .*\.tif"):
        io.read(tmp_path / "x.xyz")
    assert ".TIF" not in io.SUPPORTED_EXTENSIONS and {".dm4", ".ome.tif", ".sxm"} <= set(io.SUPPORTED_EXTENSIONS)
    tifffile.imwrite(tmp_path / "UPPER.TIF", _ramp())
    assert io.read(tmp_path / "UPPER.TIF").shape == (12, 16)


def test_gpl_readers_need_the_formats_extra(tmp_path, monkeypatch):
    for ext, module in ((".ser", "rsciio.tia"), (".dm4", "rsciio.digitalmicrograph")):
        path = tmp_path / f"x{ext}"
        path.write_bytes(b"\x00" * 64)
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
        with pytest.raises(MissingExtraError, match=r'pip install "jaxdn\[formats\]"'):
            io.read(path)


def test_image_record_validation():
    with pytest.raises(InputError):
        io.Image(np.ones(5))
    with pytest.raises(InputError, match="pixel size"):
        io.Image(np.ones((4, 4)), pixel_size=-1.0, unit="nm")
    image = io.Image(np.ones((4, 4), np.float64), pixel_size=0.1, unit="nm")
    assert image.data.dtype == np.float32 and not image.is_stack
    assert io.Image(np.ones((4, 4)), pixel_size=1.5, unit="Å").unit == "nm"
    assert io.Image(np.ones((4, 4)), pixel_size=1.5, unit="Å").pixel_size == pytest.approx(0.15)
    assert io.Image(np.ones((4, 4)), pixel_size=0.2, unit="1/nm").unit == "1/nm"  # diffraction: kept
    assert io.Image(np.ones((4, 4)), unit="nm").unit is None
    denoised = image.with_data(np.zeros((4, 4)))
    assert denoised.pixel_size == 0.1 and denoised.unit == "nm" and denoised.data.sum() == 0


# --------------------------------------------------------------------------------------------
# Output safety: exists, equals input, atomic, sidecar
# --------------------------------------------------------------------------------------------

def test_output_exists_refused_unless_overwrite(tmp_path):
    out = io.write(tmp_path / "sub" / "dir" / "o.tif", _ramp())
    with pytest.raises(OutputExistsError, match="already exists") as err:
        io.write(out, _ramp(seed=1))
    _one_line_naming(err, out)
    np.testing.assert_array_equal(io.read(out).data, _ramp())
    io.write(out, _ramp(seed=1), overwrite=True)
    np.testing.assert_array_equal(io.read(out).data, _ramp(seed=1))


def test_output_equal_to_input_always_refused(tmp_path):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _ramp())
    before = io.sha256_file(src)
    image = io.read(src)
    (tmp_path / "link.tif").symlink_to(src)
    for target in (src, tmp_path / "." / "in.tif", tmp_path / "link.tif"):
        with pytest.raises(OutputExistsError, match="is the input file"):
            io.write(target, image.with_data(image.data * 2), overwrite=True)
    assert io.sha256_file(src) == before


def test_unsupported_output_extension(tmp_path):
    with pytest.raises(InputError, match=r"cannot write '\.jpg'"):
        io.write(tmp_path / "o.jpg", _ramp())


def test_write_is_atomic_when_the_writer_fails(tmp_path, monkeypatch):
    out = tmp_path / "o.tif"
    io.write(out, _ramp())
    before = out.read_bytes()

    def broken_imwrite(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise RuntimeError("disk fell off")

    monkeypatch.setattr(io.tifffile, "imwrite", broken_imwrite)
    with pytest.raises(RuntimeError, match="disk fell off"):
        io.write(out, _ramp(seed=1), overwrite=True, provenance={"method": "x"})
    with pytest.raises(RuntimeError):
        io.write(tmp_path / "new.tif", _ramp())
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]


def test_provenance_sidecar(tmp_path):
    out = io.write(tmp_path / "o.tif", io.Image(_ramp((2, 5, 6)), pixel_size=0.05, unit="nm"),
                   provenance={"method": "reucid", "seed": 0, "input_sha256": "ab" * 32, "nan": float("nan")})
    record = json.loads((tmp_path / "o.tif.json").read_text())
    assert record["provenance"]["method"] == "reucid" and record["provenance"]["nan"] is None
    assert record["pixel_size"] == 0.05 and record["unit"] == "nm"
    assert record["shape"] == [2, 5, 6] and record["dtype"] == "float32"
    assert record["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    (tmp_path / "p.tif.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="p.tif.json"):
        io.write(tmp_path / "p.tif", _ramp(), provenance={})
    assert not (tmp_path / "p.tif").exists()


def test_write_frames_streams_a_calibrated_stack(tmp_path):
    data = _ramp((4, 6, 7), dtype=np.float64)
    src = tmp_path / "in.tif"
    io.write(src, data)
    out = io.write_frames(tmp_path / "o.tif", (f for f in data), shape=data.shape, pixel_size=1.25, unit="Å",
                          source=src, provenance={"method": "x"})
    size, unit, axes, dtype = _imagej_pixel_size(out)
    assert (unit, axes, dtype) == ("nm", "TYX", np.float32) and size == pytest.approx(0.125, rel=1e-6)
    np.testing.assert_array_equal(io.read(out).data, data.astype(np.float32))
    assert json.loads((tmp_path / "o.tif.json").read_text())["shape"] == [4, 6, 7]
    with pytest.raises(OutputExistsError, match="input file"):
        io.write_frames(src, iter(data), shape=data.shape, source=src, overwrite=True)

    def dies():
        yield data[0]
        raise RuntimeError("denoiser crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        io.write_frames(tmp_path / "o.tif", dies(), shape=data.shape, overwrite=True)
    with pytest.raises(InputError, match="got 2 frames, expected 4"):
        io.write_frames(tmp_path / "short.tif", iter(data[:2]), shape=data.shape)
    np.testing.assert_array_equal(io.read(out).data, data.astype(np.float32))  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "o.tif", "o.tif.json"]


@pytest.mark.parametrize("ext", io.WRITABLE_EXTENSIONS)
def test_every_writer_round_trips_shape_dtype_calibration_and_json_metadata(tmp_path, ext):
    data = _ramp((9, 10))
    back = io.read(io.write(tmp_path / f"a{ext}", io.Image(data, pixel_size=0.25, unit="nm")))
    assert back.shape == data.shape and back.data.dtype == np.float32
    json.dumps(back.metadata, allow_nan=False)
    if ext == ".npy":  # pixels only
        assert back.pixel_size is None
    else:
        assert back.pixel_size == pytest.approx(0.25, rel=1e-6) and back.unit == "nm"
    if ext != ".png":  # PNG is a 16-bit scaled copy
        np.testing.assert_array_equal(back.data, data)


def test_sha256_file_streams(tmp_path):
    blob = np.random.default_rng(7).bytes(3_000_001)
    (tmp_path / "b").write_bytes(blob)
    assert io.sha256_file(tmp_path / "b", chunk_size=4096) == hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# Lazy frame access
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs", [
    ("s.tif", {}),                                # ImageJ hyperstack: memory-mapped
    ("z.tif", {"compression": "zlib"}),           # compressed pages: read page by page
    ("s.npy", None),                              # np.load(mmap_mode="r")
    ("s.npz", None),                              # no random access: full read, then sliced
])
def test_open_lazy_frames(tmp_path, name, kwargs):
    data = _ramp((5, 6, 7))
    path = tmp_path / name
    if kwargs is None:
        io.write(path, io.Image(data, pixel_size=0.2, unit="nm"))
    else:
        tifffile.imwrite(path, data, imagej=not kwargs, resolution=(5.0, 5.0),
                         metadata={"unit": "nm", "axes": "TYX"}, **kwargs)
    lazy = io.open_lazy(path)
    assert lazy.shape == (5, 6, 7) and len(lazy) == 5
    if name in ("s.tif", "s.npy"):  # bounded memory: frames come from a memory map
        assert isinstance(lazy._get(0, 1), np.memmap)
    block = lazy.frames(1, 4)
    assert block.dtype == np.float32 and block.flags.writeable
    np.testing.assert_array_equal(block, data[1:4])
    np.testing.assert_array_equal(lazy[-1], data[-1])
    assert lazy.frames(4, 99).shape == (1, 6, 7)
    np.testing.assert_array_equal(lazy.read().data, data)
    if name in ("s.tif", "s.npz"):
        assert lazy.pixel_size == pytest.approx(0.2) and lazy.unit == "nm"


def test_open_lazy_single_image(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _ramp())
    lazy = io.open_lazy(tmp_path / "a.tif")
    assert lazy.shape == (12, 16) and lazy.n_frames == 1 and lazy.frames(0, 1).shape == (1, 12, 16)


# --------------------------------------------------------------------------------------------
# Real files (../shared/realdata beside the repository; skipped where absent)
# --------------------------------------------------------------------------------------------

def _real(name: str) -> tuple[Path, np.ndarray]:
    path = REALDATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path, np.load(path.with_suffix(".npy"))


def _check(image, shape, pixel_nm, rel=0.01):
    assert image.shape == shape and image.data.dtype == np.float32
    if pixel_nm is None:
        assert image.pixel_size is None
    else:
        assert image.unit == "nm" and image.pixel_size == pytest.approx(pixel_nm, rel=rel)
    json.dumps(image.metadata, allow_nan=False)


@pytest.mark.realdata
def test_real_ser_tia():
    pytest.importorskip("rsciio")
    path, ref = _real("lobato/hrstem_example.ser")
    image = io.read(path)
    _check(image, (1024, 1024), 0.0524)  # README: 52.4 pm/px
    # rosettasciio shows TIA images as TIA does: rows reversed relative to the plain file order.
    np.testing.assert_array_equal(image.data, np.flipud(ref))


@pytest.mark.realdata
def test_real_berkeley_emd():
    path, ref = _real("openNCEM/Acquisition_18.emd")
    image = io.read(path)
    _check(image, (1024, 1024), 0.01225)  # README: 12.25 pm/px
    np.testing.assert_array_equal(image.data, ref)
    assert image.metadata["original"]["microscope"]["dwell time"] == pytest.approx(1e-6)


@pytest.mark.realdata
def test_real_nanonis_sxm():
    path, ref = _real("pynxtools-stm/STM_nanonis_generic_4_5.sxm")
    image = io.read(path)
    _check(image, (256, 256), 4.0 / 256)  # README: 256², 4 x 4 nm
    np.testing.assert_array_equal(image.data, ref[0])  # Z forward
    backward = io.read_sxm(path, direction="backward")
    np.testing.assert_array_equal(backward.data, ref[1][:, ::-1])  # Z backward, mirrored
    np.testing.assert_array_equal(io.read_sxm(path, channel="Current").data, ref[2])


@pytest.mark.realdata
def test_real_imagej_tiff():
    path, ref = _real("r_em_workflows/Tecnai_Osiris_SrTiO3.tif")
    image = io.read(path)
    _check(image, (512, 512), 0.0135)  # README: 13.5 pm/px (ImageJ unit nm + XResolution)
    np.testing.assert_array_equal(image.data, ref)


@pytest.mark.realdata
@pytest.mark.parametrize("name,shape,pixel_nm", [
    ("StatSTEM/ExamplePtIr.mat", (512, 512), 0.01211),
    ("StatSTEM/ExampleCsPbBr3.mat", (241, 246), 0.03109),
    ("StatSTEM/ExamplePb.mat", (291, 341), 0.022),
])
def test_real_statstem_mat(name, shape, pixel_nm):
    path, ref = _real(name)
    image = io.read(path)
    _check(image, shape, pixel_nm, rel=1e-6)
    np.testing.assert_array_equal(image.data, ref.astype(np.float32))


@pytest.mark.realdata
@pytest.mark.parametrize("name,shape", [("noise2atom/noisy_512x512.png", (512, 512)),
                                        ("noise2atom/noisy_128x128.png", (128, 128))])
def test_real_png(name, shape):
    path, ref = _real(name)
    image = io.read(path)
    _check(image, shape, None)
    np.testing.assert_array_equal(image.data, ref)


@pytest.mark.realdata
def test_real_round_trip_keeps_calibration(tmp_path):
    path, _ = _real("r_em_workflows/Tecnai_Osiris_SrTiO3.tif")
    image = io.read(path)
    out = io.write(tmp_path / "copy.tif", image.with_data(image.data[:64, :64]))
    size, unit, _, dtype = _imagej_pixel_size(out)
    assert unit == "nm" and dtype == np.float32 and size == pytest.approx(image.pixel_size, rel=1e-6)
