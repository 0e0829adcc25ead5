"""Eigenpatch classifier (REUCID): architecture, shapes, jit, weights round trip, shipped weights."""
from __future__ import annotations

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
