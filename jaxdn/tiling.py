"""Any image size in bounded memory: overlapping tiles, smooth blending, bucketed shapes, devices.

Every jaxdn method that works on single frames runs its network through `tiled_apply`:

    out = tiled_apply(fn, images, tile=256, overlap=32, batch_size=8)   # images (B, H, W)

`fn` maps a float32 batch (N, t, t) to (N, t, t) (a pure JAX function; it is jitted here). The
image is reflect-padded so that border tiles are full size, cut into tiles on a regular grid with
stride ``t - overlap``, and the outputs are blended with a separable window that is flat in the
tile centre, ramps as sin² over the overlap and is 0 on the outer quarter of the overlap (where a
tile-local `fn` sees the artificial tile edge); the weighted sum is divided by the summed weights,
so an identity `fn` reconstructs the image exactly and there are no seams. A local `fn` with
receptive-field radius r gives exactly the untiled result when ``overlap >= 4 r``.

Compilation is reused: the tile side is snapped to a small bucket set (32, 48, 64, 96, 128, 192,
256, 384, ... — powers of two and 1.5× powers of two, all multiples of 16), and tiles always go to
`fn` in batches of exactly `batch_size` (the last one padded), so every image size that uses the
same tile bucket runs the same compiled function.

Devices: `sharded_map(fn, batch)` splits the leading axis of a batch over all local devices (a
1-axis ``'data'`` mesh from `jaxdn.sharding`), padding N up to a multiple of the device count and
cropping the result; `tiled_apply` uses it for its tile batches. Methods can use it directly for
frame batches:

    from jaxdn.tiling import sharded_map
    out = sharded_map(model_fn, frames)           # frames (N, H, W) -> (N, H, W), jax.Array

With one device it is a plain jitted call.

Memory: `choose_tile(shape, bytes_per_pixel=..., memory_budget=...)` picks the largest bucket
whose tile batch fits the budget (default: `default_memory_budget()`, a safe fraction of free host
memory and, where the device reports it, of free device memory). If the device still runs out of
memory (XLA ``RESOURCE_EXHAUSTED``), `tiled_apply` warns and retries with half the tile side.
"""
from __future__ import annotations

import math
import warnings
import weakref
from typing import Callable

import numpy as np

from .errors import InputError

MIN_TILE = 32
_HOST_FRACTION = 0.5     # of available host memory
_DEVICE_FRACTION = 0.7   # of free device memory (GPU/TPU)


# --------------------------------------------------------------------------------------------
# Tile sizes and memory budget
# --------------------------------------------------------------------------------------------

def tile_buckets(max_size: int = 1 << 16) -> list[int]:
    """Allowed tile sides, ascending: 32, 48, 64, 96, 128, 192, 256, 384, ... up to `max_size`."""
    out, k = [], MIN_TILE
    while k <= max_size:
        out.append(k)
        if k + k // 2 <= max_size:
            out.append(k + k // 2)
        k *= 2
    return out


def bucket_floor(n: int) -> int:
    """Largest bucket <= n (at least `MIN_TILE`)."""
    return max([b for b in tile_buckets(max(n, MIN_TILE)) if b <= max(n, MIN_TILE)])


def bucket_ceil(n: int) -> int:
    """Smallest bucket >= n."""
    return min(b for b in tile_buckets(2 * max(n, MIN_TILE)) if b >= n)


def default_memory_budget() -> int:
    """Bytes jaxdn may use for one batch of work: half the available host memory, capped by 70 %
    of the free memory of the first local device when it reports it (GPU/TPU; CPU does not)."""
    import psutil
    budget = int(psutil.virtual_memory().available * _HOST_FRACTION)
    try:
        import jax
        stats = jax.local_devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
            budget = min(budget, int(free * _DEVICE_FRACTION))
    except Exception:  # memory_stats is optional per backend
        pass
    return max(budget, 1 << 20)


def choose_tile(shape: tuple[int, ...], *, bytes_per_pixel: float, memory_budget: int | None = None,
                batch_size: int = 8, overlap: int = 32, max_tile: int = 4096) -> int:
    """Largest bucketed tile side whose batch fits the memory budget, no larger than the image needs.

    Args:
      shape: image shape (H, W) or (B, H, W).
      bytes_per_pixel: peak working memory of `fn` per tile pixel (input, activations, output).
      memory_budget: bytes; default `default_memory_budget()`.
      batch_size: tiles per call of `fn`.
      overlap: tile overlap in pixels.
      max_tile: upper bound for the tile side.
    Returns:
      The tile side in pixels (a bucket, at least `MIN_TILE`).
    """
    if bytes_per_pixel <= 0:
        raise InputError("choose_tile: bytes_per_pixel must be positive")
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    side = int(math.isqrt(max(int(budget / (bytes_per_pixel * batch_size)), 1)))
    h, w = shape[-2:]
    need = bucket_ceil(max(h, w) + 2 * overlap)
    return max(MIN_TILE, min(bucket_floor(min(side, max_tile)), need))


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------

_JIT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _local_mesh():
    import jax
    from .sharding import data_mesh
    return data_mesh(jax.local_devices())


def _jitted(fn: Callable, mesh):
    """One jitted, sharded version of `fn` per (fn, mesh) — kept so repeated calls never retrace."""
    import jax
    from .sharding import batch_sharding, calls_in_mesh
    try:
        per_fn = _JIT_CACHE.setdefault(fn, {})
    except TypeError:  # not weak-referenceable: no caching beyond jax's own
        per_fn = {}
    key = (tuple(d.id for d in mesh.devices.flat),)
    if key not in per_fn:
        sharding = batch_sharding(mesh)
        per_fn[key] = calls_in_mesh(jax.jit(fn, in_shardings=sharding, out_shardings=sharding), mesh)
    return per_fn[key]


def local_device_count() -> int:
    import jax
    return jax.local_device_count()


def sharded_map(fn: Callable, batch, *, mesh=None):
    """Run `fn` on a batch split over the leading axis across all local devices.

    Args:
      fn: pure JAX function mapping (N, ...) -> (N, ...) row-wise (jitted here, cached per fn).
      batch: array (N, ...), host or device.
      mesh: a `jaxdn.sharding.data_mesh`; default all local devices.
    Returns:
      `jax.Array` (N, ...): `fn(batch)`; N is padded (last row repeated) to a multiple of the
      device count for the call and cropped afterwards, so results do not depend on the number of
      devices (up to float reassociation inside `fn`).
    """
    from .sharding import shard_batch
    mesh = _local_mesh() if mesh is None else mesh
    n = int(np.shape(batch)[0])
    out = _jitted(fn, mesh)(shard_batch(batch, mesh, pad=True))
    return out if out.shape[0] == n else out[:n]


# --------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------

def _window_1d(t: int, overlap: int) -> np.ndarray:
    """Blend window: 0 over the outer ``overlap // 4`` pixels, a sin² ramp, flat 1 in the centre.

    Adjacent tiles at stride ``t - overlap`` sum to exactly 1 in their overlap (sin² + cos² = 1).
    The zero margin hides the pixels where a tile-local `fn` sees the artificial tile boundary, so
    for a local `fn` with receptive-field radius r <= overlap // 4 tiling is exact.
    """
    w = np.ones(t, np.float64)
    if overlap > 0:
        margin = overlap // 4
        r = overlap - 2 * margin
        ramp = np.sin(0.5 * np.pi * (np.arange(r) + 0.5) / r) ** 2
        up = np.concatenate([np.zeros(margin), ramp, np.ones(margin)])
        w[:overlap] = up
        w[t - overlap:] = up[::-1]
    return w


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices into an axis of length n with mirror reflection (numpy 'reflect'), any range."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    k = np.mod(idx, period)
    return np.where(k >= n, period - k, k)


def _fold(tiles: np.ndarray, stride: int) -> np.ndarray:
    """Overlap-add along axis 0 -> axis -1: (n, ..., t) tiles at `stride` -> (..., (n-1)*stride + t).

    Requires t - stride <= stride (each output sample covered by at most two tiles).
    """
    n, t = tiles.shape[0], tiles.shape[-1]
    o = t - stride
    moved = np.moveaxis(tiles, 0, -2)                     # (..., n, t)
    out = np.zeros(moved.shape[:-2] + (n + 1, stride), tiles.dtype)
    out[..., :n, :] += moved[..., :stride]
    if o:
        out[..., 1:, :o] += moved[..., stride:]
    return out.reshape(moved.shape[:-2] + ((n + 1) * stride,))[..., :(n - 1) * stride + t]


def _is_oom(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text


class _Weighted:
    """fn followed by multiplication with the 2-D window (jitted together, cached per (fn, t, o))."""

    _cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    @classmethod
    def get(cls, fn: Callable, t: int, overlap: int) -> Callable:
        try:
            per_fn = cls._cache.setdefault(fn, {})
        except TypeError:
            per_fn = {}
        key = (t, overlap)
        if key not in per_fn:
            w1 = _window_1d(t, overlap).astype(np.float32)
            w2 = np.outer(w1, w1)

            def weighted(x):
                import jax.numpy as jnp
                y = fn(x)
                if tuple(y.shape) != tuple(x.shape):
                    raise InputError(f"tiled_apply: fn must map tiles {tuple(x.shape)} to the same shape, "
                                     f"got {tuple(y.shape)}")
                return jnp.asarray(y, jnp.float32) * w2

            per_fn[key] = weighted
        return per_fn[key]


def tiled_apply(fn: Callable, images, *, tile: int | None = 256, overlap: int = 32, batch_size: int = 8,
                progress: bool = False, memory_budget: int | None = None,
                bytes_per_pixel: float | None = None, jit: bool = True) -> np.ndarray:
    """Apply a tile-wise function to images of any size with overlapping, smoothly blended tiles.

    Args:
      fn: pure JAX function, float32 (N, t, t) -> (N, t, t) (N = `batch_size` rounded up to a
        multiple of the local device count). Jitted here; one compilation per tile bucket.
      images: (B, H, W) or (H, W) array, any real dtype (computed in float32).
      tile: requested tile side in pixels, snapped down to a bucket (see `tile_buckets`) and not
        larger than the image needs; None chooses it from `memory_budget` and `bytes_per_pixel`.
      overlap: overlap between neighbouring tiles in pixels (clamped to tile // 2); the blend
        window ramps over it. ``overlap >= 4 * r`` for a receptive-field radius r makes a local
        `fn` tile exactly; smaller overlaps still blend without visible seams.
      batch_size: tiles per call of `fn` (the last batch is zero-padded to this size).
      progress: show a progress bar over tile batches.
      memory_budget: bytes, for `tile=None` (default `default_memory_budget()`).
      bytes_per_pixel: working memory of `fn` per tile pixel, for `tile=None` (default 64).
      jit: False for a host-side `fn` (NumPy in, array out; e.g. a whole method pipeline such as
        REUCID applied to a batch of tiles as if they were frames): called as is, not sharded.
    Returns:
      float32 NumPy array with the shape of `images`.
    Raises:
      InputError: bad shapes or arguments. A device out-of-memory error is retried with half the
      tile side (with a warning) down to `MIN_TILE`.
    """
    arr = np.asarray(images)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise InputError(f"tiled_apply expects (H, W) or (B, H, W) images, got shape {arr.shape}")
    squeeze = arr.ndim == 2
    arr = arr[None] if squeeze else arr
    if batch_size < 1 or overlap < 0:
        raise InputError("tiled_apply: batch_size must be >= 1 and overlap >= 0")
    if tile is None:
        tile = choose_tile(arr.shape, bytes_per_pixel=bytes_per_pixel or 64.0, memory_budget=memory_budget,
                           batch_size=batch_size, overlap=overlap)
    t = min(bucket_floor(int(tile)), bucket_ceil(max(arr.shape[-2:]) + 2 * min(overlap, int(tile) // 2)))
    while True:
        try:
            out = _tiled(fn, arr, t=t, overlap=min(overlap, t // 2), batch_size=batch_size, progress=progress,
                         jit=jit)
            break
        except Exception as err:  # noqa: BLE001 - only out-of-memory is retried
            if not _is_oom(err) or t <= MIN_TILE:
                raise
            new = bucket_floor(t // 2)
            warnings.warn(f"out of memory with {t}x{t} tiles; retrying with {new}x{new}", RuntimeWarning,
                          stacklevel=2)
            t = new
    return out[0] if squeeze else out


def _tiled(fn, arr: np.ndarray, *, t: int, overlap: int, batch_size: int, progress: bool,
           jit: bool = True) -> np.ndarray:
    from tqdm import tqdm

    n_img, h, w = arr.shape
    o, s = overlap, t - overlap
    ny = max(1, math.ceil((h + 2 * o - t) / s) + 1)
    nx = max(1, math.ceil((w + 2 * o - t) / s) + 1)
    hp, wp = (ny - 1) * s + t, (nx - 1) * s + t          # padded extent covered by tiles
    cols = _reflect_index(np.arange(wp) - o, w)
    w1 = _window_1d(t, o)
    norm_y = _fold(np.broadcast_to(w1, (ny, t)), s)[o:o + h]
    norm_x = _fold(np.broadcast_to(w1, (nx, t)), s)[o:o + w]
    inv_y = (1.0 / norm_y).astype(np.float32)[:, None]   # separable normalisation: no (H, W) temporary
    inv_x = (1.0 / norm_x).astype(np.float32)[None, :]

    if jit:
        from .sharding import mesh_size
        mesh = _local_mesh()
        n_dev = mesh_size(mesh)
        nb = -(-batch_size // n_dev) * n_dev
        weighted = _Weighted.get(fn, t, o)
        run = lambda batch: np.asarray(sharded_map(weighted, batch, mesh=mesh))  # noqa: E731
    else:
        nb = batch_size
        w2 = np.outer(w1, w1).astype(np.float32)

        def run(batch):
            y = np.asarray(fn(batch), np.float32)
            if y.shape != batch.shape:
                raise InputError(f"tiled_apply: fn must map tiles {batch.shape} to the same shape, got {y.shape}")
            return y * w2

    out = np.empty(arr.shape, np.float32)
    acc = np.zeros((hp, wp), np.float32)
    pending: list[np.ndarray] = []   # finished weighted tiles, in (image, row, column) order
    state = {"img": 0, "row": 0, "acc": acc}

    def strips():
        for b in range(n_img):
            for i in range(ny):
                rows = _reflect_index(np.arange(i * s, i * s + t) - o, h)
                strip = np.asarray(arr[b][np.ix_(rows, cols)], np.float32)          # (t, wp)
                win = np.lib.stride_tricks.sliding_window_view(strip, t, axis=1)[:, ::s]  # (t, nx, t)
                yield win.transpose(1, 0, 2)                                         # (nx, t, t)

    def consume(tiles: np.ndarray) -> None:
        pending.append(tiles)
        have = sum(len(p) for p in pending)
        if have < nx:
            return
        flat = np.concatenate(pending) if len(pending) > 1 else pending[0]
        pending.clear()
        k = 0
        while len(flat) - k >= nx:
            row = _fold(flat[k:k + nx], s)                  # (t, wp)
            i = state["row"]
            state["acc"][i * s:i * s + t] += row
            k += nx
            state["row"] += 1
            if state["row"] == ny:
                b = state["img"]
                np.multiply(state["acc"][o:o + h, o:o + w], inv_y, out=out[b])
                out[b] *= inv_x
                state["acc"][:] = 0
                state["img"] += 1
                state["row"] = 0
        if k < len(flat):
            pending.append(flat[k:])

    total = n_img * ny * nx
    n_batches = -(-total // nb)
    bar = tqdm(total=n_batches, desc="tiles", unit="batch", disable=not progress, leave=False)
    buf: list[np.ndarray] = []
    count = 0
    for tiles in strips():
        buf.append(tiles)
        count += len(tiles)
        while count >= nb:
            cat = np.concatenate(buf)
            batch, rest = cat[:nb], cat[nb:]
            consume(run(batch))
            bar.update(1)
            buf, count = ([rest] if len(rest) else []), len(rest)
    if count:
        cat = np.concatenate(buf)
        batch = np.zeros((nb, t, t), np.float32)
        batch[:count] = cat
        consume(run(batch)[:count])
        bar.update(1)
    bar.close()
    return out
