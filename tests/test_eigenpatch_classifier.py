"""Eigenpatch classifier (REUCID): architecture, shapes, jit, weights round trip, shipped weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxdn.errors import InputError, MethodNotAvailable  # noqa: E402
from jaxdn.models import eigenpatch_classifier as ec  # noqa: E402
from jaxdn.weights_io import save_weights, shipped  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return ec.EigenpatchClassifier(rngs=nnx.Rngs(0))


def _inputs(b, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(b, 25, 25, 1)).astype(np.float32) / 25,
            rng.uniform(size=(b, 1)).astype(np.float32))


def test_architecture_is_the_papers(model):
    shapes = {"/".join(map(str, k)): v.shape for k, v in nnx.to_flat_state(nnx.state(model))}
    assert shapes == {
        "conv1/kernel": (5, 5, 1, 14), "conv1/bias": (14,),
        "conv2/kernel": (3, 3, 14, 15), "conv2/bias": (15,),
        "fc3/kernel": (16, 16), "fc3/bias": (16,),
        "fc4/kernel": (16, 16), "fc4/bias": (16,),
        "out/kernel": (16, 1), "out/bias": (1,),
    }
    assert sum(int(np.prod(s)) for s in shapes.values()) == 2830


def test_logits_shape_dtype_and_probabilities_range(model):
    x, e = _inputs(5)
    logits = model(jnp.asarray(x), jnp.asarray(e))
    assert logits.shape == (5,) and logits.dtype == jnp.float32
    probs = ec.probabilities(model, jnp.asarray(x).reshape(1, 5, 25, 25, 1), jnp.asarray(e).reshape(1, 5, 1))
    assert probs.shape == (1, 5)
    np.testing.assert_allclose(np.asarray(probs)[0], np.asarray(jax.nn.sigmoid(logits)), rtol=1e-6)
    assert np.all((np.asarray(probs) >= 0) & (np.asarray(probs) <= 1))


def test_eigenvalue_enters_the_output(model):
    x, _ = _inputs(2)
    a = model(jnp.asarray(x), jnp.zeros((2, 1)))
    b = model(jnp.asarray(x), jnp.ones((2, 1)))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_predictor_compiles_once_per_shape(model, monkeypatch):
    traces = []
    orig = ec.probabilities

    def counting(*a):
        traces.append(1)
        return orig(*a)

    monkeypatch.setattr(ec, "probabilities", counting)
    predict = ec.make_predictor(model)
    x, e = _inputs(6)
    p1 = predict(x.reshape(2, 3, 25, 25, 1), e.reshape(2, 3, 1))
    p2 = predict(x.reshape(2, 3, 25, 25, 1) * 2, e.reshape(2, 3, 1) * 0.5)
    assert p1.shape == (2, 3) and p1.dtype == jnp.float32
    assert not np.allclose(np.asarray(p1), np.asarray(p2))
    assert len(traces) == 1


def test_weights_round_trip(tmp_path, model):
    path = save_weights(tmp_path / "w.npz", model, meta={"k": 1})
    predict = ec.load(path)
    x, e = _inputs(4)
    np.testing.assert_allclose(np.asarray(predict(x, e)),
                               np.asarray(ec.probabilities(model, jnp.asarray(x), jnp.asarray(e))), atol=1e-6)


def test_load_rejects_wrong_architecture(tmp_path):
    other = ec.EigenpatchClassifier(conv_features=(8, 15), rngs=nnx.Rngs(0))
    path = save_weights(tmp_path / "w.npz", other)
    with pytest.raises(InputError, match="shape|match"):
        ec.load(path)


def test_load_default_missing_weights_is_a_clear_error(monkeypatch, tmp_path):
    import jaxdn.weights_io as wio
    monkeypatch.setattr(wio, "shipped", lambda name: tmp_path / name)
    ec.load_default.cache_clear()
    try:
        with pytest.raises(MethodNotAvailable, match="reucid_classifier.npz"):
            ec.load_default()
    finally:
        ec.load_default.cache_clear()


@pytest.mark.skipif(not shipped(ec.WEIGHTS_NAME).is_file(), reason="shipped weights not built yet")
def test_shipped_weights_load_and_rank_order():
    """The shipped classifier keeps the leading, high-eigenvalue structured components."""
    predict = ec.load_default()
    x, e = _inputs(3)
    p = np.asarray(predict(x, e))
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
    from jaxdn.weights_io import read_meta
    meta = read_meta(shipped(ec.WEIGHTS_NAME))
    assert "config" in meta and "metrics" in meta and "seed" in meta
    assert shipped(ec.WEIGHTS_NAME).stat().st_size < 1_000_000


# ---- training (jaxdn.reucid.train_classifier) on a small synthetic label set -----------------

def _synthetic_dataset(config, n=6, rank=25, seed=0):
    """Label data in the `labels.build_dataset` layout: structured leading eigenpatches, noise after."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:25, 0:25] / 24.0
    alpha = rng.integers(3, 12, size=n)
    pats = np.empty((n, 1, rank, 25, 25, 1), np.float32)
    for i in range(n):
        for r in range(rank):
            if r < alpha[i]:
                f = (r % 4) + 1
                pat = np.cos(np.pi * f * xx) * np.cos(np.pi * (r // 4) * yy)
            else:
                pat = rng.normal(size=(25, 25))
            pats[i, 0, r, :, :, 0] = pat / np.linalg.norm(pat)
    ev = np.sort(rng.uniform(0.01, 1, size=(n, 1, rank)), axis=-1)[..., ::-1]
    ev = (ev / ev[..., :1])[..., None].astype(np.float32)
    ar = np.arange(1, rank + 1)
    psnr = (30.0 - np.abs(ar[None, None, :] - alpha[:, None, None]) * 0.5).astype(np.float32)
    ief = (10 ** ((psnr - 20.0) / 10)).astype(np.float32)
    return {"patches": pats, "eigvals": ev, "psnr": psnr, "ief": ief,
            "dose": np.full(n, 1000.0, np.float32), "patch_size": np.full(n, 5, np.int32),
            "size": np.full(n, 64, np.int32), "kind": np.zeros(n, np.int32),
            "psnr_noisy": np.full(n, 15.0, np.float32)}


def _tiny_config(**kw):
    import dataclasses
    from jaxdn.train.config import load_config
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs/reucid.py:tiny"))
    return dataclasses.replace(cfg, steps=20, checkpoint_every=10, eval_every=10, log_every=10, **kw)


def _seed_workdir(workdir, config):
    from jaxdn.reucid import train_classifier as tc
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(workdir / tc.DATASET_FILE, __meta__=np.asarray(tc._data_meta(config)), **_synthetic_dataset(config))


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "__meta__"}


@pytest.mark.slow  # three short training runs: ~60 s on an idle 2-core CPU
def test_train_tiny_end_to_end_reproducible_and_resumable(tmp_path):
    from jaxdn.reucid import train_classifier as tc
    from jaxdn.weights_io import read_meta
    cfg = _tiny_config()
    a, b = tmp_path / "a", tmp_path / "b"
    _seed_workdir(a, cfg)
    _seed_workdir(b, cfg)
    res = tc.train(cfg, workdir=a, quiet=True)
    w = Path(res["weights"])
    assert w.is_file() and w.stat().st_size < 100_000
    assert (a / "checkpoints").is_dir() and any((a / "checkpoints").iterdir())
    assert 0.0 <= res["eval_accuracy"] <= 1.0 and np.isfinite(res["eval_delta_psnr"])
    meta = read_meta(w)
    assert meta["seed"] == cfg.seed and meta["config"]["label_metric"] == "psnr"
    assert "eval_accuracy" in meta["metrics"]
    assert tc.load_or_build_dataset(cfg, workdir=a)["psnr"].shape == (6, 1, 25)  # the cache is used

    # Interrupted after 10 steps, then resumed to 20: identical to the straight run (and so the
    # first half reproduces it from the seed).
    assert tc.train(cfg, workdir=b, quiet=True, stop_after=10) == {"stopped_at": 10}
    assert not (b / tc.WEIGHTS_FILE).exists()
    res_b = tc.train(cfg, workdir=b, quiet=True)
    assert res_b["resumed_from"] == 10 and res_b["steps_run"] == 10
    wa, wb = _arrays(w), _arrays(res_b["weights"])
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_train_rejects_bad_options(tmp_path):
    from jaxdn.errors import InputError
    from jaxdn.reucid import train_classifier as tc
    with pytest.raises(InputError, match="unknown options"):
        tc.train(_tiny_config(), workdir=tmp_path, bogus=1)
    with pytest.raises(InputError, match="label_metric"):
        tc.train(_tiny_config(label_metric="ssim"), workdir=tmp_path)


def test_config_variants():
    from jaxdn.train.config import load_config
    root = Path(__file__).resolve().parents[1]
    paper = load_config(str(root / "configs/reucid.py:paper"))
    assert paper.label_metric == "edited_ief" and paper.c == 0.64
    default = load_config(str(root / "configs/reucid.py"))
    assert default.rank == 25 and default.eval_fraction == 0.2
    assert 8 * default.n_images * default.rank >= 4200  # at least the paper's data set size
    with pytest.raises((KeyError, InputError), match="unknown variant"):
        load_config(str(root / "configs/reucid.py:nope"))
