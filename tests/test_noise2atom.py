"""Noise2Atom: model shapes/parameter count, exact conv reformulations, losses against analytic
references, the inversion guard, the fused train step, preprocessing and the inference method."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import signal

from jaxdn.models import noise2atom as m
from jaxdn.train import noise2atom_losses as L

REPO = Path(__file__).resolve().parents[1]
TINY_GEN = dict(widths=(8, 8, 8, 8), bottleneck=8, n_res=1, out_mid=4)


@nnx.jit
def _fwd(model, x):
    """Jitted model call (eager calls compile every op separately: minutes on a busy CPU)."""
    return model(x)


def _count(module_fn):
    abstract = nnx.eval_shape(module_fn)
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))


# ---- model --------------------------------------------------------------------------------------

def test_paper_generator_parameter_count_without_init():
    # ≈ 13.8 M as in the authors' Keras model; counted abstractly (no init compute).
    assert _count(lambda: m.Generator(rngs=nnx.Rngs(0))) == 13_780_111


def test_paper_critic_parameter_count():
    # 4 down modules (conv pairs, 64/64/128/128) + 2 scalars per norm (3 normed modules) + dense 8·8·128 → 1
    convs = [(1, 64), (64, 64), (64, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, 128)]
    expected = sum(9 * a * b + b for a, b in convs) + 3 * 2 * 2 + 8 * 8 * 128 + 1
    assert _count(lambda: m.Critic(rngs=nnx.Rngs(0))) == expected


def test_upconv_equals_conv_transpose():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    w = jax.random.normal(jax.random.key(1), (4, 4, 3, 5))
    ref = jax.lax.conv_transpose(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = m.upconv2x(x, w)
    assert out.shape == (2, 12, 16, 5)
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_valid_transposed_conv_is_padded_conv(k):
    x = jax.random.normal(jax.random.key(0), (1, 6, 7, 2))
    w = jax.random.normal(jax.random.key(1), (k, k, 2, 3))
    ref = jax.lax.conv_transpose(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(m.conv2d(x, w, pad=k - 1), ref, atol=1e-4)
    np.testing.assert_allclose(m.conv2d(x, w, pad=k - 1, impl="im2col"), ref, atol=1e-4)


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 0), (1, 2)])
def test_im2col_matches_scipy(stride, pad):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 9, 8, 2)).astype(np.float32)
    w = rng.normal(size=(3, 3, 2, 1)).astype(np.float32)
    xp = np.pad(x[0], ((pad, pad), (pad, pad), (0, 0)))
    ref = sum(signal.correlate2d(xp[..., c], w[..., c, 0], mode="valid") for c in range(2))[::stride, ::stride]
    for impl in ("xla", "im2col", "fastgrad"):
        out = m.conv2d(jnp.asarray(x), jnp.asarray(w), stride=stride, pad=pad, impl=impl)
        np.testing.assert_allclose(out[0, ..., 0], ref, atol=1e-4)


@pytest.mark.parametrize("k,pad,stride,size", [(3, 1, 1, (9, 10)), (3, 2, 1, (9, 10)), (5, 4, 1, (9, 10)),
                                               (5, 2, 1, (9, 10)), (3, 0, 1, (9, 10)), (2, 1, 1, (6, 7)),
                                               (3, 0, 2, (9, 10)), (3, 0, 2, (8, 8)), (3, 1, 2, (9, 8)),
                                               (4, 0, 2, (9, 11)), (4, 2, 2, (10, 9))])
def test_fastgrad_gradients_match_autodiff_to_second_order(k, pad, stride, size):
    """The custom VJPs of stride-1 and (space-to-depth) stride-2 convs: values, first derivatives
    (both arguments) and the second derivatives the gradient penalty takes (∂/∂w and ∂/∂x of
    ‖∂f/∂x‖²), against JAX autodiff of lax.conv."""
    x = jax.random.normal(jax.random.key(0), (2, *size, 3))
    w = jax.random.normal(jax.random.key(1), (k, k, 3, 4)) * 0.3
    b = jnp.linspace(-0.1, 0.1, 4)
    conv = lambda impl: functools.partial(m.conv2d, pad=pad, stride=stride, impl=impl)
    ref_out = jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv("fastgrad")(x, w), ref_out, rtol=1e-5, atol=1e-5)

    def f(impl):
        return lambda x, w: jnp.sum(jnp.sin(conv(impl)(x, w, b)))

    for got, ref in zip(jax.grad(f("fastgrad"), (0, 1))(x, w), jax.grad(f("xla"), (0, 1))(x, w)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)

    def penalty(impl):
        return lambda w, x: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(conv(impl)(x, w))))(x) ** 2)

    for got, ref in zip(jax.grad(penalty("fastgrad"), (0, 1))(w, x), jax.grad(penalty("xla"), (0, 1))(w, x)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_fastgrad_third_derivative_matches_autodiff():
    """The derivative of the filter gradient (`_wgrad_impl`'s own VJP) is exact too: a third-order
    derivative through both custom VJPs against autodiff."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 8, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 3)) * 0.3

    def third(impl):
        pen = lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(m.conv2d(x, w, pad=1, impl=impl))))(x) ** 2)
        return lambda w: jnp.sum(jnp.sin(jax.grad(pen)(w)))

    ref = jax.grad(third("xla"))(w)
    np.testing.assert_allclose(jax.grad(third("fastgrad"))(w), ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))


@pytest.mark.parametrize("k,shape,cin,cout", [(3, (2, 9, 11), 3, 5), (2, (1, 7, 6), 4, 2), (5, (2, 40, 37), 2, 3),
                                              (1, (1, 5, 5), 3, 2)])
def test_chunked_filter_gradient_matches_numpy(k, shape, cin, cout):
    """`_chunked_wgrad` (row blocks of the flattened grid; sizes that leave a partial last block and
    several blocks) equals the filter gradient written out as a NumPy sum over the k² taps."""
    rng = np.random.default_rng(k)
    n, hx, wx = shape
    x = rng.standard_normal((n, hx, wx, cin)).astype(np.float32)
    g = rng.standard_normal((n, hx - k + 1, wx - k + 1, cout)).astype(np.float32)
    ref = np.stack([np.stack([np.einsum("nhwc,nhwo->co", x[:, a:a + g.shape[1], b:b + g.shape[2]], g)
                              for b in range(k)]) for a in range(k)])
    got = m._chunked_wgrad(jnp.asarray(x), jnp.asarray(g))
    assert got.shape == (k, k, cin, cout) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape,k", [((2, 60, 50, 64), 3), ((1, 7, 6, 8), 2)])
def test_chunked_filter_gradient_of_bfloat16_inputs(shape, k):
    """bfloat16 operands (`_per_tap_wgrad`: one product per tap per block — here 3 blocks, the last
    partial; a grid too small for two blocks runs in float32) accumulate in float32: equal to the
    NumPy sum of the same rounded values."""
    rng = np.random.default_rng(7)
    n, h, w, c = shape
    ho, wo = h - k + 1, w - k + 1
    x = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal((n, ho, wo, 3)), jnp.bfloat16)
    xr, gr = np.asarray(x, np.float64), np.asarray(g, np.float64)
    ref = np.stack([np.stack([np.einsum("nhwc,nhwo->co", xr[:, a:a + ho, b:b + wo], gr) for b in range(k)])
                    for a in range(k)])
    got = jax.jit(m._chunked_wgrad)(x, g)
    assert got.shape == (k, k, c, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def _numpy_conv(x, w, pad):
    """Stride-1 cross-correlation in float64 as a NumPy sum over the k² taps (NHWC, HWIO)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w = np.asarray(w, np.float64)
    k = w.shape[0]
    ho, wo = x.shape[1] - k + 1, x.shape[2] - k + 1
    return sum(np.einsum("nhwc,co->nhwo", x[:, a:a + ho, b:b + wo], w[a, b]) for a in range(k) for b in range(k))


@pytest.mark.parametrize("shape,k,pad,cout", [((2, 18, 18, 128), 3, 0, 16), ((1, 30, 26, 64), 5, 4, 8),
                                              ((3, 17, 19, 128), 2, 1, 12), ((2, 12, 40, 64), 7, 6, 3)])
def test_flat_conv_of_bfloat16_inputs_matches_numpy(shape, k, pad, cout):
    """`_flat_conv` (one product of width k²·O per row block, shifted column slices summed; valid,
    same and full padding, odd sizes that leave a partial last block) equals the float64 NumPy
    convolution of the same bf16 values, with float32 accumulation."""
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((k, k, shape[3], cout)) / k, jnp.bfloat16)
    got = jax.jit(lambda x, w: m._flat_conv(x, w, pad))(x, w)
    ref = _numpy_conv(x, w, pad)
    assert got.shape == ref.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_flat_conv_rule():
    """bf16 products only where they were measured to win (wide inputs), only for bf16 inputs and
    with at least two row blocks (a one-trip loop would reach a dot kernel without bf16 × bf16 → f32)."""
    use = lambda shape, k, pad, cout=64, dtype=jnp.bfloat16: m._use_flat_conv(
        jax.ShapeDtypeStruct(shape, dtype), jax.ShapeDtypeStruct((k, k, shape[3], cout), dtype), pad)
    assert use((6, 18, 18, 192), 3, 0) and use((6, 16, 16, 192), 3, 2) and use((6, 65, 65, 256), 2, 0)
    assert use((6, 128, 128, 64), 9, 8, 8) and use((6, 66, 66, 64), 3, 0)
    assert not use((6, 18, 18, 192), 3, 0, dtype=jnp.float32)
    assert not use((6, 134, 134, 16), 7, 0) and not use((6, 32, 32, 64), 3, 2)   # thin / small: XLA ahead
    assert not use((1, 8, 8, 256), 3, 1)   # 100 rows: no two blocks of 256
    assert not use((6, 18, 18, 192), 1, 0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="`_flat_conv` is CPU-only")
def test_bfloat16_convolutions_take_the_flat_products_to_second_order(monkeypatch):
    """`compute_dtype=bfloat16` on a wide layer: value, input and filter gradients and the penalty's
    second derivative run through `_flat_conv` (counted) and stay within bf16 rounding of float32."""
    calls = []
    flat = m._flat_conv
    monkeypatch.setattr(m, "_flat_conv", lambda x, w, pad: calls.append((x.shape, pad)) or flat(x, w, pad))
    x = jax.random.normal(jax.random.key(0), (2, 24, 24, 128))
    w = jax.random.normal(jax.random.key(1), (3, 3, 128, 128)) * 0.03
    conv = lambda dt: functools.partial(m.conv2d, pad=1, impl="fastgrad", compute_dtype=dt)
    y16, y32 = conv(jnp.bfloat16)(x, w), conv(jnp.float32)(x, w)
    assert calls == [((2, 24, 24, 128), 1)]
    np.testing.assert_allclose(y16, _numpy_conv(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), 1),
                               rtol=1e-5, atol=1e-5 * float(jnp.abs(y32).max()))
    f = lambda dt: lambda x, w: jnp.sum(jnp.sin(conv(dt)(x, w)))
    for got, ref in zip(jax.grad(f(jnp.bfloat16), (0, 1))(x, w), jax.grad(f(jnp.float32), (0, 1))(x, w)):
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-2 * float(jnp.abs(ref).max()))
    assert ((2, 24, 24, 128), 1) in calls[1:], "the input gradient did not take the flat products"
    penalty = lambda dt: lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(conv(dt)(x, w))))(x) ** 2)
    got, want = jax.grad(penalty(jnp.bfloat16))(w), jax.grad(penalty(jnp.float32))(w)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-2 * float(jnp.abs(want).max()))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the chunked filter gradient is CPU-only")
@pytest.mark.parametrize("k,pad,cin,cout", [(3, 1, 4, 32), (3, 2, 32, 4)])
def test_fastgrad_chunked_filter_gradient_matches_autodiff_to_second_order(k, pad, cin, cout, monkeypatch):
    """Layers large enough that the filter gradient takes the chunked path (counted), zero padding 1
    and k − 1 (the swapped "full" case): first and gradient-penalty second derivatives vs autodiff."""
    calls = []
    chunked = m._chunked_wgrad
    monkeypatch.setattr(m, "_chunked_wgrad", lambda x, g: calls.append(x.shape) or chunked(x, g))
    x = jax.random.normal(jax.random.key(0), (1, 128, 128, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.3
    conv = lambda impl: functools.partial(m.conv2d, pad=pad, impl=impl)
    f = lambda impl: lambda x, w: jnp.sum(jnp.sin(conv(impl)(x, w)))
    for got, ref in zip(jax.grad(f("fastgrad"), (0, 1))(x, w), jax.grad(f("xla"), (0, 1))(x, w)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-3)
    assert calls, "the filter gradient did not take the chunked path"
    penalty = lambda impl: lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(conv(impl)(x, w))))(x) ** 2)
    ref = jax.grad(penalty("xla"))(w)
    np.testing.assert_allclose(jax.grad(penalty("fastgrad"))(w), ref, rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(ref).max()))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the chunked filter gradient is CPU-only")
def test_bfloat16_filter_gradient_products_leave_the_convolutions_float32(monkeypatch):
    """`wgrad_dtype=bfloat16` with float32 convolutions (`paper_fast`): the value and the input
    gradient are the float32 ones exactly; the chunked filter gradient gets bf16 operands and equals
    the float64 sum of the bf16-rounded input and cotangent; the penalty's second derivative runs."""
    dtypes = []
    chunked = m._chunked_wgrad
    monkeypatch.setattr(m, "_chunked_wgrad", lambda x, g: dtypes.append((x.dtype, g.dtype)) or chunked(x, g))
    x = jax.random.normal(jax.random.key(0), (1, 128, 128, 16))
    w = jax.random.normal(jax.random.key(1), (3, 3, 16, 32)) * 0.1
    conv = lambda wd: functools.partial(m.conv2d, pad=1, impl="fastgrad", wgrad_dtype=wd)
    f = lambda wd: lambda x, w: jnp.sum(jnp.sin(conv(wd)(x, w)))
    np.testing.assert_array_equal(conv(jnp.bfloat16)(x, w), conv(None)(x, w))
    dx, dw = jax.grad(f(jnp.bfloat16), (0, 1))(x, w)
    assert dw.dtype == jnp.float32 and dtypes == [(jnp.bfloat16, jnp.bfloat16)]
    np.testing.assert_array_equal(dx, jax.grad(f(None), (0, 1))(x, w)[0])
    rnd = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)
    xp = rnd(np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0))))
    g = rnd(np.cos(np.asarray(conv(None)(x, w))))
    ref = np.stack([np.stack([np.einsum("nhwc,nhwo->co", xp[:, a:a + 128, b:b + 128], g) for b in range(3)])
                    for a in range(3)])
    np.testing.assert_allclose(dw, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    penalty = lambda wd: lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(conv(wd)(x, w))))(x) ** 2)
    got, want = jax.grad(penalty(jnp.bfloat16))(w), jax.grad(penalty(None))(w)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * float(jnp.abs(want).max()))
    assert not np.array_equal(got, want)  # the bf16 products were used at second order too


def test_valid_conv_computed_padded_and_cropped_is_the_valid_conv():
    """`_xla_conv` with pad 0 on a ≥ 32² output (computed with padding 1 and cropped on CPU) equals
    lax's valid convolution exactly, also for an even kernel and a non-square map."""
    x = jax.random.normal(jax.random.key(0), (2, 40, 37, 3))
    for k in (2, 3, 5):
        w = jax.random.normal(jax.random.key(k), (k, k, 3, 4))
        ref = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        got = m._xla_conv(x, w, 0)
        assert got.shape == ref.shape == (2, 41 - k, 38 - k, 4)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


def test_fused_norm_leaky_relu_matches_autodiff_to_second_order():
    """`norm_leaky_relu`'s hand-written VJP against autodiff of leaky_relu(instance_norm(.)):
    value, gradient for x, scale and offset, and the gradient of a gradient penalty through it."""
    x = jax.random.normal(jax.random.key(0), (3, 6, 7, 4)) * 2 + 0.5
    w = jax.random.normal(jax.random.key(1), x.shape)
    s, o = jnp.array([1.3]), jnp.array([0.2])
    ref_fn = lambda x, s, o: m.leaky_relu(m.instance_norm(x, s, o))
    np.testing.assert_array_equal(m.norm_leaky_relu(x, s, o), ref_fn(x, s, o))
    loss = lambda f: lambda x, s, o: jnp.sum(w * jnp.tanh(f(x, s, o)))
    penalty = lambda f: lambda x, s, o: jnp.sum(jnp.sin(jax.grad(lambda y: loss(f)(y, s, o))(x)) ** 2) + loss(f)(x, s, o)
    for make in (loss, penalty):
        got = jax.grad(make(m.norm_leaky_relu), (0, 1, 2))(x, s, o)
        ref = jax.grad(make(ref_fn), (0, 1, 2))(x, s, o)
        for g, r in zip(got, ref):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.abs(r).max()))


def test_fastgrad_bfloat16_keeps_float32_outputs_like_xla():
    """bf16 conv inputs, float32 accumulation and output: fastgrad == xla exactly in value and dtype,
    and its gradients have the dtypes of the (float32) arguments."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4)) * 0.3
    outs = {impl: m.conv2d(x, w, pad=1, impl=impl, compute_dtype=jnp.bfloat16) for impl in ("xla", "fastgrad")}
    assert outs["fastgrad"].dtype == outs["xla"].dtype == jnp.float32
    np.testing.assert_allclose(outs["fastgrad"], outs["xla"], rtol=1e-6, atol=1e-6)
    loss = lambda impl: lambda x, w: jnp.sum(m.conv2d(x, w, pad=1, impl=impl, compute_dtype=jnp.bfloat16) ** 2)
    got, ref = jax.grad(loss("fastgrad"), (0, 1))(x, w), jax.grad(loss("xla"), (0, 1))(x, w)
    for g, r in zip(got, ref):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, r, rtol=3e-2, atol=3e-2 * float(jnp.abs(r).max()))


def test_instance_norm_is_per_sample_over_hwc():
    x = jax.random.normal(jax.random.key(0), (3, 4, 5, 6)) * jnp.arange(1, 4)[:, None, None, None]
    y = np.asarray(m.instance_norm(x, jnp.ones(1) * 2.0, jnp.ones(1) * 0.5))
    for i in range(3):
        xi = np.asarray(x[i])
        np.testing.assert_allclose(y[i], 2.0 * (xi - xi.mean()) / np.sqrt(xi.var() + 1e-3) + 0.5, atol=1e-4)


def test_generator_shapes_any_size_and_tanh_range():
    gen = m.Generator(**TINY_GEN, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 24, 32, 1), minval=-1, maxval=1)
    y = _fwd(gen, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y))) < 1.0
    with pytest.raises(ValueError, match="multiples of 8"):
        gen(jnp.zeros((1, 20, 24, 1)))


def test_init_is_deterministic_per_seed():
    a = nnx.state(m.Critic(size=16, widths=(2, 2, 2, 2), rngs=nnx.Rngs(3)))
    b = nnx.state(m.Critic(size=16, widths=(2, 2, 2, 2), rngs=nnx.Rngs(3)))
    c = nnx.state(m.Critic(size=16, widths=(2, 2, 2, 2), rngs=nnx.Rngs(4)))
    la, lb, lc = (jax.tree.leaves(s) for s in (a, b, c))
    assert all(np.array_equal(u, v) for u, v in zip(la, lb))
    assert not all(np.array_equal(u, v) for u, v in zip(la, lc))


def test_flip_signs_are_exact():
    gen = m.Generator(**TINY_GEN, rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(0), (1, 16, 16, 1), minval=-1, maxval=1)
    y = _fwd(gen, x)
    y_neg_in = _fwd(gen, -x)
    m.flip_output_sign(gen)
    np.testing.assert_allclose(_fwd(gen, x), -y, atol=1e-6)
    m.flip_output_sign(gen)
    m.flip_input_sign(gen)
    np.testing.assert_allclose(_fwd(gen, x), y_neg_in, atol=1e-5)


# ---- low-pass -----------------------------------------------------------------------------------------

def test_lowpass_kernel_is_normalised_gaussian_variance_15():
    k = m.lowpass_kernel()
    assert k.shape == (33, 33)
    assert abs(float(k.sum()) - 1.0) < 1e-6
    r = np.arange(33) - 16
    var_rows = float((k.sum(axis=1) * r ** 2).sum())
    assert abs(var_rows - 15.0) < 0.05          # truncation at ±16 px ≈ 4.1 std changes little
    ratio = k[16, 17] / k[16, 16]
    np.testing.assert_allclose(ratio, np.exp(-1 / 30.0), rtol=1e-5)
    assert k[16, 16] == k.max() and np.allclose(k, k.T) and np.allclose(k, k[::-1, ::-1])


def test_lowpass_is_valid_correlation_with_kernel():
    x = np.random.default_rng(0).normal(size=(2, 40, 36, 1)).astype(np.float32)
    out = np.asarray(m.lowpass(jnp.asarray(x)))
    assert out.shape == (2, 8, 4, 1)
    ref = signal.correlate2d(x[1, ..., 0], m.lowpass_kernel(), mode="valid")
    np.testing.assert_allclose(out[1, ..., 0], ref, atol=1e-5)


# ---- losses --------------------------------------------------------------------------------------------

def test_gradient_penalty_linear_critic_analytic():
    a = jax.random.normal(jax.random.key(0), (4, 5, 1))
    critic = lambda x: jnp.sum(x * a, axis=(1, 2, 3)) + 0.3   # ∂D/∂x_i = a for every sample
    x = jax.random.normal(jax.random.key(1), (3, 4, 5, 1))
    expected = (1.0 - float(jnp.sqrt(jnp.sum(a ** 2)))) ** 2
    np.testing.assert_allclose(L.gradient_penalty(critic, x), expected, rtol=1e-5)


def test_gradient_penalty_per_sample_against_finite_differences():
    critic = lambda x: jnp.sum(jnp.sin(x) * x, axis=(1, 2, 3))
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 1))
    eps, norms = 1e-3, []
    for i in range(2):
        g = np.zeros(x.shape[1:])
        for idx in np.ndindex(*x.shape[1:]):
            d = np.zeros(x.shape[1:])
            d[idx] = eps
            f = lambda z: float(np.sum(np.sin(z) * z))
            g[idx] = (f(x[i] + d) - f(x[i] - d)) / (2 * eps)
        norms.append(np.sqrt((g ** 2).sum()))
    expected = np.mean((1 - np.array(norms)) ** 2)
    np.testing.assert_allclose(L.gradient_penalty(critic, jnp.asarray(x, jnp.float32)), expected, rtol=1e-3)


def test_interpolate_uses_one_weight_per_sample():
    real = jnp.zeros((5, 3, 3, 1))
    fake = jnp.ones((5, 3, 3, 1))
    y = np.asarray(L.interpolate(jax.random.key(0), real, fake))
    for i in range(5):
        assert np.ptp(y[i]) == 0.0 and 0.0 <= y[i].flat[0] <= 1.0
    assert np.ptp(y[:, 0, 0, 0]) > 0
    with pytest.raises(ValueError):
        L.interpolate(jax.random.key(0), real, fake[:2])


def test_simple_losses_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 40, 40, 1)).astype(np.float32), rng.normal(size=(2, 40, 40, 1)).astype(np.float32)
    np.testing.assert_allclose(L.wasserstein(-1.0, jnp.asarray(a[:, 0, 0, 0])), -a[:, 0, 0, 0].mean(), rtol=1e-6)
    np.testing.assert_allclose(L.cycle_l1(a, b), np.abs(a - b).mean(), rtol=1e-5)
    lp = lambda z: m.lowpass(z, size=5, variance=2.0)
    ref = np.abs(np.asarray(lp(a)) - np.asarray(lp(b))).mean()
    np.testing.assert_allclose(L.lowfreq_cycle(lp, a, b), ref, rtol=1e-5)
    corr = np.asarray(L.sign_correlation(a, 0.5 * a + b))
    for i in range(2):
        np.testing.assert_allclose(corr[i], np.corrcoef(a[i].ravel(), (0.5 * a + b)[i].ravel())[0, 1], rtol=1e-4)


def test_lowfreq_content_is_scale_free_and_sign_aware():
    """1 − Pearson correlation of the low-passed images: 0 for any positive affine map of the input,
    2 for a negative one, and NumPy's corrcoef on the SciPy-filtered images otherwise."""
    rng = np.random.default_rng(1)
    s, f = rng.normal(size=(2, 30, 30, 1)).astype(np.float32), rng.normal(size=(2, 30, 30, 1)).astype(np.float32)
    lp = lambda z: m.lowpass(z, size=7, variance=3.0)
    np.testing.assert_allclose(L.lowfreq_content(lp, s, 3.0 * s - 0.7), 0.0, atol=1e-5)
    np.testing.assert_allclose(L.lowfreq_content(lp, s, -0.2 * s + 0.1), 2.0, atol=1e-5)
    kern = m.lowpass_kernel(size=7, variance=3.0)
    got = np.asarray(L.lowfreq_content(lp, s, f))
    for i in range(2):
        ls, lf = (signal.correlate2d(z[i, ..., 0], kern, mode="valid") for z in (s, f))
        np.testing.assert_allclose(got[i], 1.0 - np.corrcoef(ls.ravel(), lf.ravel())[0, 1], rtol=1e-4, atol=1e-5)


# ---- preprocessing -----------------------------------------------------------------------------------

def test_remove_background_removes_quadratic_and_preprocess_range():
    from jaxdn.train.noise2atom import preprocess, remove_background
    yy, xx = np.mgrid[0:64, 0:48] / 50.0
    signal_ = np.random.default_rng(0).poisson(3.0, (2, 64, 48)).astype(np.float32)
    bg = 5 + 3 * yy - 2 * xx + 4 * yy * xx + 2 * xx ** 2
    res = remove_background(signal_ + bg, order=2)
    np.testing.assert_allclose(res, signal_ - signal_.mean(axis=(1, 2), keepdims=True), atol=0.2)
    out = preprocess(signal_ + bg, background_order=2)
    assert out.dtype == np.float32 and out.min() == -1.0 and out.max() == 1.0


# ---- training step & guard (tiny config) --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from jaxdn.train import noise2atom as T
    from jaxdn.train.config import load_config
    cfg = load_config("configs/noise2atom.py:tiny")
    gdefs, init_state, tx = T.graphdefs_and_init(cfg)
    state = init_state()
    yy, xx = np.mgrid[0:64, 0:64]
    blobs = np.exp(-((yy % 12 - 6) ** 2 + (xx % 12 - 6) ** 2) / 6.0)
    raw = np.random.default_rng(0).poisson(4 * blobs[None].repeat(4, 0)).astype(np.float32)
    frames = jnp.asarray(T.preprocess(raw, background_order=2))
    batch = jax.jit(T.make_batch_fn(cfg), static_argnums=1)(jax.random.key(0), 0, {"frames": frames})
    # the guard threshold is set below this random generator's |correlation| so that forcing the
    # opposite sign (test below) is a clear inversion
    corr_fn = jax.jit(lambda p, x: T.output_correlation(cfg, gdefs[0], p, x))
    corr0 = float(corr_fn(state["gen"][0], batch["noisy"]))
    cfg = dataclasses.replace(cfg, guard_margin=min(cfg.guard_margin, abs(corr0) / 2))
    traces = []

    def counted(state, batch, key):
        traces.append(1)
        return T.make_train_step(cfg, gdefs, tx)(state, batch, key)

    step = jax.jit(counted)
    return dict(T=T, cfg=cfg, gdefs=gdefs, tx=tx, state=state, batch=batch, step=step, traces=traces, corr0=corr0,
                corr_fn=corr_fn)


def test_batch_shapes_and_ranges(tiny):
    b = tiny["batch"]
    assert b["noisy"].shape == b["clean"].shape == (2, 32, 32, 1)
    for v in b.values():
        assert -1.0 <= float(v.min()) and float(v.max()) <= 1.0


def test_train_step_changes_params_is_deterministic_and_traced_once(tiny):
    step, state, batch = tiny["step"], tiny["state"], tiny["batch"]
    s1, m1 = step(state, batch, jax.random.key(7))
    s2, m2 = step(state, batch, jax.random.key(7))
    s3, _ = step(s1, batch, jax.random.key(8))
    assert len(tiny["traces"]) == 1
    for k in ("critic_loss", "gen_loss", "adv", "lfc", "cycle", "corr", "content"):
        assert np.isfinite(float(m1[k])), k
    l0, l1, l2 = (jax.tree.leaves(s["gen"]) for s in (state, s1, s2))
    assert all(np.array_equal(a, b) for a, b in zip(l1, l2))          # deterministic per key
    assert any(not np.array_equal(a, b) for a, b in zip(l0, l1))      # generators moved
    c0, c1 = jax.tree.leaves(state["critic"]), jax.tree.leaves(s1["critic"])
    assert any(not np.array_equal(a, b) for a, b in zip(c0, c1))      # critic moved
    assert float(m1["guard_flips"]) in (0.0, 1.0)


def test_content_term_adds_its_weighted_value_to_the_generator_loss(tiny):
    T, cfg, gdefs, tx, state, batch = (tiny[k] for k in ("T", "cfg", "gdefs", "tx", "state", "batch"))
    without = dataclasses.replace(cfg, content_weight=0.0)
    _, m0 = jax.jit(T.make_train_step(without, gdefs, tx))(state, batch, jax.random.key(5))
    with_content = dataclasses.replace(cfg, content_weight=2.5)
    _, m1 = jax.jit(T.make_train_step(with_content, gdefs, tx))(state, batch, jax.random.key(5))
    assert float(m0["content"]) == 0.0 and 0.0 < float(m1["content"]) <= 2.0
    np.testing.assert_allclose(float(m1["gen_loss"]) - float(m0["gen_loss"]), 2.5 * float(m1["content"]),
                               rtol=1e-4, atol=1e-5)


def test_inversion_guard_detects_and_flips_an_inverted_generator(tiny):
    T, cfg, gdefs, step = tiny["T"], tiny["cfg"], tiny["gdefs"], tiny["step"]
    state, batch, corr0 = tiny["state"], tiny["batch"], tiny["corr0"]
    assert abs(corr0) > 1e-3
    # force an inverted mapping: the output sign opposite to the current one
    bad = nnx.clone(nnx.merge(gdefs[0], state["gen"][0]))  # never mutate the fixture's state
    if corr0 > 0:
        m.flip_output_sign(bad)
    forced = dict(state, gen=(nnx.state(bad), state["gen"][1]))
    corr_bad = float(tiny["corr_fn"](forced["gen"][0], batch["noisy"]))
    assert corr_bad < -cfg.guard_margin
    new, metrics = step(forced, batch, jax.random.key(3))
    assert float(metrics["guard_flips"]) == 1.0
    corr_after = float(tiny["corr_fn"](new["gen"][0], batch["noisy"]))
    assert corr_after > 0
    # a correctly signed generator is left alone
    if corr0 < 0:
        m.flip_output_sign(bad)
        good = dict(state, gen=(nnx.state(bad), state["gen"][1]))
    else:
        good = state
    _, metrics = step(good, batch, jax.random.key(3))
    assert float(metrics["guard_flips"]) == 0.0


def test_canonical_sign_flips_an_inverted_start_exactly(tiny):
    T, gdefs, state, batch = tiny["T"], tiny["gdefs"], tiny["state"], tiny["batch"]
    gen_fn = lambda st: np.asarray(nnx.merge(gdefs[0], st["gen"][0])(batch["noisy"]))
    out0 = gen_fn(state)
    corr = lambda st: float(tiny["corr_fn"](st["gen"][0], batch["noisy"]))
    fixed, flipped = T.canonical_sign(state, corr(state))
    assert flipped == (tiny["corr0"] < 0)
    assert float(tiny["corr_fn"](fixed["gen"][0], batch["noisy"])) > 0
    np.testing.assert_allclose(gen_fn(fixed), -out0 if flipped else out0, atol=1e-6)
    again, flipped_again = T.canonical_sign(fixed, corr(fixed))
    assert not flipped_again and again is fixed
    gen, opt = T.flip_if(jnp.asarray(True), fixed["gen"], fixed["opt_gen"])  # an inverted start
    inverted = dict(fixed, gen=gen, opt_gen=opt)
    back, flipped_back = T.canonical_sign(inverted, corr(inverted))
    assert flipped_back
    np.testing.assert_allclose(gen_fn(back), gen_fn(fixed), atol=1e-6)


def test_flip_if_negates_exactly_the_targets(tiny):
    T, state = tiny["T"], tiny["state"]
    gen, opt = state["gen"], state["opt_gen"]
    g2, o2 = T.flip_if(jnp.asarray(True), gen, opt)
    flat0 = dict(nnx.to_flat_state(gen[0]))
    flat1 = dict(nnx.to_flat_state(g2[0]))
    for key, v in flat0.items():
        a, b = np.asarray(v[...]), np.asarray(flat1[key][...])
        if key[:1] == ("out2",):
            np.testing.assert_array_equal(b, -a)
        else:
            np.testing.assert_array_equal(b, a)
    k0 = np.asarray(gen[1]["in_block"]["c1"]["kernel"][...])
    np.testing.assert_array_equal(np.asarray(g2[1]["in_block"]["c1"]["kernel"][...]), -k0)
    g3, _ = T.flip_if(jnp.asarray(False), gen, opt)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(gen), jax.tree.leaves(g3)))


# ---- inference method ------------------------------------------------------------------------------

def test_method_denoise_any_size_from_exported_weights(tiny, tmp_path):
    from jaxdn.methods import noise2atom as method
    path = tiny["T"].export_weights(tmp_path / "n2a.npz", tiny["cfg"], tiny["state"])
    data = np.random.default_rng(0).poisson(2.0, (3, 21, 30)).astype(np.float32)
    out = method.denoise(data, weights=path, batch_size=2)
    assert out.shape == data.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    single = method.denoise(data[1], weights=path)
    assert single.shape == (21, 30)
    np.testing.assert_allclose(method.denoise(data, weights=tmp_path / "n2a.npz", batch_size=2), out)
    from jaxdn.errors import InputError
    with pytest.raises(InputError):
        method.denoise(np.zeros((8, 8), np.float32), weights=path)
    with pytest.raises(InputError):
        method.denoise(data, weights=tmp_path / "missing.npz")


def _step_ratio(y, period, rows):
    """Mean |row-to-row step| at positions ``r % period in rows`` over the mean elsewhere, per axis."""
    out = []
    for ax in (1, 2):
        step = np.abs(np.diff(y, axis=ax)).mean(axis=(0, 3 - ax))
        sel = np.isin(np.arange(step.size) % period, rows)
        out.append(float(step[sel].mean() / step[~sel].mean()))
    return out


def test_method_denoise_large_frames_in_tiles():
    """Frames larger than the tile go through overlapping tiles (shipped weights): same shape, the
    same atom map as one tile covering the frame, and no seams in the blend bands."""
    import jax
    from jaxdn.methods import noise2atom as method
    from jaxdn.train.noise2atom import simulated_movie
    _, noisy, _ = simulated_movie(jax.random.key(5), frames=1, size=200, peak_electrons=3.0)
    whole = method.denoise(noisy, tile=512, overlap=32)
    tiled = method.denoise(noisy, tile=128, overlap=32, progress=True)
    assert tiled.shape == noisy.shape and tiled.dtype == np.float32
    assert np.isfinite(tiled).all() and 0.0 <= tiled.min() and tiled.max() <= 1.0
    r = np.corrcoef(whole.ravel(), tiled.ravel())[0, 1]
    assert r > 0.95, r  # not 1: the instance norm sees each tile's statistics (measured 0.997)
    # tile stride 96; tiles blend where r % 96 is in [72, 88): steps there are like steps elsewhere
    assert max(_step_ratio(tiled, 96, np.arange(72, 88))) < 1.35   # measured 1.01 (the whole frame: 1.02)
    # control: abutting tiles without overlap leave a visible seam every 64 px (the measure can fail)
    cut = method.denoise(noisy, tile=64, overlap=0)
    assert min(_step_ratio(cut, 64, [63])) > 1.45                  # measured 1.58 / 2.89 (whole frame 0.99 / 1.05)


def test_missing_shipped_weights_message_names_train_command(monkeypatch, tmp_path):
    import jaxdn.weights_io as wio
    from jaxdn.errors import MethodNotAvailable
    from jaxdn.methods import noise2atom as method
    monkeypatch.setattr(wio, "shipped", lambda name: tmp_path / name)
    with pytest.raises(MethodNotAvailable, match="jaxdn train noise2atom --config configs/noise2atom.py:small"):
        method.denoise(np.zeros((32, 32), np.float32))


def test_shipped_weights_turn_a_low_dose_frame_into_an_atom_map():
    """The shipped generator (`jaxdn/weights/noise2atom.npz`): on a simulated 3 e⁻-peak HAADF frame its
    output correlates better with the clean frame than the noisy input does, and keeps the polarity."""
    from jaxdn.methods import noise2atom as method
    from jaxdn.train.noise2atom import simulated_movie
    from jaxdn.weights_io import read_meta, shipped
    if not shipped("noise2atom.npz").is_file():
        pytest.skip("no shipped noise2atom.npz in this checkout")
    meta = read_meta(shipped("noise2atom.npz"))
    assert meta["method"] == "noise2atom" and meta["config"]["model"]["widths"] == [16, 16, 16, 32]
    clean, noisy, _ = simulated_movie(jax.random.key(5), frames=2, peak_electrons=3.0)
    out = method.denoise(noisy)
    assert out.shape == noisy.shape and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    r_noisy = np.corrcoef(noisy.ravel(), clean.ravel())[0, 1]
    r_out = np.corrcoef(out.ravel(), clean.ravel())[0, 1]
    assert r_out > r_noisy > 0.0


def test_simulated_training_ships_the_best_validation_snapshot(tmp_path):
    """`select_best`: every evaluation scores the generator on the validation movie; the run's
    noise2atom.npz is the best-scoring snapshot (metrics.jsonl agrees), the final state is kept as
    noise2atom_last.npz, and a resume keeps the best score."""
    from jaxdn.train import noise2atom as T
    from jaxdn.train.config import load_config
    from jaxdn.weights_io import read_meta
    cfg = dataclasses.replace(load_config("configs/noise2atom.py:tiny"), steps=4, eval_every=2, select_best=True)
    work = tmp_path / "sel"
    T.train(cfg, workdir=work, quiet=True)
    evals = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval" and "val_f1" in e]
    assert [e["step"] for e in evals] == [2, 4]
    best = max(evals, key=lambda e: (e["val_f1"], e["val_psnr"]))
    record = json.loads((work / "best.json").read_text())
    assert record["step"] == best["step"] and record["val_f1"] == pytest.approx(best["val_f1"])
    shipped, last = read_meta(work / "noise2atom.npz"), read_meta(work / "noise2atom_last.npz")
    assert shipped["step"] == best["step"] and "step" not in last
    assert (work / "noise2atom.npz").read_bytes() == (work / "noise2atom_best.npz").read_bytes()
    T.train(dataclasses.replace(cfg, steps=6), workdir=work, quiet=True)   # resume: best so far survives
    assert json.loads((work / "best.json").read_text())["val_f1"] >= record["val_f1"]


def test_f1_resolving_finder_separates_a_dim_column_beside_a_bright_one():
    # seed 2's clean movie in miniature: a dim column 5.2 px from each bright one (σ 1.6 px). The
    # default finder (3 px, smoothed) loses the dim ones in the bright flank; the resolving one finds all
    from jaxdn.train.noise2atom import _f1
    rr, cc = np.mgrid[:64, :64]
    bright = np.array([(r, c) for r in range(10, 60, 14) for c in range(8, 58, 14)], float)
    dim = bright + (0.0, 5.2)
    img = np.zeros((64, 64))
    for (r, c), a in [(p, 1.0) for p in bright] + [(p, 0.45) for p in dim]:
        img += a * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.6 ** 2))
    truth = np.concatenate([bright, dim])
    s = _f1(img[None], [truth])
    assert s["precision"] == pytest.approx(1.0)
    assert s["recall"] == pytest.approx(len(bright) / len(truth))          # the dim half is missed
    assert s["resolving"]["f1"] == pytest.approx(1.0)
    assert s["resolving"]["false_atoms_per_true"] == 0.0


def test_speed_benchmark_counts_flops_with_chunked_filter_gradients_off():
    """`benchmarks/noise2atom_bench.py speed` builds the fused step of a config and counts its FLOPs
    with every convolution and filter gradient an XLA convolution (patching `_use_chunked_wgrad` and
    `_use_flat_conv`, whatever their arguments), then restores the patched functions."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "noise2atom_bench.py"
    spec = importlib.util.spec_from_file_location("noise2atom_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    use, flat = m._use_chunked_wgrad, m._use_flat_conv
    compiled, state, batch, compile_s, gflop = bench._jax_step("tiny", None)
    assert m._use_chunked_wgrad is use and m._use_flat_conv is flat and compile_s > 0 and gflop > 0
    assert batch["noisy"].shape == (2, 32, 32, 1)


def test_paper_variants_differ_only_in_dtypes():
    """`paper_fast` and `paper_bf16` are the `paper` architecture and training recipe; only the
    operand dtypes differ (so their weights are interchangeable and their speeds comparable)."""
    import dataclasses
    from jaxdn.train.config import load_config
    paper = load_config("configs/noise2atom.py:paper")
    for name, dtypes in [("paper_fast", {"wgrad_dtype": "bfloat16"}), ("paper_bf16", {"compute_dtype": "bfloat16"})]:
        cfg = load_config(f"configs/noise2atom.py:{name}")
        assert {k: getattr(cfg.model, k) for k in dtypes} == dtypes
        assert dataclasses.asdict(dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, compute_dtype="float32", wgrad_dtype=None))) == dataclasses.asdict(paper)


_WIDE_LAYER_ON_FOUR_DEVICES = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jaxdn import sharding as shd
    from jaxdn.models import noise2atom as m
    from jaxdn.train.loop import fit
    mesh = shd.data_mesh()
    seen = []
    flat, chunked = m._flat_conv, m._chunked_wgrad
    m._flat_conv = lambda x, w, pad: seen.append(("flat", x.shape[0])) or flat(x, w, pad)
    m._chunked_wgrad = lambda x, g: seen.append(("wgrad", x.shape[0])) or chunked(x, g)
    x = jax.random.normal(jax.random.key(0), (8, 34, 34, 128)).astype(jnp.bfloat16)
    w = (0.05 * jax.random.normal(jax.random.key(1), (3, 3, 128, 64))).astype(jnp.bfloat16)

    def value_and_wgrad(x, w):
        y, vjp = jax.vjp(lambda w: m._padded_conv(x, w, 0), w)
        return y, vjp(y)[0]

    y1, dw1 = jax.jit(value_and_wgrad)(x, w)                               # one device
    assert seen == [("flat", 8), ("wgrad", 8)], seen
    jitted = jax.jit(value_and_wgrad, in_shardings=(shd.batch_sharding(mesh), shd.replicated(mesh)))
    xs = shd.shard_batch(x, mesh)
    assert "all-gather" in jitted.lower(xs, w).compile().as_text()         # GSPMD alone gathers
    seen.clear()
    with jax.set_mesh(mesh):
        hlo = jitted.lower(xs, w).compile().as_text()
    assert seen == [("flat", 2), ("wgrad", 2)], seen                       # each device: its 2 frames
    assert "all-gather" not in hlo
    y4, dw4 = shd.calls_in_mesh(jitted, mesh)(xs, w)
    assert y4.sharding.spec == jax.sharding.PartitionSpec("data") and dw4.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(y4), np.asarray(y1))
    # the filter gradient comes back in w's bfloat16: the devices' partial sums may round one ulp apart
    np.testing.assert_allclose(np.asarray(dw4, np.float32), np.asarray(dw1, np.float32), rtol=2.0 ** -7)

    shares = []                                    # `fit` traces its step with the mesh in context
    def step(state, batch, key):
        shares.append(shd.batch_shards(batch.shape[0]))
        return state, {"loss": batch.sum()}
    import tempfile
    fit(init_state={"w": jnp.zeros(())}, train_step=step, steps=1, workdir=tempfile.mkdtemp(),
        make_batch=lambda key, step: jax.random.normal(key, (8, 3)), config={}, quiet=True)
    assert shares == [4], shares
    print("ok")
""")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the row-block kernels are CPU-only")
def test_row_block_kernels_split_the_batch_over_devices():
    """On a batch-sharded mesh the flat convolution and the chunked filter gradient (they flatten the
    batch into rows) run on each device's own frames — no all-gather, the output stays split, the
    filter gradient is summed — and give the one-device numbers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _WIDE_LAYER_ON_FOUR_DEVICES], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
