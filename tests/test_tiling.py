"""Tiling (issue: Scale): exact blending, no seams, tiled == untiled away from tile borders,
bucketed shapes compile once, out-of-memory falls back to smaller tiles, 1 vs 4 devices."""
import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxdn import tiling
from jaxdn.errors import InputError


def gaussian_blur_jax(x, sigma=2.0, radius=8):
    """Separable Gaussian blur of a batch (N, H, W) with reflect padding inside each tile."""
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), jnp.float32)
    xp = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    n = 2 * radius + 1
    rows = sum(k[i] * xp[:, i:i + x.shape[1], :] for i in range(n))
    return sum(k[i] * rows[:, :, i:i + x.shape[2]] for i in range(n))


def box3(x):
    """3x3 mean with edge padding (radius 1)."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return sum(xp[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0


def tile_edge_distance(n, t, overlap):
    """Distance of each image pixel (along one axis) to the nearest tile edge of the tiling grid."""
    s = t - overlap
    starts = np.arange(-overlap, n + t, s)
    edges = np.concatenate([starts, starts + t - 1])
    return np.abs(np.arange(n)[:, None] - edges[None, :]).min(axis=1)


def smooth_field(shape, seed=0, sigma=6.0):
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return ((f - f.min()) / (f.max() - f.min())).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 150, 203), (1, 17, 33), (97, 61), (1, 64, 64), (1, 5, 300)])
def test_identity_reconstructs_exactly(shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    y = tiling.tiled_apply(lambda a: a, x, tile=64, overlap=16, batch_size=3)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x, rtol=2e-7, atol=2e-7)


def test_constant_image_stays_constant_under_blur():
    x = np.full((1, 200, 170), 0.37, np.float32)
    y = tiling.tiled_apply(gaussian_blur_jax, x, tile=64, overlap=24, batch_size=4)
    np.testing.assert_allclose(y, 0.37, atol=2e-6)


def test_local_fn_tiled_equals_untiled_away_from_tile_borders():
    x = np.random.default_rng(2).random((1, 130, 190)).astype(np.float32)
    t, o = 64, 8
    y = tiling.tiled_apply(box3, x, tile=t, overlap=o, batch_size=5)
    ref = np.asarray(box3(jnp.asarray(x)))
    dy, dx = tile_edge_distance(130, t, o), tile_edge_distance(190, t, o)
    away = (dy[:, None] >= 1) & (dx[None, :] >= 1)
    away[:1] = away[-1:] = False
    away[:, :1] = away[:, -1:] = False
    assert away.mean() > 0.8
    np.testing.assert_allclose(y[0][away], ref[0][away], rtol=1e-5, atol=1e-6)


def tile_coverage(n, t, overlap):
    """How many tiles of the grid cover each image pixel along one axis (1 in centres, 2 in seams)."""
    s = t - overlap
    starts = np.arange(-overlap, n + t, s)
    p = np.arange(n)[:, None]
    return ((p >= starts[None]) & (p < starts[None] + t)).sum(axis=1)


def test_blur_seam_free_error_at_borders_as_small_as_in_centres():
    x = smooth_field((1, 256, 256), seed=3)
    t, o, margin = 96, 32, 12  # blur radius 8 = overlap // 4: exact
    ref = ndimage.gaussian_filter(x[0].astype(np.float64), 2.0, mode="reflect", truncate=4.0)
    cy, cx = tile_coverage(256, t, o), tile_coverage(256, t, o)
    inner = np.zeros((256, 256), bool)
    inner[margin:-margin, margin:-margin] = True
    seam = inner & ((cy[:, None] > 1) | (cx[None, :] > 1))
    centre = inner & (cy[:, None] == 1) & (cx[None, :] == 1)
    assert seam.sum() > 1000 and centre.sum() > 1000

    def blurred(overlap):
        return tiling.tiled_apply(gaussian_blur_jax, x, tile=t, overlap=overlap, batch_size=4)[0]

    err = np.abs(blurred(o) - ref)
    seam_err, centre_err = err[seam].max(), err[centre].max()
    assert centre_err < 1e-5
    assert seam_err <= 2 * centre_err + 1e-6, (seam_err, centre_err)
    # Control: hard tiles without overlap show seams that this test would catch.
    hard = np.abs(blurred(0) - ref)[inner].max()
    assert hard > 1e-3 > 100 * seam_err, (hard, seam_err)


def test_one_compilation_for_sizes_in_the_same_bucket():
    traces = []

    def fn(x):
        traces.append(x.shape)
        return x * 2.0

    for shape in [(1, 300, 300), (2, 211, 400), (1, 129, 1000), (3, 260, 260)]:
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        np.testing.assert_allclose(tiling.tiled_apply(fn, x, tile=128, overlap=16, batch_size=4), 2 * x,
                                   rtol=1e-6)
    assert len(traces) == 1, traces


def test_buckets_and_choose_tile():
    b = tiling.tile_buckets(1024)
    assert b[:6] == [32, 48, 64, 96, 128, 192] and all(v % 16 == 0 for v in b)
    assert tiling.bucket_floor(200) == 192 and tiling.bucket_ceil(200) == 256
    small = tiling.choose_tile((4096, 4096), bytes_per_pixel=400, memory_budget=64 << 20, batch_size=8)
    big = tiling.choose_tile((4096, 4096), bytes_per_pixel=400, memory_budget=1 << 30, batch_size=8)
    assert small in b and big in b and small < big
    assert 8 * small ** 2 * 400 <= 64 << 20
    assert tiling.choose_tile((40, 50), bytes_per_pixel=4, memory_budget=1 << 30) == tiling.bucket_ceil(50 + 64)
    assert tiling.default_memory_budget() > 0
    with pytest.raises(InputError):
        tiling.choose_tile((10, 10), bytes_per_pixel=0)


def test_tile_none_uses_memory_budget():
    x = np.random.default_rng(0).random((1, 300, 300)).astype(np.float32)
    seen = []

    def fn(a):
        seen.append(a.shape)
        return a

    y = tiling.tiled_apply(fn, x, tile=None, overlap=8, batch_size=2, memory_budget=2 * 64 * 64 * 100,
                           bytes_per_pixel=100)
    np.testing.assert_allclose(y, x, atol=2e-7)
    assert seen[0][1:] == (64, 64)


def test_out_of_memory_falls_back_to_smaller_tiles():
    from jax.errors import JaxRuntimeError
    sizes = []

    def greedy(x):
        sizes.append(x.shape[-1])
        if x.shape[-1] > 64:
            raise JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return x + 1.0

    x = np.random.default_rng(0).random((1, 200, 150)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        y = tiling.tiled_apply(greedy, x, tile=256, overlap=16, batch_size=2)
    np.testing.assert_allclose(y, x + 1.0, atol=1e-6)
    assert sizes[0] > 64 and sizes[-1] == 64


def test_other_errors_are_not_swallowed_and_bad_shapes_refused():
    def broken(x):
        raise ValueError("bug in fn")

    with pytest.raises(ValueError, match="bug in fn"):
        tiling.tiled_apply(broken, np.zeros((1, 40, 40), np.float32), tile=64)
    with pytest.raises(InputError):
        tiling.tiled_apply(lambda a: a, np.zeros((2, 3, 40, 40), np.float32))
    with pytest.raises(InputError, match="same shape"):
        tiling.tiled_apply(lambda a: a[:, 1:, 1:], np.zeros((1, 40, 40), np.float32), tile=64)


def test_host_side_fn_without_jit():
    calls = []

    def host(batch):
        assert isinstance(batch, np.ndarray) and batch.shape == (3, 64, 64)
        calls.append(1)
        return ndimage.uniform_filter(batch, size=(1, 3, 3), mode="nearest")

    x = np.random.default_rng(4).random((130, 150)).astype(np.float32)
    y = tiling.tiled_apply(host, x, tile=64, overlap=8, batch_size=3, jit=False)
    ref = ndimage.uniform_filter(x, size=3, mode="reflect")
    np.testing.assert_allclose(y[1:-1, 1:-1], ref[1:-1, 1:-1], rtol=1e-5, atol=1e-6)
    assert len(calls) > 1


def test_sharded_map_pads_and_crops():
    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    y = tiling.sharded_map(lambda a: a * 3.0, x)
    assert y.shape == (7, 3)
    np.testing.assert_allclose(np.asarray(y), 3 * x)


_DEVICE_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np, jax, jax.numpy as jnp
    from jaxdn import tiling

    def box3(x):
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
        return sum(xp[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0

    x = np.random.default_rng(5).random((2, 150, 170)).astype(np.float32)
    y = tiling.tiled_apply(box3, x, tile=64, overlap=16, batch_size=3)
    z = np.asarray(tiling.sharded_map(lambda a: jnp.tanh(a) * 2.0, x[0]))
    np.save({out!r}, np.concatenate([y.ravel(), z.ravel()]))
    print(json.dumps({{"devices": jax.local_device_count()}}))
""")


def _run_devices(n, out):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    code = _DEVICE_SCRIPT.format(out=str(out))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["devices"] == n
    return np.load(out)


def test_same_result_on_1_and_4_devices(tmp_path):
    one = _run_devices(1, tmp_path / "one.npy")
    four = _run_devices(4, tmp_path / "four.npy")
    np.testing.assert_allclose(four, one, rtol=1e-6, atol=1e-6)
