"""TEM U-Net: shapes, ranges, parameter count, im2col equivalence, training, weights, inference."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdn.errors import MethodNotAvailable
from jaxdn.models.unet import UNet, conv3x3_im2col

TINY = (4, 8, 8)


def _hand_count(widths, cin=1, cout=1):
    """Parameters of the paper's U-Net counted by hand: conv k·k·in·out + out, BN scale + bias."""
    c1, c2, c3 = widths
    conv = lambda i, o, k=3: k * k * i * o + o
    block = lambda i, o: conv(i, o) + conv(o, o) + 2 * (2 * o)  # two convs, two BN (scale, bias)
    return (block(cin, c1) + block(c1, c2) + block(c2, c3) + block(c3 + c2, c2) + block(c2 + c1, c1)
            + conv(c1, cout, 1))


def _n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_parameter_count_matches_hand_count():
    for widths in [(32, 64, 128), (16, 32, 64)]:
        abstract = nnx.eval_shape(lambda: UNet(widths=widths, rngs=nnx.Rngs(0)))
        assert _n_params(abstract) == _hand_count(widths)
    assert _hand_count((32, 64, 128)) == 472_257


@pytest.mark.parametrize("shape", [(2, 13, 22), (1, 64, 64), (1, 5, 7)])
def test_output_shape_odd_sizes_and_relu_range(shape):
    model = UNet(widths=TINY, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), shape + (1,))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        y = model(x)
        assert y.shape == x.shape and y.dtype == jnp.float32
        assert float(y.min()) >= 0.0


def test_im2col_first_layer_equals_conv():
    x = jax.random.normal(jax.random.key(2), (2, 9, 11, 3))
    conv = nnx.Conv(3, 5, (3, 3), padding="SAME", rngs=nnx.Rngs(3))
    np.testing.assert_allclose(conv3x3_im2col(x, conv.kernel[...], conv.bias[...]), conv(x), atol=1e-5)
    a = UNet(widths=TINY, rngs=nnx.Rngs(0)); a.eval()
    b = UNet(widths=TINY, im2col_first=True, rngs=nnx.Rngs(0)); b.eval()
    xi = jax.random.uniform(jax.random.key(4), (1, 20, 20, 1))
    np.testing.assert_allclose(a(xi), b(xi), atol=1e-5)


def test_few_steps_of_training_reduce_the_loss():
    import optax
    from jaxdn.losses import mae
    from jaxdn.train.loop import make_supervised_step, split_model_and_optimizer

    graphdef, state = split_model_and_optimizer(UNet(widths=TINY, rngs=nnx.Rngs(0)), optax.adam(3e-3))
    yy, xx = jnp.meshgrid(jnp.linspace(0, 1, 16), jnp.linspace(0, 1, 16), indexing="ij")
    clean = jnp.broadcast_to((0.2 + 0.6 * yy * xx)[None, ..., None], (4, 16, 16, 1))
    noisy = jnp.clip(clean + 0.2 * jax.random.normal(jax.random.key(6), clean.shape), 0, 1)
    step = jax.jit(make_supervised_step(graphdef, lambda m, b, k: mae(m(b["noisy"]), b["clean"])))
    losses = []
    for i in range(12):
        state, metrics = step(state, {"noisy": noisy, "clean": clean}, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0]


def _tiny_weights(tmp_path):
    from jaxdn.weights_io import save_weights
    model = UNet(widths=TINY, rngs=nnx.Rngs(7))
    model.train()
    model(jax.random.uniform(jax.random.key(8), (2, 16, 16, 1)))  # non-trivial BN statistics
    model.eval()
    path = save_weights(tmp_path / "unet_g.npz", model, meta={"config": {"model": {"widths": list(TINY)}}})
    return model, path


def test_weights_round_trip_identical_outputs(tmp_path):
    from jaxdn.weights_io import load_weights
    model, path = _tiny_weights(tmp_path)
    loaded = load_weights(path, lambda: UNet(widths=TINY, rngs=nnx.Rngs(0)))
    loaded.eval()
    x = jax.random.uniform(jax.random.key(9), (1, 24, 20, 1))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))


def test_denoise_with_weights_file_shape_dtype_and_range(tmp_path):
    from jaxdn.methods.unet import denoise
    _, path = _tiny_weights(tmp_path)
    x = (np.random.default_rng(0).random((2, 37, 45)) * 100 + 50).astype(np.float32)
    y = denoise(x, noise_model="g", weights=path, tile=32, overlap=8, batch_size=2)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    assert y.min() >= x.min() - 1e-3  # ReLU output ≥ 0 maps back to ≥ frame minimum
    y2 = denoise(x[0], noise_model="g", weights=path, tile=32, overlap=8, batch_size=2)
    assert y2.shape == x.shape[1:]


def test_missing_weights_message_names_train_command(monkeypatch, tmp_path):
    import jaxdn.weights_io as wio
    from jaxdn.methods import unet as m
    monkeypatch.setattr(wio, "shipped", lambda name: tmp_path / name)
    with pytest.raises(MethodNotAvailable, match="jaxdn train unet-sp --config configs/unet.py:sp"):
        m.denoise(np.zeros((8, 8), np.float32), noise_model="sp")


def test_api_denoise_with_shipped_weights():
    from jaxdn import api
    from jaxdn.weights_io import shipped
    if not shipped("unet_g.npz").is_file():
        pytest.skip("shipped unet_g.npz not trained yet")
    x = np.random.default_rng(1).random((70, 90)).astype(np.float32)
    y = api.denoise(x, method="unet-g")
    assert y.shape == x.shape and y.dtype == np.float32


def test_patch_sampler_shift_is_wraparound_and_noise_in_range():
    from jaxdn.train.data_supervised import _patch, add_tem_noise
    img = jnp.arange(32 * 32, dtype=jnp.float32).reshape(32, 32)
    got = _patch(img, 16 + 10, 0 + 10, patch=16)
    ref = np.roll(np.asarray(img), (-10, -10), axis=(0, 1))[16:32, 0:16]
    np.testing.assert_array_equal(np.asarray(got), ref)
    x = jax.random.uniform(jax.random.key(0), (3, 64, 64))
    for nm in ("g", "sp", "gsp", "bbg"):
        y = add_tem_noise(jax.random.key(1), x, noise_model=nm, c=jnp.array([0.1, 0.2, 0.25]))
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    with pytest.raises(ValueError, match="unknown noise model"):
        add_tem_noise(jax.random.key(1), x, noise_model="poisson", c=0.1)
