"""CLI contract and the bad-input table (issue: Foundation). Uses stand-in methods so it tests the
plumbing (I/O, safety, provenance, exit codes) independently of any denoiser."""
import hashlib
import json
import os

import numpy as np
import pytest
import tifffile

from jaxdn import api, cli, io


@pytest.fixture(autouse=True)
def fake_methods(monkeypatch):
    monkeypatch.setitem(api.METHODS, "identity", ("_fake_methods", "identity", {}))
    monkeypatch.setitem(api.METHODS, "smooth", ("_fake_methods", "smooth", {}))
    monkeypatch.setitem(api.METHODS, "crash", ("_fake_methods", "crash", {}))
    monkeypatch.setitem(api.METHODS, "future", ("jaxdn.methods.not_written_yet", "denoise", {}))


def write_tif(path, data, pixel_size=0.05, unit="nm"):
    img = io.Image(data=np.asarray(data, np.float32), pixel_size=pixel_size, unit=unit, metadata={}, source=None)
    return io.write(path, img)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def noisy_tif(tmp_path):
    rng = np.random.default_rng(0)
    return write_tif(tmp_path / "in.tif", rng.random((32, 40)))


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert "jaxdn" in capsys.readouterr().out


def test_denoise_writes_calibrated_float32_with_sidecar(tmp_path, noisy_tif, capsys):
    code, out, err = run(capsys, "denoise", str(noisy_tif), "-o", str(tmp_path / "out"), "-m", "smooth", "--seed", "3")
    assert code == 0, err
    out_path = tmp_path / "out" / "in_denoised.tif"
    res = io.read(out_path)
    assert res.data.dtype == np.float32 and res.data.shape == (32, 40)
    assert res.pixel_size == pytest.approx(0.05, rel=1e-6) and res.unit == "nm"
    with tifffile.TiffFile(out_path) as tf:
        assert tf.pages[0].dtype == np.float32
    side = json.loads((tmp_path / "out" / "in_denoised.tif.json").read_text())["provenance"]
    assert side["method"] == "smooth" and side["seed"] == 3
    assert side["input_sha256"] == sha(noisy_tif)
    assert side["jaxdn_version"]
    from scipy import ndimage
    np.testing.assert_allclose(res.data, ndimage.gaussian_filter(io.read(noisy_tif).data, 1), rtol=1e-6)


def test_stack_same_shape_and_output_option(tmp_path, capsys):
    stack = write_tif(tmp_path / "movie.tif", np.random.default_rng(1).random((3, 20, 24)))
    target = tmp_path / "x" / "custom.npy"
    code, _, err = run(capsys, "denoise", str(stack), "--output", str(target), "-m", "identity", "-q")
    assert code == 0, err
    assert np.load(target).shape == (3, 20, 24)


def test_unimplemented_method_refused_before_anything(tmp_path, noisy_tif, capsys):
    code, _, err = run(capsys, "denoise", str(noisy_tif), "-o", str(tmp_path / "o"), "-m", "future")
    assert code == 2 and "not implemented" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,content,expect", [
    ("missing.tif", None, "missing.tif"),
    ("empty.tif", b"", "empty.tif"),
    ("garbage.tif", b"not a tiff at all" * 10, "garbage.tif"),
    ("image.xyz", b"123", ".xyz"),
])
def test_bad_files_one_line_exit_2(tmp_path, capsys, name, content, expect):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "denoise", str(path), "-o", str(tmp_path / "o"), "-m", "identity")
    assert code == 2
    assert err.strip().count("\n") == 0 and expect in err and "Traceback" not in err


def test_nonfinite_refused_or_filled_with_local_median(tmp_path, capsys):
    data = np.arange(20 * 20, dtype=np.float32).reshape(20, 20)
    data[5, 7] = np.nan
    data[10, 10] = np.inf
    path = write_tif(tmp_path / "nan.tif", data)
    code, _, err = run(capsys, "denoise", str(path), "-o", str(tmp_path / "o"), "-m", "identity")
    assert code == 2 and "NaN/inf" in err and "--fill-nonfinite" in err
    code, out, err = run(capsys, "denoise", str(path), "-o", str(tmp_path / "o"), "-m", "identity", "--fill-nonfinite")
    assert code == 0, err
    assert "replaced 2" in out
    res = io.read(tmp_path / "o" / "nan_denoised.tif").data
    assert np.isfinite(res).all()
    ref = np.nanmedian(np.where(np.isfinite(data), data, np.nan)[4:7, 6:9])
    assert res[5, 7] == pytest.approx(ref)


def test_rgb_refused_unless_channel(tmp_path, capsys):
    import imageio.v3 as iio
    rgb = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    path = tmp_path / "color.png"
    iio.imwrite(path, rgb)
    code, _, err = run(capsys, "denoise", str(path), "-o", str(tmp_path / "o"), "-m", "identity")
    assert code == 2 and "--channel" in err
    code, _, err = run(capsys, "denoise", str(path), "-o", str(tmp_path / "o"), "-m", "identity", "--channel", "1")
    assert code == 0, err
    np.testing.assert_array_equal(io.read(tmp_path / "o" / "color_denoised.tif").data, rgb[..., 1].astype(np.float32))


def test_integer_input_converted_without_overflow(tmp_path, capsys):
    data = np.array([[0, 65535] * 10] * 20, dtype=np.uint16)
    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, data)
    code, _, err = run(capsys, "denoise", str(path), "-o", str(tmp_path / "o"), "-m", "identity")
    assert code == 0, err
    res = io.read(tmp_path / "o" / "u16_denoised.tif").data
    assert res.dtype == np.float32 and res.max() == 65535.0 and res.min() == 0.0


def test_too_small_image(tmp_path, capsys):
    path = write_tif(tmp_path / "tiny.tif", np.ones((8, 8)))
    code, _, err = run(capsys, "denoise", str(path), "-o", str(tmp_path / "o"), "-m", "identity")
    assert code == 2 and "at least" in err


def test_existing_output_refused_then_overwritten(tmp_path, noisy_tif, capsys):
    out = tmp_path / "o" / "in_denoised.tif"
    out.parent.mkdir()
    out.write_bytes(b"precious")
    code, _, err = run(capsys, "denoise", str(noisy_tif), "-o", str(out.parent), "-m", "identity")
    assert code == 2 and "--overwrite" in err and out.read_bytes() == b"precious"
    code, _, err = run(capsys, "denoise", str(noisy_tif), "-o", str(out.parent), "-m", "identity", "--overwrite")
    assert code == 0 and io.read(out).data.shape == (32, 40)


def test_output_equal_to_input_always_refused(tmp_path, noisy_tif, capsys):
    before = sha(noisy_tif)
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "denoise", str(noisy_tif), "--output", str(noisy_tif), "-m", "identity", *extra)
        assert code == 2 and "input" in err
    assert sha(noisy_tif) == before


def test_crash_leaves_no_partial_output_and_input_intact(tmp_path, noisy_tif, capsys):
    before = sha(noisy_tif)
    with pytest.raises(RuntimeError):
        cli.main(["denoise", str(noisy_tif), "-o", str(tmp_path / "o"), "-m", "crash"])
    assert not any((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True
    assert sha(noisy_tif) == before


def test_folder_with_corrupt_file_skips_it_and_exits_1(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_tif(folder / "a.tif", np.random.default_rng(0).random((20, 20)))
    (folder / "b.tif").write_bytes(b"corrupt")
    write_tif(folder / "c.tif", np.random.default_rng(1).random((20, 20)))
    code, _, err = run(capsys, "denoise", str(folder), "-o", str(tmp_path / "o"), "-m", "identity", "-q")
    assert code == 1 and "b.tif" in err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tif")) == ["a_denoised.tif", "c_denoised.tif"]


def test_report_png(tmp_path, noisy_tif, capsys):
    code, out, err = run(capsys, "denoise", str(noisy_tif), "-o", str(tmp_path / "o"), "-m", "smooth", "--report")
    assert code == 0, err
    png = tmp_path / "o" / "in_denoised_report.png"
    import imageio.v3 as iio
    img = iio.imread(png)
    assert img.ndim == 3 and img.shape[1] > 3 * img.shape[0]


def test_info(tmp_path, noisy_tif, capsys):
    code, out, _ = run(capsys, "info", str(noisy_tif))
    assert code == 0 and "(32, 40)" in out and "0.05 nm/px" in out and "float32" in out


def test_api_accepts_arrays_and_images(noisy_tif):
    img = io.read(noisy_tif)
    out = api.denoise(img, method="identity")
    assert isinstance(out, io.Image) and out.pixel_size == img.pixel_size
    arr = api.denoise(np.arange(400, dtype=np.int64).reshape(20, 20), method="identity")
    assert arr.dtype == np.float32 and arr[19, 19] == 399.0
    with pytest.raises(Exception, match="unknown method"):
        api.denoise(arr, method="nope")


def test_unknown_method_is_an_argparse_error(tmp_path, noisy_tif, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["denoise", str(noisy_tif), "-m", "nope"])
    assert e.value.code == 2


def test_option_not_applying_to_method_is_refused(tmp_path, noisy_tif, capsys):
    code, _, err = run(capsys, "denoise", str(noisy_tif), "-o", str(tmp_path / "o"), "-m", "identity", "--patch-size", "7")
    assert code == 2 and "--patch-size" in err and "identity" in err
    with pytest.warns(UserWarning, match="memory budget"):
        code, _, err = run(capsys, "denoise", str(noisy_tif), "-o", str(tmp_path / "o2"), "-m", "identity",
                           "--memory-budget", "1G")
    assert code == 0, err


def test_simulate_writes_calibrated_pairs(tmp_path, capsys):
    code, out, err = run(capsys, "simulate", "stem", "-n", "2", "--size", "32", "-o", str(tmp_path), "--dose", "200")
    assert code == 0, err
    noisy, clean = io.read(tmp_path / "stem_0001_noisy.tif"), io.read(tmp_path / "stem_0001_clean.tif")
    assert noisy.shape == clean.shape == (32, 32) and noisy.pixel_size == pytest.approx(0.02)
    assert 0.0 <= clean.data.min() and clean.data.max() <= 1.0
    # Poisson counts at 200 e/Å² and 0.2 Å pixels: mean count ≈ 8 × mean clean intensity
    assert noisy.data.mean() == pytest.approx(8.0 * clean.data.mean(), rel=0.25)


def test_bundled_example_is_reproducible(tmp_path):
    from jaxdn import batch, simulate_cli
    made = simulate_cli.make_example(tmp_path / "ex.tif")
    shipped = io.read(batch.example_path())
    np.testing.assert_allclose(io.read(made).data, shipped.data, rtol=1e-5, atol=1e-4)
    assert shipped.pixel_size == pytest.approx(0.02) and shipped.data.shape == (4, 128, 128)


def test_report_rescales_scale_free_outputs_only():
    from jaxdn.report import on_input_scale
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 1, (32, 32)).astype(np.float32)
    noisy = (1000 * clean + 200 + rng.normal(0, 20, clean.shape)).astype(np.float32)
    shown, rescaled = on_input_scale(noisy, clean)          # an atom map in [0, 1]
    assert rescaled
    np.testing.assert_allclose(shown, 1000 * clean + 200, atol=5)
    same = (1000 * clean + 200).astype(np.float32)          # already on the input's scale
    shown, rescaled = on_input_scale(noisy, same)
    assert not rescaled and np.array_equal(shown, same)


def test_dash_o_with_a_file_name_writes_that_file_for_one_input_and_refuses_several(tmp_path, noisy_tif, capsys):
    target = tmp_path / "result.tif"
    code, _, err = run(capsys, "denoise", str(noisy_tif), "-o", str(target), "-m", "identity")
    assert code == 0, err
    assert target.is_file() and "is a file name" in err
    np.testing.assert_array_equal(io.read(target).data, io.read(noisy_tif).data)
    assert (tmp_path / "result.tif.json").is_file()
    # an existing folder named like a file is still a folder
    folder = tmp_path / "looks.tif"
    folder.mkdir()
    code, _, err = run(capsys, "denoise", str(noisy_tif), "-o", str(folder), "-m", "identity")
    assert code == 0 and (folder / "in_denoised.tif").is_file()
    other = write_tif(tmp_path / "other.tif", np.ones((16, 16)))
    code, _, err = run(capsys, "denoise", str(noisy_tif), str(other), "-o", str(tmp_path / "both.tif"), "-m", "identity")
    assert code != 0 and "looks like a file name" in err and not (tmp_path / "both.tif").exists()
