"""Noise2Atom networks (Wang et al. 2020): generators M_s2c / M_c2s, critic D, fixed low-pass M_s2b.

Faithful to the authors' public Keras code where the paper is vague:

* basic block = stride-1 transposed conv (valid) → norm → leaky ReLU(0.2) → conv (valid) → norm →
  leaky ReLU; both with the same kernel, so the spatial size is preserved without zero padding.
  A valid stride-1 transposed conv of kernel k is *exactly* a conv with zero padding k − 1 on
  each side (with the kernel flipped; the kernel is learned, so we store it in conv orientation);
  we compute it that way.
* multi-kernel (Xception-style) blocks split the width evenly over kernel sizes (1, 3, 5, 7 at full
  resolution, 3, 5 deeper), one basic block each, concatenated;
* down: transposed conv 3 (stride 1) + conv 3 stride 2; up: transposed conv 4 stride 2 (valid,
  2H + 2) + conv 3 (valid, 2H). The stride-2 transposed conv is computed exactly as a 2×2 conv
  producing the four output phases (sub-pixel form), 4× fewer FLOPs than the zero-dilated form;
* skips are added; output: transposed conv 9 (8 ch) → norm → lReLU → conv 9 (1 ch) → tanh;
* "instance normalisation" = per sample over H, W and C, one scalar scale and offset, eps 1e-3.

All modules are NHWC, float32 parameters; ``impl`` picks how convolutions are computed
("xla": ``lax.conv_general_dilated``; "im2col": shifted slices + one matmul; "fastgrad": XLA
convolutions whose gradients of every order are also forward convolutions, strided ones in
space-to-depth form — 3–9× faster per thin layer on CPU, see `_padded_conv` and `_stride2_conv`;
on CPU the filter gradients of wide layers are chunked matrix products, `_chunked_wgrad`)
and ``compute_dtype`` ("float32" | "bfloat16") the dtype of conv inputs (accumulation and
everything else in float32); ``wgrad_dtype`` ("float32" | "bfloat16") the dtype of the operands of
the filter gradients computed as matrix products (`_chunked_wgrad`, CPU "fastgrad" only). XLA:CPU
upcasts bf16 *convolutions* to float32 but runs bf16 products on AMX, so on CPU the bf16
convolutions of wide layers are computed as products (`_flat_conv`). None of them changes the
parameters, so weights are interchangeable.
Inputs must have H, W divisible by 8 (the method runs tiles whose sides are multiples of 16).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..sharding import batch_shards, per_batch_shard

__all__ = ["Generator", "Critic", "lowpass_kernel", "lowpass", "conv2d", "upconv2x", "leaky_relu",
           "instance_norm", "flip_output_sign", "flip_input_sign"]

_EPS = 1e-3  # keras-contrib InstanceNormalization default


def leaky_relu(x):
    return jnp.where(x >= 0, x, 0.2 * x)


def instance_norm(x, scale, offset):
    """Normalise each sample over (H, W, C); scalar `scale`, `offset` of shape (1,)."""
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + _EPS) * scale + offset


@jax.custom_vjp
def norm_leaky_relu(x, scale, offset):
    """``leaky_relu(instance_norm(x, scale, offset))`` with a hand-written gradient: one fused
    per-sample reduction (Σ g, Σ g·x̂) and one elementwise pass, where autodiff of the composition
    makes XLA:CPU run several. x: (N, H, W, C); scale, offset: (1,)."""
    return leaky_relu(instance_norm(x, scale, offset))


def _nlr_fwd(x, scale, offset):
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True) + _EPS)
    xhat = (x - mean) * rstd
    return leaky_relu(xhat * scale + offset), (xhat, rstd, scale, offset)


def _nlr_bwd(res, g):
    xhat, rstd, scale, offset = res
    gz = jnp.where(xhat * scale + offset >= 0, g, 0.2 * g)
    s1 = jnp.sum(gz, axis=(1, 2, 3), keepdims=True)
    s2 = jnp.sum(gz * xhat, axis=(1, 2, 3), keepdims=True)
    m = xhat[0].size
    dx = (scale * rstd) * (gz - (s1 + xhat * s2) / m)
    return dx, jnp.sum(s2).reshape(1), jnp.sum(s1).reshape(1)


norm_leaky_relu.defvjp(_nlr_fwd, _nlr_bwd)


def conv2d(x, w, b=None, *, stride=1, pad=0, impl="xla", compute_dtype=jnp.float32, wgrad_dtype=None):
    """Cross-correlation of NHWC `x` with HWIO `w`, zero padding `pad` on every side, then `+ b`.

    Args:
      x: (N, H, W, Cin). w: (k, k, Cin, Cout). b: (Cout,) or None.
      stride: spatial stride. pad: zero padding per side.
      impl: "xla", "im2col" or "fastgrad" (same result to float rounding; "fastgrad" covers
        stride 1 and 2 with 0 ≤ pad ≤ k − 1 and falls back to "xla" otherwise).
      compute_dtype: dtype of the convolution inputs (accumulation float32).
      wgrad_dtype: "fastgrad" only — dtype of the operands of chunked filter-gradient products
        (None = `compute_dtype`).
    Returns:
      (N, (H + 2 pad − k) // stride + 1, same for W, Cout) float32.
    """
    k, cin, cout = w.shape[0], w.shape[2], w.shape[3]
    xc, wc = x.astype(compute_dtype), w.astype(compute_dtype)
    if impl == "fastgrad":
        if stride in (1, 2) and 0 <= pad <= k - 1 and k > 1:
            wd = compute_dtype if wgrad_dtype is None else wgrad_dtype
            y = _padded_conv(xc, wc, pad, wd) if stride == 1 else _stride2_conv(xc, wc, pad, wd)
            return y.astype(jnp.float32) + (0.0 if b is None else b)
        impl = "xla"
    if impl == "xla" or k == 1 and stride == 1:
        if k == 1 and stride == 1 and pad == 0:
            y = jnp.einsum("nhwc,cd->nhwd", xc, wc[0, 0], preferred_element_type=jnp.float32)
        else:
            y = jax.lax.conv_general_dilated(
                xc, wc, (stride, stride), [(pad, pad), (pad, pad)],
                dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
    elif impl == "im2col":
        if pad:
            xc = jnp.pad(xc, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        n, h, wd, _ = xc.shape
        ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
        cols = [xc[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
                for i in range(k) for j in range(k)]
        patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
        y = jnp.dot(patches.reshape(-1, k * k * cin), wc.reshape(k * k * cin, cout),
                    preferred_element_type=jnp.float32).reshape(n, ho, wo, cout)
    else:
        raise ValueError(f"unknown conv impl {impl!r}")
    y = y.astype(jnp.float32)
    return y if b is None else y + b


_DN = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w, pad):
    """Stride-1 conv with zero padding `pad`, accumulated and returned in float32.

    On CPU a valid (pad 0) conv of a map of at least 32² outputs is computed with padding 1 and
    cropped — the same numbers: XLA:CPU's convolution kernel runs unpadded convolutions 2.7–8×
    slower than padded ones (64 → 64 channels 3×3 on 6 × 130²: 72 vs 193 GFLOP/s; 7×7 64 → 16:
    25 vs 202), and every basic block of the Noise2Atom nets ends in a valid conv. bfloat16 inputs
    of wide layers go to `_flat_conv` (XLA:CPU would upcast them and run a float32 convolution).
    """
    if _use_flat_conv(x, w, pad):
        return per_batch_shard(lambda x, w: _flat_conv(x, w, pad), x, w)
    k = w.shape[0]
    ho, wo = x.shape[1] + 2 * pad - k + 1, x.shape[2] + 2 * pad - k + 1
    crop = pad == 0 and k > 1 and ho * wo >= 32 * 32 and jax.default_backend() == "cpu"
    p = 1 if crop else pad
    y = jax.lax.conv_general_dilated(x, w, (1, 1), [(p, p), (p, p)], dimension_numbers=_DN,
                                     preferred_element_type=jnp.float32)
    return y[:, 1:1 + ho, 1:1 + wo] if crop else y


def _flat_grid(x, k: int, block: int):
    """The flattened grid both row-block loops (`_flat_conv`, `_sum_over_row_blocks`) walk.

    x: (N, H, W, C) → xf: (nblocks·block + s_max, C), x's N·H·W rows zero-padded so that every block
    and the rows its taps reach exist; offsets: the k² row offsets a·W + b of the taps (s_max last);
    nblocks: ⌈N·H·W / block⌉.
    """
    n, h, w, c = x.shape
    offsets = [a * w + b for a in range(k) for b in range(k)]
    rows = n * h * w
    nblocks = -(-rows // block)
    return jnp.pad(x.reshape(rows, c), ((0, nblocks * block - rows + offsets[-1]), (0, 0))), offsets, nblocks


def _flat_conv_block(rows: int) -> int:
    """Rows per block of `_flat_conv`: an eighth of the grid, 256–8192, a multiple of 64 (the
    fastest of 256–8192 on the `paper` step's layers: 256–512 at 16²–18², 4096–8192 at ≥ 64²)."""
    return int(np.clip(rows // 8, 256, 8192)) // 64 * 64


def _use_flat_conv(x, w, pad: int) -> bool:
    """Whether `_flat_conv` beats XLA:CPU's (float32) convolution for bfloat16 `x` of this shape.

    Measured per layer on the `paper` step's 50 largest forward / input-gradient shapes (session 21,
    benchmarks/results/noise2atom.md): the bf16 products win 1.1–3.5× at ≥ 128 input channels, and at
    64 for valid convs (XLA's padded-and-cropped path) or 3×3 and wider kernels on ≥ 64² maps; on
    thinner inputs (≤ 32 channels: a short contraction) or 64 channels on ≤ 32² maps XLA's float32
    convolution is level or ahead (0.14–1.0×). At least two row blocks: a one-trip loop is removed
    and XLA:CPU's plain dot kernel has no bf16 × bf16 → f32. CPU only. Decided on each device's
    share of the batch (`per_batch_shard` runs it there).
    """
    if jax.default_backend() != "cpu" or x.dtype != jnp.bfloat16:
        return False
    n, h, wd, cin = x.shape
    n //= batch_shards(n)
    k = w.shape[0]
    rows = n * (h + 2 * pad) * (wd + 2 * pad)
    if k < 2 or _flat_conv_block(rows) > rows // 2:
        return False
    return cin >= 128 or (cin >= 64 and (pad == 0 or (k >= 3 and h * wd >= 64 * 64)))


def _flat_conv(x, w, pad: int):
    """Stride-1 conv of bfloat16 NHWC `x` (zero padding `pad`) with HWIO `w` as matrix products that
    XLA:CPU runs on AMX; float32 accumulation and result, (N, Ho, Wo, O).

    On the flattened padded grid (N·Hp·Wp rows of C), tap (a, b) is the row offset s = a·Wp + b, so
    out[r] = Σ_taps x[r + s] · W[a, b]. Per block of rows one product x_block · [W_taps] of width
    k²·O (the block plus the rows its taps reach), then the k² shifted column slices are summed while
    they are in cache — no patch matrix. Rows past the valid output (right / bottom margins, wrap-
    around) are computed and cropped.
    """
    k, c, o = w.shape[0], x.shape[3], w.shape[3]
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, hp, wp, _ = x.shape
    rows = n * hp * wp
    block = _flat_conv_block(rows)
    xf, offsets, nblocks = _flat_grid(x, k, block)
    wm = w.astype(x.dtype).reshape(k * k, c, o).transpose(1, 0, 2).reshape(c, k * k * o)

    def out_block(i):
        xb = jax.lax.dynamic_slice_in_dim(xf, i * block, block + offsets[-1], 0)
        y = jnp.dot(xb, wm, preferred_element_type=jnp.float32)   # (block + s_max, k²·O)
        return sum((y[s:s + block, t * o:(t + 1) * o] for t, s in enumerate(offsets[1:], 1)),
                   y[:block, :o])

    out = jax.lax.map(out_block, jnp.arange(nblocks)).reshape(nblocks * block, o)[:rows]
    return out.reshape(n, hp, wp, o)[:, :hp - k + 1, :wp - k + 1]


def _xla_wgrad(x, g, pad, product_dtype=None):
    """Filter gradient of `_xla_conv(x, ·, pad)` for output cotangent g: (k, k, Cin, Cout) float32.

    A forward convolution of the padded input with channels as batch and the batch as input features,
    or on CPU for wide layers `_chunked_wgrad`, whose operands are cast to `product_dtype` (None: as given).
    """
    k = x.shape[1] + 2 * pad - g.shape[1] + 1
    if 0 < pad == k - 1:
        # A "full" conv (valid transposed conv): dW is the flipped transpose of the valid filter
        # gradient with x and g swapped — no padded copy of x (measured ~7 % of the N2A step).
        return _flip_t(_xla_wgrad(g, x, 0, product_dtype))
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    if _use_chunked_wgrad(xp, g, product_dtype):
        if product_dtype is not None:
            xp, g = xp.astype(product_dtype), g.astype(product_dtype)
        return per_batch_shard(_chunked_wgrad, xp, g, batched=2, summed=True)
    dw = jax.lax.conv_general_dilated(xp.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1),
                                      [(0, 0), (0, 0)], dimension_numbers=_DN,
                                      preferred_element_type=jnp.float32)  # (Cin, k, k, Cout)
    return dw.transpose(1, 2, 0, 3)


def _use_chunked_wgrad(x, g, product_dtype=None) -> bool:
    """Whether `_chunked_wgrad` (operands cast to `product_dtype`, None: x's dtype) beats XLA:CPU's
    filter-gradient convolution for these shapes.

    Measured per layer of the `paper` step on the 2-core CPU (benchmarks/results/noise2atom.md):
    XLA:CPU runs a filter gradient with many output pixels as one huge-kernel convolution at
    15–25 GFLOP/s, the float32 chunked products at 45–100; on thin layers (≤ 16 output channels) or
    16² maps XLA's own is faster. The bfloat16 per-tap products (AMX) beat it, 1.1–8×, on the
    filter gradients of ≥ 32 output channels and ≥ 0.1 GFLOP, and of 16 at k ≥ 5 and ≥ 1 GFLOP;
    XLA's own stays ahead on thinner or smaller ones (33 shapes of the `paper` step, 35 of `small`; session 20).
    Only on CPU: elsewhere the serial loop would be the slow one. Decided on each device's share of
    the batch (`per_batch_shard` runs it there).
    """
    if jax.default_backend() != "cpu":
        return False
    pixels = g.shape[0] // batch_shards(g.shape[0]) * g.shape[1] * g.shape[2]
    cin, cout = x.shape[3], g.shape[3]
    if jnp.dtype(x.dtype if product_dtype is None else product_dtype) == jnp.bfloat16:
        k = x.shape[1] - g.shape[1] + 1
        flops = 2 * pixels * k * k * cin * cout
        return (cout >= 32 and flops >= 1e8) or (cout >= 16 and k >= 5 and flops >= 1e9)
    return cout >= 32 and (pixels >= 16384 or (pixels >= 4096 and cin >= 64))


def _sum_over_row_blocks(x, g, block: int, product, acc):
    """Σ over row blocks of `product(gb, xb, offsets)` + `acc`, on the flattened grid of `_chunked_wgrad`.

    gb: (O, block), the block's gᵀ (g zero-padded to Hx × Wx, stored transposed so it is contiguous);
    xb: (block + offsets[-1], C), the block's rows of x and the rows its taps reach (zero-padded);
    offsets: the k² row offsets a·Wx + b of the taps. A `fori_loop`, not unrolled: unrolling 2 or 8
    bodies made the `paper` step no faster and its compile 1.4–3.4× longer.
    """
    n, hx, wx, _ = x.shape
    _, ho, wo, o = g.shape
    rows = n * hx * wx
    xf, offsets, nblocks = _flat_grid(x, hx - ho + 1, block)
    gf = jnp.pad(g, ((0, 0), (0, hx - ho), (0, wx - wo), (0, 0))).reshape(rows, o)
    gt = jnp.pad(gf, ((0, nblocks * block - rows), (0, 0))).T

    def add_block(i, acc):
        xb = jax.lax.dynamic_slice_in_dim(xf, i * block, block + offsets[-1], 0)
        gb = jax.lax.dynamic_slice_in_dim(gt, i * block, block, 1)
        return acc + product(gb, xb, offsets)

    return jax.lax.fori_loop(0, nblocks, add_block, acc)


def _chunked_wgrad(x, g):
    """Valid filter gradient dW[a, b, c, o] = Σ_{n,h,w} x[n, h + a, w + b, c] g[n, h, w, o].

    x: (N, Hx, Wx, C), g: (N, Hx − k + 1, Wx − k + 1, O) → (k, k, C, O) float32. On the flattened
    (N·Hx·Wx) grid with g zero-padded to Hx × Wx, tap (a, b) is the row offset a·Wx + b of x, so a
    loop over blocks of rows adds each block's products while its rows are still in cache —
    no k²-fold copy of x in memory (XLA:CPU runs that copy and the long-K product it feeds at a
    fraction of its matmul rate). Wrap-around rows meet zeros of g. Float32: one gᵀ·patches product
    per block over the block's k²·C-wide patch matrix. bfloat16 (`_per_tap_wgrad`): k² products per
    block, no patch matrix.
    """
    if x.dtype == jnp.bfloat16:
        return _per_tap_wgrad(x, g)
    k, c, o = x.shape[1] - g.shape[1] + 1, x.shape[3], g.shape[3]
    # rows per block: a 2 MiB patch matrix
    block = int(np.clip((1 << 21) // (k * k * c * x.dtype.itemsize), 256, 2048)) // 64 * 64

    def product(gb, xb, offsets):
        patches = jnp.concatenate([xb[s:s + block] for s in offsets], 1)  # (block, k²·C)
        return jnp.dot(gb, patches, preferred_element_type=jnp.float32)

    acc = _sum_over_row_blocks(x, g, block, product, jnp.zeros((o, k * k * c), jnp.float32))
    return acc.T.reshape(k, k, c, o)


def _per_tap_wgrad(x, g):
    """`_chunked_wgrad` of bfloat16 operands: per block of rows, one (O × block)·(block × C) product
    per tap on the shifted rows, accumulated in float32. XLA:CPU runs these bf16 products on AMX, so
    building a patch matrix would cost more than the products (session 20, per `paper` layer: 1.3–3×
    faster than the bf16 patch-matrix form, e.g. 6 × 130² × 64 → 64, k 3: 34.7 vs 50.6 ms).
    Blocks of ≈ 512 KiB of x rows (the fastest of 1–8 k rows on the step's layers), at least two: a
    one-trip loop is removed and XLA:CPU then sends the products to a dot kernel without bf16 × bf16
    → f32 (an UNIMPLEMENTED error at run time), so a grid too small for two blocks is computed in
    float32."""
    n, hx, wx, c = x.shape
    k, o = hx - g.shape[1] + 1, g.shape[3]
    rows = n * hx * wx
    block = min(int(np.clip((1 << 19) // (c * x.dtype.itemsize), 512, 8192)), rows // 2) // 64 * 64
    if block < 64:
        x, g, block = x.astype(jnp.float32), g.astype(jnp.float32), rows

    def product(gb, xb, offsets):
        return jnp.stack([jnp.dot(gb, xb[s:s + block], preferred_element_type=jnp.float32) for s in offsets])

    acc = _sum_over_row_blocks(x, g, block, product, jnp.zeros((k * k, o, c), jnp.float32))
    return acc.transpose(0, 2, 1).reshape(k, k, c, o)


def _flip_t(w):
    """HWIO kernel → the kernel of the input gradient: spatially flipped, in/out swapped."""
    return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


@jax.custom_vjp
def _padded_conv_impl(x, w, pad_arr):
    return _xla_conv(x, w, pad_arr.shape[0])


@jax.custom_vjp
def _wgrad_impl(x, g, pad_arr):
    return _xla_wgrad(x, g, pad_arr.shape[0], pad_arr.dtype)


def _padded_conv(x, w, pad: int, wgrad_dtype=None):
    """Stride-1 conv of NHWC `x` with HWIO `w`, zero padding `pad` (0 ≤ pad ≤ k − 1), custom gradient.

    XLA:CPU differentiates convolutions through slow generic kernels (the filter gradient of a
    64²×16→8 9×9 conv takes 18× its forward pass, the second derivatives the gradient penalty needs
    are worse). Here every derivative, of any order, is one of two forward convolutions:
    ∂x = conv(g, flipped Wᵀ, padding k − 1 − pad) and ∂W = `_xla_wgrad` (batch and channels swapped),
    whose own derivatives are again these two (`_wgrad_impl`). Same values to float rounding. `pad`
    travels as the length of a dummy array, and `wgrad_dtype` (None: x's dtype; the operand dtype of
    chunked filter-gradient products, at every order) as its dtype, so the custom VJPs stay pure
    functions of arrays.
    """
    return _padded_conv_impl(x, w, jnp.zeros((pad,), x.dtype if wgrad_dtype is None else wgrad_dtype))


def _padded_conv_fwd(x, w, pad_arr):
    # The value through the custom-VJP function itself, not `_xla_conv`: a second derivative
    # differentiates this rule too, and a raw conv here would get XLA's own filter gradient
    # (a huge-kernel conv at ~2 GFLOP/s; 30 % of the `paper` step before this was found).
    return _padded_conv_impl(x, w, pad_arr), (x, w, pad_arr)


def _input_grad(g, w, pad_arr, dtype):
    """∂x of `_xla_conv(x, w, pad)` for the output cotangent g: conv(g, flipped Wᵀ, k − 1 − pad),
    pad = len(pad_arr) (its dtype carried on), in `dtype`."""
    dx = _padded_conv_impl(g.astype(dtype), _flip_t(w),
                           jnp.zeros((w.shape[0] - 1 - pad_arr.shape[0],), pad_arr.dtype))
    return dx.astype(dtype)


def _padded_conv_bwd(res, g):
    x, w, pad_arr = res
    g = g.astype(x.dtype)
    dx = _input_grad(g, w, pad_arr, x.dtype)
    dw = _wgrad_impl(x, g, pad_arr)
    return dx, dw.astype(w.dtype), jnp.zeros_like(pad_arr)


def _wgrad_fwd(x, g, pad_arr):
    return _wgrad_impl(x, g, pad_arr), (x, g, pad_arr)   # see `_padded_conv_fwd`


def _wgrad_bwd(res, c):
    # dW[a, i, o] = Σ x_pad[n, h + a, i] g[n, h, o], so for a cotangent C of dW:
    # ∂g = conv(x, C, pad) and ∂x = conv(g, flipped Cᵀ, k − 1 − pad).
    x, g, pad_arr = res
    c = c.astype(x.dtype)
    dg = _padded_conv_impl(x, c, pad_arr).astype(g.dtype)
    return _input_grad(g, c, pad_arr, x.dtype), dg, jnp.zeros_like(pad_arr)


_padded_conv_impl.defvjp(_padded_conv_fwd, _padded_conv_bwd)
_wgrad_impl.defvjp(_wgrad_fwd, _wgrad_bwd)


def _stride2_conv(x, w, pad: int, wgrad_dtype=None):
    """Stride-2 conv (zero padding `pad`) as a stride-1 conv on the space-to-depth input.

    XLA:CPU's gradients of strided convolutions are dilated convolutions that run at a few GFLOP/s;
    here out[i] = Σ_a x[2i + a] w[a] becomes Σ_t X[i + t] W'[t] with X[m] = (x[2m], x[2m + 1]) and
    W'[t] = (w[2t], w[2t + 1]) (zero beyond k), a ⌈k/2⌉-tap valid conv on 4·Cin channels whose
    derivatives all go through `_padded_conv`. Same values to float rounding.
    """
    n, h, wd, cin = x.shape
    k, cout = w.shape[0], w.shape[3]
    ho, wo = (h + 2 * pad - k) // 2 + 1, (wd + 2 * pad - k) // 2 + 1
    kk = (k + 1) // 2
    hp, wp = h + 2 * pad, wd + 2 * pad
    x = jnp.pad(x, ((0, 0), (pad, pad + hp % 2), (pad, pad + wp % 2), (0, 0)))
    hp, wp = x.shape[1] // 2, x.shape[2] // 2
    xs = x.reshape(n, hp, 2, wp, 2, cin).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * cin)
    wz = jnp.pad(w, ((0, 2 * kk - k), (0, 2 * kk - k), (0, 0), (0, 0)))
    ws = wz.reshape(kk, 2, kk, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(kk, kk, 4 * cin, cout)
    return _padded_conv(xs, ws, 0, wgrad_dtype)[:, :ho, :wo]


def upconv2x(x, w, b=None, *, impl="xla", compute_dtype=jnp.float32, wgrad_dtype=None):
    """Valid stride-2 transposed conv with a 4×4 kernel: (N, H, W, Cin) → (N, 2H + 2, 2W + 2, Cout).

    Equals ``lax.conv_transpose(x, w, (2, 2), 'VALID', dimension_numbers=('NHWC','HWIO','NHWC'))``
    exactly, computed as one 2×2 conv with 4·Cout outputs (the four output phases) on the input
    padded by one, then interleaved (sub-pixel form).
    """
    if w.shape[:2] != (4, 4):
        raise ValueError("upconv2x needs a 4x4 kernel")
    cin, cout = w.shape[2], w.shape[3]
    # conv_transpose (no kernel flip): out[y] = sum_i x[i] * w[3 - (y - 2 i)]. With y = 2m + a and
    # xp = pad(x, 1): out[2m + a] = sum_t xp[m + t] * w[1 - a + 2 t]   (t = 0, 1).
    phases = []
    for a in (0, 1):
        for c in (0, 1):
            phases.append(w[np.array([1 - a, 3 - a])][:, np.array([1 - c, 3 - c])])  # (2, 2, Cin, Cout)
    w2 = jnp.stack(phases, axis=3).reshape(2, 2, cin, 4 * cout)  # channel = phase * Cout + o
    y = conv2d(x, w2, None, pad=1, impl=impl, compute_dtype=compute_dtype,
               wgrad_dtype=wgrad_dtype)  # (N, H+1, W+1, 4 Cout)
    n, h1, w1, _ = y.shape
    y = y.reshape(n, h1, w1, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h1, 2 * w1, cout)
    return y if b is None else y + b


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------

def _uniform(key, shape, lim):
    """U(−lim, lim) of `shape`, float32, deterministic per key.

    With a concrete key the numbers come from NumPy seeded by the key's data: eager `jax.random`
    would compile one program per parameter shape (tens of seconds for the paper generator). Under
    tracing (`nnx.eval_shape`, `jit`) it falls back to `jax.random.uniform` (abstract, no compute).
    """
    try:
        seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel()
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return jax.random.uniform(key, shape, jnp.float32, -lim, lim)
    rng = np.random.default_rng(seed)
    return jax.device_put(rng.uniform(-lim, lim, shape).astype(np.float32))


def _glorot(key, shape):
    k = shape[0] * shape[1]
    fan_in, fan_out = k * shape[2], k * shape[3]
    return _uniform(key, shape, math.sqrt(6.0 / (fan_in + fan_out)))


class Conv(nnx.Module):
    """Conv layer holding a (k, k, Cin, Cout) kernel and a (Cout,) bias.

    kind: "conv" (zero padding `pad`, stride `stride`), "up2" (valid stride-2 transposed conv, k=4).
    """

    def __init__(self, cin: int, cout: int, k: int, *, kind: str = "conv", stride: int = 1, pad: int = 0,
                 impl: str = "xla", compute_dtype: str = "float32", wgrad_dtype: str | None = None,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(_glorot(rngs.params(), (k, k, cin, cout)))
        self.bias = nnx.Param(jax.device_put(np.zeros((cout,), np.float32)))
        self.kind, self.stride, self.pad = kind, stride, pad
        self.impl, self.compute_dtype, self.wgrad_dtype = impl, compute_dtype, wgrad_dtype

    def __call__(self, x):
        dt = jnp.dtype(self.compute_dtype)
        wd = None if self.wgrad_dtype is None else jnp.dtype(self.wgrad_dtype)
        if self.kind == "up2":
            return upconv2x(x, self.kernel[...], self.bias[...], impl=self.impl, compute_dtype=dt, wgrad_dtype=wd)
        return conv2d(x, self.kernel[...], self.bias[...], stride=self.stride, pad=self.pad,
                      impl=self.impl, compute_dtype=dt, wgrad_dtype=wd)


class InstanceNorm(nnx.Module):
    """Per-sample normalisation over (H, W, C) with one scalar scale and offset."""

    def __init__(self):
        self.scale = nnx.Param(jax.device_put(np.ones((1,), np.float32)))
        self.offset = nnx.Param(jax.device_put(np.zeros((1,), np.float32)))

    def __call__(self, x):
        return instance_norm(x, self.scale[...], self.offset[...])


class _Act(nnx.Module):
    def __init__(self, norm: bool):
        self.norm = InstanceNorm() if norm else None

    def __call__(self, x):
        if self.norm is None:
            return leaky_relu(x)
        return norm_leaky_relu(x, self.norm.scale[...], self.norm.offset[...])


class Block(nnx.Module):
    """Basic block: transposed conv k (valid, = conv pad k − 1) → act → conv k (valid) → act. Size-preserving."""

    def __init__(self, cin, cout, k, *, norm=True, impl="xla", compute_dtype="float32", wgrad_dtype=None, rngs):
        kw = dict(impl=impl, compute_dtype=compute_dtype, wgrad_dtype=wgrad_dtype, rngs=rngs)
        self.c1 = Conv(cin, cout, k, pad=k - 1, **kw)
        self.a1 = _Act(norm)
        self.c2 = Conv(cout, cout, k, **kw)
        self.a2 = _Act(norm)

    def __call__(self, x):
        return self.a2(self.c2(self.a1(self.c1(x))))


class MultiKernel(nnx.Module):
    """Xception-style block: `cout` split evenly over `kernels`, one Block each, concatenated."""

    def __init__(self, cin, cout, kernels: Sequence[int], *, impl="xla", compute_dtype="float32", wgrad_dtype=None,
                 rngs):
        sub = cout // len(kernels)
        if sub * len(kernels) != cout:
            raise ValueError(f"width {cout} not divisible by {len(kernels)} kernel sizes")
        self.branches = nnx.List([Block(cin, sub, k, impl=impl, compute_dtype=compute_dtype, wgrad_dtype=wgrad_dtype,
                                        rngs=rngs)
                                  for k in kernels])

    def __call__(self, x):
        return jnp.concatenate([b(x) for b in self.branches], axis=-1)


class Down(nnx.Module):
    """Transposed conv 3 (stride 1, valid) → act → conv 3 stride 2 (valid) → act: H → H / 2."""

    def __init__(self, cin, cout, *, norm=True, impl="xla", compute_dtype="float32", wgrad_dtype=None, rngs):
        kw = dict(impl=impl, compute_dtype=compute_dtype, wgrad_dtype=wgrad_dtype, rngs=rngs)
        self.c1 = Conv(cin, cout, 3, pad=2, **kw)
        self.a1 = _Act(norm)
        self.c2 = Conv(cout, cout, 3, stride=2, **kw)
        self.a2 = _Act(norm)

    def __call__(self, x):
        return self.a2(self.c2(self.a1(self.c1(x))))


class Up(nnx.Module):
    """Transposed conv 4 stride 2 (valid, 2H + 2) → act → conv 3 (valid) → act: H → 2H."""

    def __init__(self, cin, cout, *, impl="xla", compute_dtype="float32", wgrad_dtype=None, rngs):
        kw = dict(impl=impl, compute_dtype=compute_dtype, wgrad_dtype=wgrad_dtype, rngs=rngs)
        self.c1 = Conv(cin, cout, 4, kind="up2", **kw)
        self.a1 = _Act(True)
        self.c2 = Conv(cout, cout, 3, **kw)
        self.a2 = _Act(True)

    def __call__(self, x):
        return self.a2(self.c2(self.a1(self.c1(x))))


class Generator(nnx.Module):
    """U-Net of depth 3 with multi-kernel blocks and a residual bottleneck; tanh output.

    Args:
      widths: channels at full, 1/2, 1/4 and 1/8 resolution (paper: 64, 64, 64, 128).
      bottleneck: channels of the residual bottleneck (paper: 192).
      n_res: residual blocks in the bottleneck (paper: 16).
      kernels_full / kernels_deep: multi-kernel sizes at full resolution / deeper (paper: 1,3,5,7 / 3,5).
      out_kernel, out_mid: output block kernel and hidden width (paper: 9, 8).
      impl, compute_dtype, wgrad_dtype: see module docstring (wgrad_dtype None: compute_dtype).
    Call: (N, H, W, 1) in [−1, 1], H and W divisible by 8 → (N, H, W, 1) in (−1, 1).
    """

    def __init__(self, *, widths=(64, 64, 64, 128), bottleneck=192, n_res=16, kernels_full=(1, 3, 5, 7),
                 kernels_deep=(3, 5), out_kernel=9, out_mid=8, impl="xla", compute_dtype="float32",
                 wgrad_dtype=None, rngs: nnx.Rngs):
        w0, w1, w2, w3 = widths
        kw = dict(impl=impl, compute_dtype=compute_dtype, wgrad_dtype=wgrad_dtype, rngs=rngs)
        self.in_block = Block(1, w0, 3, norm=False, **kw)
        self.enc0 = MultiKernel(w0, w0, kernels_full, **kw)
        self.down1, self.pre1, self.enc1 = Down(w0, w1, **kw), Block(w1, w1, 3, **kw), MultiKernel(w1, w1, kernels_deep, **kw)
        self.down2, self.pre2, self.enc2 = Down(w1, w2, **kw), Block(w2, w2, 3, **kw), MultiKernel(w2, w2, kernels_deep, **kw)
        self.down3, self.pre3, self.enc3 = Down(w2, w3, **kw), Block(w3, w3, 3, **kw), MultiKernel(w3, w3, kernels_deep, **kw)
        self.bott_in = Block(w3, bottleneck, 3, **kw)
        self.res = nnx.List([Block(bottleneck, bottleneck, 3, **kw) for _ in range(n_res)])
        self.up2, self.dpre2, self.dec2 = Up(bottleneck, w2, **kw), Block(w2, w2, 3, **kw), MultiKernel(w2, w2, kernels_deep, **kw)
        self.up1, self.dpre1, self.dec1 = Up(w2, w1, **kw), Block(w1, w1, 3, **kw), MultiKernel(w1, w1, kernels_deep, **kw)
        self.up0, self.dpre0, self.dec0 = Up(w1, w0, **kw), Block(w0, w0, 3, **kw), MultiKernel(w0, w0, kernels_full, **kw)
        self.out1 = Conv(w0, out_mid, out_kernel, pad=out_kernel - 1, **kw)
        self.out_act = _Act(True)
        self.out2 = Conv(out_mid, 1, out_kernel, **kw)

    def __call__(self, x):
        if x.shape[1] % 8 or x.shape[2] % 8:
            raise ValueError(f"Generator input H, W must be multiples of 8, got {x.shape}")
        e0 = self.enc0(self.in_block(x))
        e1 = self.enc1(self.pre1(self.down1(e0)))
        e2 = self.enc2(self.pre2(self.down2(e1)))
        e3 = self.enc3(self.pre3(self.down3(e2)))
        h = self.bott_in(e3)
        for blk in self.res:
            h = blk(h) + h
        d2 = self.dec2(self.dpre2(e2 + self.up2(h)))
        d1 = self.dec1(self.dpre1(e1 + self.up1(d2)))
        d0 = self.dec0(self.dpre0(e0 + self.up0(d1)))
        return jnp.tanh(self.out2(self.out_act(self.out1(d0))))


class Critic(nnx.Module):
    """WGAN critic: 4 down modules (first without norm), each followed by dropout, then a dense layer.

    Args:
      size: input side (static; the dense layer sees (size / 16)² · widths[-1] features).
      widths: channels of the 4 down modules (authors' code: 64, 64, 128, 128).
      dropout: drop rate after each module (paper: 0.25).
    Call: x (N, size, size, 1), key for dropout (None = no dropout) → (N,) scores.
    """

    def __init__(self, *, size=128, widths=(64, 64, 128, 128), dropout=0.25, impl="xla",
                 compute_dtype="float32", wgrad_dtype=None, rngs: nnx.Rngs):
        if size % 16:
            raise ValueError(f"critic size must be a multiple of 16, got {size}")
        kw = dict(impl=impl, compute_dtype=compute_dtype, wgrad_dtype=wgrad_dtype, rngs=rngs)
        cins = (1,) + tuple(widths[:-1])
        self.downs = nnx.List([Down(ci, co, norm=i > 0, **kw) for i, (ci, co) in enumerate(zip(cins, widths))])
        feat = (size // 16) ** 2 * widths[-1]
        lim = math.sqrt(6.0 / (feat + 1))
        self.dense_w = nnx.Param(_uniform(rngs.params(), (feat, 1), lim))
        self.dense_b = nnx.Param(jax.device_put(np.zeros((1,), np.float32)))
        self.size, self.dropout = size, dropout

    def __call__(self, x, *, key=None):
        if x.shape[1:3] != (self.size, self.size):
            raise ValueError(f"critic built for {self.size}x{self.size} inputs, got {x.shape}")
        keys = [None] * len(self.downs) if key is None else list(jax.random.split(key, len(self.downs)))
        for down, k in zip(self.downs, keys):
            x = down(x)
            if k is not None and self.dropout > 0:
                keep = jax.random.bernoulli(k, 1.0 - self.dropout, x.shape)
                x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
        x = x.reshape(x.shape[0], -1)
        return (x @ self.dense_w[...] + self.dense_b[...])[:, 0]


# --------------------------------------------------------------------------------------------------
# Fixed low-pass M_s2b
# --------------------------------------------------------------------------------------------------

def lowpass_kernel(*, size: int = 33, variance: float = 15.0) -> np.ndarray:
    """Normalised 2-D Gaussian `exp(−r² / (2·variance))` on a size × size grid centred at size // 2.

    The paper: "a normalized 2D Gaussian distribution with a variance of σ = 15.0"; the authors'
    code uses `exp(−r² / (σ + σ))`, i.e. variance 15 (std ≈ 3.87 px). Their `^` (XOR) bug is not
    reproduced. Returns float32 (size, size) summing to 1.
    """
    r = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * variance))
    return (g / g.sum()).astype(np.float32)


def lowpass(x, *, size: int = 33, variance: float = 15.0):
    """M_s2b: valid ('no padding') convolution of (N, H, W, 1) with `lowpass_kernel`, no bias.

    Computed separably (the Gaussian is separable and symmetric) — exact up to float rounding.
    Returns (N, H − size + 1, W − size + 1, 1).
    """
    r = np.arange(size, dtype=np.float64) - size // 2
    g1 = np.exp(-r ** 2 / (2.0 * variance))
    g1 = jnp.asarray(g1 / g1.sum(), jnp.float32)
    n, h, w, _ = x.shape
    ho, wo = h - size + 1, w - size + 1
    rows = jnp.stack([x[:, i:i + ho, :, 0] for i in range(size)], axis=-1) @ g1  # (N, ho, W)
    cols = jnp.stack([rows[:, :, j:j + wo] for j in range(size)], axis=-1) @ g1  # (N, ho, wo)
    return cols[..., None]


# --------------------------------------------------------------------------------------------------
# Sign flips (inversion guard)
# --------------------------------------------------------------------------------------------------

def flip_output_sign(gen: Generator) -> None:
    """Negate the generator's output exactly (tanh is odd: negate the last conv's kernel and bias)."""
    gen.out2.kernel[...] = -gen.out2.kernel[...]
    gen.out2.bias[...] = -gen.out2.bias[...]


def flip_input_sign(gen: Generator) -> None:
    """Make `gen(x)` behave as the old `gen(−x)` (negate the first conv's kernel; its bias stays)."""
    gen.in_block.c1.kernel[...] = -gen.in_block.c1.kernel[...]
