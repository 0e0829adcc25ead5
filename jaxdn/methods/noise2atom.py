"""Noise2Atom inference: denoise STEM frames with a trained M_s2c generator.

`denoise(data, weights=...)` preprocesses the stack exactly as training did (optional polynomial
background removal, min–max of the stack to [−1, 1]), runs the generator over overlapping blended
tiles (`jaxdn.tiling.tiled_apply`: any frame size in bounded memory, tile sides multiples of 16)
and maps its tanh output to [0, 1].
The output is an *atom map* (clean-domain image: Gaussian columns on a dark background), not the
input's intensity scale.

``refine`` (beyond the paper) turns the atom map into a column model of the data itself: the map's
columns (`metrics.find_atoms`) seed a least-squares fit of Gaussian columns to the *input* frame
(`jaxdn.columns.fit_columns_stack`: positions, amplitudes, one probe σ per frame, polynomial
background; columns the data does not support are dropped), and the output is the rendered columns
in the input's units with the background removed. ``refine="movie"`` uses the neighbouring
frames too (±`track_window`, after rigid drift correction, `columns.movie_drift` with steps below
half the column spacing): the seeds come from the drift-registered mean of the atom maps
(`columns.registered_mean`: a column missed or a false one in one frame's map is outvoted), the
positions are fitted to the drift-registered mean of the input frames (the dose of the whole window;
columns the seeds miss are added from that fit's residual, `columns.missed_columns`, and those that
most neighbouring frames' fits hold but frame t's misses from theirs, `columns.columns_from_neighbours`),
each column's position is averaged along its track in the other frames (`columns.smooth_in_time`;
columns that move more than σ between frames are not averaged), σ and the amplitudes are fitted
again at those positions, and the amplitudes averaged along the tracks. Streamed stacks get the
frames this needs around each chunk (`stream_halo`).
"""
from __future__ import annotations

import functools
import numpy as np

from ..errors import InputError

MIN_SIZE = 16
REFINE_MODES = ("none", "frame", "movie")
STATS_CHUNK = 16   # frames read at a time by `stream_options`
FIND_MISSED = 3    # rounds of `columns.missed_columns` after refine=movie's first column fit
# σ: refine=movie adds the columns its neighbouring frames hold but frame t's fit misses only this far inside
# frame t's edges (`columns.columns_from_neighbours`); nearer the edge `columns.columns_beyond_edges` decides
NEIGHBOUR_MARGIN = 1.0


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float):
    """(jitted fn (N, h, w) in [−1, 1] → (N, h, w) atom map in [0, 1], meta) from a weights file.

    The model is built abstractly, never initialised; the function object is cached so that
    `tiled_apply` reuses its compilation for every call with the same weights and tile bucket.
    """
    import jax
    from flax import nnx
    from ..train.noise2atom import _trio
    from ..weights_io import load_weights, read_meta
    meta = read_meta(path)
    if meta.get("method") != "noise2atom" or "config" not in meta:
        raise InputError(f"{path} is not a noise2atom weights file")
    nets = load_weights(path, lambda: _trio(meta["config"]))
    graphdef, state = nnx.split(nets.s2c)

    @jax.jit
    def fn(x):
        return (nnx.merge(graphdef, state)(x[..., None])[..., 0] + 1.0) * 0.5

    return fn, meta


def load_generator(weights=None):
    """(fn, meta) for `weights` (None/"default": shipped; a workdir; a .npz): fn maps preprocessed
    frames (N, h, w) in [−1, 1], h and w multiples of 8, to the atom map (N, h, w) in [0, 1]."""
    from ..train.noise2atom import resolve_weights
    path = resolve_weights(weights)
    return _load(str(path.resolve()), path.stat().st_mtime)


def stream_options(lazy, options, *, weights=None):
    """Streamed stacks: fix the normalisation range of the whole stack for every chunk.

    Inference min–max normalises the (background-removed) stack as a whole; a stack streamed in
    chunks would otherwise get one range per chunk. One bounded-memory pass over the stack
    (`STATS_CHUNK` frames at a time) gives ``value_range``.
    """
    options = dict(options)
    if options.get("value_range") is None:
        from ..train.noise2atom import remove_background
        order = _background_order(options.get("background_order", "auto"), weights)
        lo, hi = np.inf, -np.inf
        for start in range(0, lazy.n_frames, STATS_CHUNK):
            block = np.asarray(lazy.frames(start, start + STATS_CHUNK), np.float32)
            block = block[np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)]
            if not block.shape[0]:
                continue
            if order is not None:
                block = remove_background(block, order=order)
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        if np.isfinite(lo) and np.isfinite(hi):
            options["value_range"] = (lo, hi)
    return options


def stream_halo(options) -> int:
    """Frames of context a streamed chunk needs on either side (`jaxdn.stream`): ``refine="movie"``
    reaches ±`track_window` frames four times over (seeds, columns from neighbours, tracks, amplitudes);
    0 otherwise."""
    if options.get("refine") != "movie":
        return 0
    window = options.get("track_window")
    return 4 * (2 if window is None else int(window))


def _background_order(background_order, weights):
    """The polynomial order to remove: "auto" = the one the weights were trained with (None: none)."""
    order = load_generator(weights)[1].get("background_order") if background_order == "auto" else background_order
    return None if order in (None, "none", "None") else int(order)


def denoise(data, *, weights=None, seed: int = 0, progress: bool = False, batch_size: int = 4,
            tile: int = 256, overlap: int = 32, background_order: int | str | None = "auto",
            refine: str = "none", track_window: int = 2, value_range=None, **options) -> np.ndarray:
    """Denoise (H, W) or (T, H, W) float32 frames with Noise2Atom.

    Args:
      data: float32 (H, W) or (T, H, W); every frame of a stack is normalised with the stack's range.
      weights: a weights `.npz`, a training workdir, or None/"default" for the shipped weights.
      seed: unused (inference is deterministic); accepted for the common method signature.
      progress: show a progress bar over tile batches.
      batch_size: tiles per generator call.
      tile, overlap: frames larger than `tile` px are denoised in overlapping blended tiles
        (`jaxdn.tiling.tiled_apply`; bounded memory for any frame size, sharded over local devices).
      background_order: polynomial background removed before denoising; "auto" = as in training.
      refine: "none" (the atom map), "frame" (Gaussian columns fitted to each input frame at the
        map's columns) or "movie" ("frame" + column tracks averaged over ±`track_window` frames).
      track_window: frames on each side averaged by refine="movie".
      value_range: (lo, hi) of the background-removed input mapped to [−1, 1] (default: the stack's
        own min and max; set by `stream_options` so that streamed chunks agree).
    Returns:
      float32 array of the input's shape: the atom map in [0, 1], or with `refine` the fitted
      columns in the input's units (background removed).
    """
    if options:
        raise InputError(f"noise2atom: unknown options {', '.join(sorted(options))}")
    if refine not in REFINE_MODES:
        raise InputError(f"noise2atom: refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
    if int(track_window) < 0:
        raise InputError(f"noise2atom: track_window must be >= 0, got {track_window}")
    arr = np.asarray(data, np.float32)
    if arr.ndim not in (2, 3):
        raise InputError(f"noise2atom expects (H, W) or (T, H, W), got shape {arr.shape}")
    h, w = arr.shape[-2:]
    if min(h, w) < MIN_SIZE:
        raise InputError(f"image is {h}x{w} pixels but noise2atom needs at least {MIN_SIZE}x{MIN_SIZE}")
    if not np.isfinite(arr).all():
        raise InputError("image has NaN/inf pixels; pass --fill-nonfinite")
    fn, _ = load_generator(weights)
    from ..tiling import tiled_apply
    from ..train.noise2atom import preprocess
    order = _background_order(background_order, weights)
    frames = preprocess(arr.reshape((-1, h, w)), background_order=order, value_range=value_range)
    out = tiled_apply(fn, frames, tile=int(tile), overlap=int(overlap), batch_size=max(1, int(batch_size)),
                      progress=progress)
    out = np.clip(out, 0.0, 1.0)
    if refine != "none":
        out = refine_columns(arr.reshape((-1, h, w)), out, mode=refine, track_window=int(track_window),
                             background_order=2 if order is None else max(order, 0), progress=progress)
    return out.reshape(arr.shape).astype(np.float32)


def fit_movie_columns(data, *, weights=None, refine: str = "movie", track_window: int = 2,
                      background_order: int | str | None = "auto", progress: bool = False, atom_maps=None):
    """Fitted columns of every frame (the numbers behind ``refine``): a list of `columns.Columns`.

    data: (H, W) or (T, H, W) frames in any units; atom_maps: their Noise2Atom output (computed with
    `weights` when None). refine: "frame" or "movie". `columns.columns_table` turns the result
    into rows (frame, row, col, amplitude, sigma) for a CSV.
    """
    from .. import columns as C
    from ..metrics import find_atoms
    if refine not in ("frame", "movie"):
        raise InputError(f"noise2atom: refine must be 'frame' or 'movie' for a column fit, got {refine!r}")
    frames = np.asarray(data, np.float32)
    frames = frames[None] if frames.ndim == 2 else frames
    if atom_maps is None:
        atom_maps = denoise(frames, weights=weights, background_order=background_order, progress=progress)
    atom_maps = np.asarray(atom_maps).reshape(frames.shape)
    order = _background_order(background_order, weights)
    order = 2 if order is None else max(order, 0)
    movie = refine == "movie" and len(frames) > 1
    window = int(track_window)
    drift = None
    if movie:   # drift steps below half the column spacing: a crystal also correlates at its lattice vectors
        drift = C.lattice_drift(atom_maps, [find_atoms(m) for m in atom_maps])
    seeds = C.registered_mean(atom_maps, drift, window=window) if movie else atom_maps
    # movie: positions (and a first σ) from the drift-registered mean of the frames themselves, 2·window + 1
    # times the dose of one frame; fitted to single frames they chase its shot noise (seed 1, gradient:
    # track positions 0.42 px rms off and 32 true columns pruned, vs 2 here; CSS 0.586 -> 0.605, +0.4 dB)
    first = C.registered_mean(frames, drift, window=window) if movie else frames
    # movie: + the columns the seeds miss, from the residual of the fit to the registered mean (seed-2 test
    # movie: the atom map merges a dim sublattice 5 px from a bright one; 176 of 309 columns per frame
    # found, 17.6 -> 24.7 dB). Not on single frames: at 3 e⁻ their residual peaks are mostly noise
    # (1024² frame: -0.27 dB, 2.5x the time) and a peak at the threshold flips a whole column
    find_missed = FIND_MISSED if movie else 0
    fitted = C.fit_columns_stack(first, [find_atoms(m) for m in seeds], background_order=order,
                                 find_missed=find_missed, progress=progress)
    if movie:
        # the drift again, from the fitted columns themselves (seed-0 test movie: mean step error 0.12 ->
        # 0.02 px); a biased step moves one-sided track averages, i.e. the first and last frames' columns
        drift = C.column_drift(fitted, drift)
        # + the columns most of the ±window neighbouring frames' fits hold but frame t's misses (seed-2
        # test movie, 2 e⁻, gradient: F1 of the fitted list 0.923 -> 0.953, CSS 0.691 -> 0.706, +0.8 dB;
        # seeds 0 and 1 unchanged); their amplitude (0 here) is never used: the refit below takes it from frame t
        extra = C.columns_from_neighbours(fitted, window=window, drift=drift, margin=NEIGHBOUR_MARGIN * fitted[0].sigma)
        fitted = [C.with_columns(c, e, np.zeros(len(e))) for c, e in zip(fitted, extra)]
        # σ and amplitudes again, to frame t itself, at each column's position averaged over the
        # *other* frames of its track (left out: frame t's own shot noise does not place its columns;
        # session 6, single-frame positions, 2 e⁻, gradient: σ 1.8 px for a true 2.14; 2.01 left out)
        tracks = C.smooth_in_time(fitted, window=window, drift=drift, leave_out=True)
        # two columns of frame t linked to one column of the others fall on one place (seed-2 test movie:
        # 0.09 px apart, fitted as +18.7 and -16.9, the negative one dropped: a false bright column)
        tracks = [C.drop_close_columns(c) for c in tracks]
        sigma = float(np.median([c.sigma for c in tracks]))
        positions = [c.positions for c in tracks]
        fitted = C.fit_columns_stack(frames, positions, sigma=sigma, background_order=order, rounds=1,
                                     fit_positions=False, progress=progress)
        # the columns just beyond frame t's edge that neighbouring frames show whole: their tails are
        # in frame t, but no seed is; held at the neighbours' amplitudes (fitted to a tail they come
        # out too bright) while frame t is fitted again (seed 1, gradient: CSS 0.572 → 0.577, +0.1 dB)
        edge = C.columns_beyond_edges(fitted, window=window, drift=drift)
        if any(len(a) for _, a in edge):
            fitted = C.fit_columns_stack(
                frames, [np.concatenate([p, e]) for p, (e, _) in zip(positions, edge)], sigma=sigma,
                background_order=order, rounds=1, fit_positions=False, progress=progress,
                held_amplitudes=[np.concatenate([np.full(len(p), np.nan), a]) for p, (_, a) in zip(positions, edge)])
        # the edge columns are already averages over the neighbours, faded with their evidence: not smoothed again
        fitted = C.smooth_in_time(fitted, window=window, drift=drift, unchanged=[e for e, _ in edge])
    return fitted


def refine_columns(frames, atom_maps, *, mode: str = "frame", track_window: int = 2, background_order: int = 2,
                   progress: bool = False) -> np.ndarray:
    """(T, H, W) rendered Gaussian columns fitted to `frames` at the columns of `atom_maps` (see module doc).

    frames: (T, H, W) input frames (any units); atom_maps: (T, H, W) Noise2Atom output in [0, 1].
    Returns float32 (T, H, W) in the frames' units, background removed.
    """
    from .. import columns as C
    fitted = fit_movie_columns(frames, atom_maps=atom_maps, refine=mode, track_window=track_window,
                               background_order=background_order, progress=progress)
    return np.stack([C.render_columns(c) for c in fitted])
