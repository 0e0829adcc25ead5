"""STM stripe autoencoder, its data pipeline and the classical row-alignment peer."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdn.classical import align_rows_median_diff
from jaxdn.errors import MethodNotAvailable
from jaxdn.models.stripe_autoencoder import StripeAutoencoder


def test_parameter_count_is_the_thesis_network():
    # conv(1→32) + 3 × conv(32→32) + conv(32→1), 3×3 kernels with biases.
    hand = (9 * 1 * 32 + 32) + 3 * (9 * 32 * 32 + 32) + (9 * 32 * 1 + 1)
    model = nnx.eval_shape(lambda: StripeAutoencoder(rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == hand == 28_353


@pytest.mark.parametrize("shape", [(2, 13, 22), (1, 33, 31), (1, 4, 4)])
def test_any_size_and_sigmoid_range(shape):
    model = StripeAutoencoder(features=4, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), shape + (1,))
    y = model(x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(y.min()) > 0.0 and float(y.max()) < 1.0


def test_im2col_thin_layers_equal_convs():
    a = StripeAutoencoder(features=4, rngs=nnx.Rngs(0))
    b = StripeAutoencoder(features=4, im2col_thin=True, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(2), (2, 20, 24, 1))
    np.testing.assert_allclose(a(x), b(x), atol=1e-6)


def test_few_steps_of_training_reduce_the_loss():
    import optax
    from jaxdn.losses import mse
    from jaxdn.train.loop import make_supervised_step, split_model_and_optimizer

    graphdef, state = split_model_and_optimizer(StripeAutoencoder(features=8, rngs=nnx.Rngs(0)), optax.adam(1e-2))
    yy, xx = jnp.meshgrid(jnp.linspace(0, 1, 16), jnp.linspace(0, 1, 16), indexing="ij")
    clean = jnp.broadcast_to((0.2 + 0.6 * yy * xx)[None, ..., None], (4, 16, 16, 1))
    step = jax.jit(make_supervised_step(graphdef, lambda m, b, k: mse(m(b["x"]), b["x"])))
    losses = []
    for i in range(25):
        state, metrics = step(state, {"x": clean}, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0]


def test_row_alignment_removes_pure_row_offsets_exactly():
    rng = np.random.default_rng(0)
    g = rng.random(50)                      # any column profile
    o = rng.normal(0, 3.0, 40)              # any row offsets
    img = (g[None, :] + o[:, None]).astype(np.float32)
    out = align_rows_median_diff(img)
    expected = g[None, :] - g.mean() + img.mean()
    np.testing.assert_allclose(out, np.broadcast_to(expected, img.shape), atol=1e-5)
    stack = align_rows_median_diff(np.stack([img, img * 2]))
    np.testing.assert_allclose(stack[0], out, atol=1e-5)


def test_row_alignment_on_striped_smooth_image_improves_psnr():
    from skimage.metrics import peak_signal_noise_ratio as psnr
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    clean = (0.5 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)).astype(np.float32)
    rng = np.random.default_rng(1)
    offsets = np.zeros(64)
    rows = rng.choice(64, 12, replace=False)
    offsets[rows] = rng.normal(0, 0.2, 12)   # scan-line streaks: whole rows offset
    noisy = (clean + offsets[:, None]).astype(np.float32)
    fixed = align_rows_median_diff(noisy)
    fixed = fixed - fixed.mean() + clean.mean()
    assert psnr(clean, fixed, data_range=1.0) > psnr(clean, noisy, data_range=1.0) + 10


def test_rotate_crop_identity_and_augment_range():
    from jaxdn.train.data_supervised import augment, rotate_crop, source_size
    img = jax.random.uniform(jax.random.key(0), (40, 40))
    np.testing.assert_allclose(rotate_crop(img, 0.0, out=20), img[10:30, 10:30], atol=1e-5)
    n = source_size(32)
    assert n >= 32 * (np.cos(np.radians(10)) + np.sin(np.radians(10)))
    out = augment(jax.random.key(1), jax.random.uniform(jax.random.key(2), (n, n)), out=32)
    assert out.shape == (32, 32)
    assert abs(float(out.min())) < 1e-6 and abs(float(out.max()) - 1.0) < 1e-6


@pytest.mark.slow  # compiles the whole STM simulator + augmentation pipeline (minutes on a busy CPU)
def test_stripes_batch_shapes_and_stripes_present():
    pytest.importorskip("jaxdn.simulate.stm")
    from jaxdn.train.data_supervised import stripes_batch
    noisy, clean = stripes_batch(jax.random.key(0), batch=4, size=32, kinds=("hex", "random"),
                                 levels=((0.1, 2), (0.3, 4)))
    assert noisy.shape == clean.shape == (4, 32, 32, 1)
    assert 0.0 <= float(clean.min()) and float(clean.max()) <= 1.0
    changed_rows = np.any(np.asarray(noisy != clean)[..., 0], axis=-1)  # (4, 32)
    assert changed_rows.any(axis=1).all()
    assert not changed_rows.all()


def test_methods_stripes_peer_and_missing_weights(monkeypatch, tmp_path):
    import jaxdn.weights_io as wio
    from jaxdn.methods import stripes
    x = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    y = stripes.denoise(x, method="row-median")
    assert y.shape == x.shape and y.dtype == np.float32
    monkeypatch.setattr(wio, "shipped", lambda name: tmp_path / name)
    with pytest.raises(MethodNotAvailable, match="jaxdn train stripes"):
        stripes.denoise(x)


def test_denoise_with_weights_file_round_trip(tmp_path):
    from jaxdn.methods.stripes import denoise
    from jaxdn.weights_io import load_weights, save_weights
    model = StripeAutoencoder(features=4, rngs=nnx.Rngs(5))
    path = save_weights(tmp_path / "stripes.npz", model, meta={"config": {"model": {"features": 4}}})
    loaded = load_weights(path, lambda: StripeAutoencoder(features=4, rngs=nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.key(6), (1, 30, 26, 1))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    img = np.asarray(x[0, ..., 0]) * 5 - 1
    y = denoise(img, weights=path, tile=32, overlap=8, batch_size=2)
    assert y.shape == img.shape and y.dtype == np.float32
    assert img.min() - 1e-4 <= y.min() and y.max() <= img.max() + 1e-4  # sigmoid maps back into range
