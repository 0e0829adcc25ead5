"""The paper-faithful NumPy/scikit-learn REUCID peer against jaxdn (each checks the other)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("sklearn")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _peer():
    spec = importlib.util.spec_from_file_location("reucid_numpy_peer", ROOT / "benchmarks/peers/reucid_numpy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


peer = _peer()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from jaxdn.models.eigenpatch_classifier import EigenpatchClassifier
    from jaxdn.weights_io import save_weights
    model = EigenpatchClassifier(rngs=nnx.Rngs(3))
    # Non-zero biases so every term of the forward pass is exercised.
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if var.value.ndim == 1:
            var.value = jnp.linspace(-0.3, 0.3, var.value.shape[0])
    return model, save_weights(tmp_path_factory.mktemp("w") / "w.npz", model)


def test_numpy_classifier_forward_equals_flax(weights):
    from jaxdn.models.eigenpatch_classifier import probabilities
    model, path = weights
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 25, 25, 1)).astype(np.float32) * 0.3
    e = rng.uniform(size=(7, 1)).astype(np.float32)
    got = peer.classifier_forward(peer.load_classifier(path), x, e)
    want = np.asarray(probabilities(model, jnp.asarray(x), jnp.asarray(e)))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == (7,)


def test_keep_count_rule_matches_jaxdn():
    pipeline = pytest.importorskip("jaxdn.reucid.pipeline")
    probs = np.array([[0.9, 0.8, 0.2, 0.9], [0.1, 0.9, 0.9, 0.9], [0.6, 0.6, 0.6, 0.6], [0.5, 0.49, 1, 1]])
    want = [2, 1, 4, 1]
    assert [peer.keep_count(p) for p in probs] == want
    np.testing.assert_array_equal(np.asarray(pipeline.keep_count(jnp.asarray(probs))), want)


def test_terrain_matches_jaxdn_and_brute_force():
    terrain = pytest.importorskip("jaxdn.reucid.terrain")
    rng = np.random.default_rng(1)
    p, shape = 5, (17, 13)
    mask = rng.uniform(size=(shape[0] - p + 1, shape[1] - p + 1)) < 0.4
    brute = np.zeros(shape)
    for i, j in zip(*np.nonzero(mask)):
        brute[i:i + p, j:j + p] += 1
    np.testing.assert_array_equal(peer.patch_terrain(mask, p, shape), brute)
    np.testing.assert_allclose(np.asarray(terrain.patch_terrain(jnp.asarray(mask), p, shape)), brute)


def _test_image():
    from jaxdn.reucid import labels
    clean, noisy = labels.simulate_pair(jax.random.key(7), 2000.0, kind="haadf", size=64)
    return np.asarray(clean), np.asarray(noisy)


def test_peer_equals_jaxdn_pipeline_same_p_and_n_keep():
    pipeline = pytest.importorskip("jaxdn.reucid.pipeline")
    clean, noisy = _test_image()
    p, k = 7, 5
    ours = np.asarray(pipeline.denoise(noisy, patch_size=p, n_keep=k, n_stacks=1))
    theirs = peer.denoise(noisy, patch_size=p, n_keep=k, n_stacks=1)
    assert theirs.dtype == np.float64 and theirs.shape == noisy.shape
    rng = float(clean.max() - clean.min())
    agreement = 10 * np.log10(rng**2 / np.mean((ours - theirs) ** 2))
    assert agreement > 40, f"jaxdn vs NumPy peer differ: {agreement:.1f} dB"
    # Both denoise (not a trivial agreement): better than the noisy input.
    mse = lambda a: np.mean((a - clean) ** 2)
    assert mse(ours) < 0.7 * mse(noisy) and mse(theirs) < 0.7 * mse(noisy)
    # float32 peer ≈ float64 peer.
    t32 = peer.denoise(noisy, patch_size=p, n_keep=k, dtype=np.float32)
    assert t32.dtype == np.float32
    np.testing.assert_allclose(t32, theirs, atol=1e-4)


def test_peer_with_classifier_weights_runs(weights):
    _, path = weights
    _, noisy = _test_image()
    out = peer.denoise(noisy, weights_path=path, patch_size=7, n_stacks=2, seed=1)
    assert out.shape == noisy.shape and np.isfinite(out).all()
    assert peer.estimate_patch_size(noisy) % 2 == 1
