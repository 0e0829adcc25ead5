"""`jaxdn train` → resume → `jaxdn denoise --weights` → `jaxdn evaluate` for the trained models (U-Net, stripes, Noise2Atom), from the CLI.

Tiny configs (a few steps on small shapes); what is checked: the weights file and logs exist, a
second identical command resumes at the end and does not train again, a longer run continues from
the checkpoint, the trained weights denoise a file through the main CLI, and the evaluator writes
its table with finite numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _private_xla_cache(tmp_path_factory):
    """The CLI enables a persistent XLA cache; keep it out of the user's ~/.cache during tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("JAXDN_CACHE_DIR", str(tmp_path_factory.mktemp("xla_cache")))
    yield
    mp.undo()


def _train(argv, capsys):
    """`jaxdn train ARGV` in-process (through the main CLI, so the persistent XLA cache serves resumes)."""
    from jaxdn.cli import main
    rc = main(["train", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _train_steps(workdir: Path) -> list[int]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if json.loads(line)["kind"] == "train"]


@pytest.mark.parametrize("method, config, weights_name", [
    ("unet-gsp", "configs/unet.py:tiny", "unet_gsp.npz"),
    ("stripes", "configs/stripes.py:tiny", "stripes.npz"),
])
def test_train_resume_denoise_evaluate(method, config, weights_name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    work = tmp_path / "run"
    base = [method, "--config", config, "--workdir", str(work), "-q"]
    first = _train(base + ["--set", "steps=4"], capsys)
    assert first["steps_run"] == 4 and np.isfinite(first["loss"])
    for name in (weights_name, "metrics.jsonl", "loss.png", "config.json"):
        assert (work / name).is_file(), name
    weights_before = dict(np.load(work / weights_name))

    # The same command again: nothing left to do, weights unchanged.
    again = _train(base + ["--set", "steps=4"], capsys)
    assert again["steps_run"] == 0 and again["resumed_from"] == 4
    after = dict(np.load(work / weights_name))
    assert weights_before.keys() == after.keys()
    assert all(np.array_equal(weights_before[k], after[k]) for k in after if not k.startswith("__"))

    # A longer run continues from the step-4 checkpoint (only steps 5, 6 are new).
    longer = _train(base + ["--set", "steps=6"], capsys)
    assert longer["resumed_from"] == 4 and longer["steps_run"] == 2
    assert max(_train_steps(work)) == 6

    # The trained weights denoise a file through the main CLI.
    from jaxdn.cli import main as jaxdn_main
    src = tmp_path / "in.tif"
    img = np.random.default_rng(0).uniform(0, 1, (40, 52)).astype(np.float32)
    tifffile.imwrite(src, img)
    out = tmp_path / "out"
    assert jaxdn_main(["denoise", str(src), "--method", method, "--weights", str(work / weights_name),
                       "-o", str(out), "-q"]) == 0
    result = tifffile.imread(next(out.glob("*.tif")))
    assert result.shape == img.shape and np.isfinite(result).all()
    assert np.array_equal(tifffile.imread(src), img)  # input untouched

    # The evaluator writes its table from the same weights.
    from jaxdn.evaluate import main as evaluate_main
    capsys.readouterr()
    ev = tmp_path / "eval"
    assert evaluate_main([method, "--weights", str(work / weights_name), "-o", str(ev), "--quick", "-q"]) == 0
    tables = list(ev.glob("*.json"))
    assert tables, "no evaluation table written"
    numbers = [v for v in _flatten(json.loads(tables[0].read_text())) if isinstance(v, float)]
    assert numbers and all(np.isfinite(numbers))


def _flatten(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _flatten(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _flatten(v)
    else:
        yield obj


def test_noise2atom_train_from_movie_resume_denoise_evaluate(tmp_path, capsys, monkeypatch):
    """`jaxdn train noise2atom --data MOVIE --frames N`, resume, `denoise --weights WORKDIR`, `evaluate`."""
    monkeypatch.chdir(REPO)
    yy, xx = np.mgrid[0:64, 0:64]
    blobs = np.exp(-((yy % 10 - 5) ** 2 + (xx % 10 - 5) ** 2) / 4.0)
    movie = np.random.default_rng(1).poisson(3 * blobs[None].repeat(6, 0)).astype(np.float32)
    src = tmp_path / "movie.tif"
    tifffile.imwrite(src, movie)
    work = tmp_path / "n2a"
    base = ["noise2atom", "--config", "configs/noise2atom.py:tiny", "--workdir", str(work), "-q",
            "--data", str(src), "--frames", "5"]
    first = _train(base + ["--set", "steps=2"], capsys)
    assert first["steps_run"] == 2 and np.isfinite(first["critic_loss"]) and np.isfinite(first["gen_loss"])
    assert (work / "noise2atom.npz").is_file() and (work / "loss.png").is_file()
    meta = json.loads(str(np.load(work / "noise2atom.npz")["__meta__"]))
    assert meta["frames"] == 5 and meta["data"] == str(src)
    longer = _train(base + ["--set", "steps=3"], capsys)
    assert longer["resumed_from"] == 2 and longer["steps_run"] == 1

    from jaxdn.cli import main as jaxdn_main
    out = tmp_path / "out"
    assert jaxdn_main(["denoise", str(src), "--method", "noise2atom", "--weights", str(work), "-o", str(out),
                       "-q"]) == 0
    den = tifffile.imread(next(out.glob("*.tif")))
    assert den.shape == movie.shape and np.isfinite(den).all()
    assert np.array_equal(tifffile.imread(src), movie)

    from jaxdn.evaluate import main as evaluate_main
    ev = tmp_path / "eval"
    assert evaluate_main(["noise2atom", "--weights", str(work), "-o", str(ev), "--quick", "-q"]) == 0
    r = json.loads((ev / "noise2atom_eval.json").read_text())
    for name in ("flat", "gradient"):
        q = r[name]
        assert 0.0 < q["css_clean"] <= 1.0 and np.isfinite(q["psnr_denoised"])
        assert q["psnr_gauss"] > q["psnr_noisy"]  # the tuned Gaussian reference really filters
        assert 0.0 <= q["atoms_denoised"]["f1"] <= 1.0
