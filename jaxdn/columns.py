"""Atom-column model fitting: Gaussian columns fitted to a frame at given start positions.

A HAADF-STEM frame is modelled as a smooth background plus one isotropic Gaussian per atomic
column, all of one width per frame (the probe):

    I(r) = B(r) + Σ_k a_k · exp(−|r − p_k|² / (2σ²)),    B = polynomial of total degree `background_order`

`fit_columns` fits positions p_k (px), amplitudes a_k (input units), σ (px) and B to the frame by
least squares weighted by the inverse of the frame's fitted noise variance (shot noise: brighter
pixels are noisier; `inverse_variance_weights`) (L-BFGS on preconditioned parameters, jitted; each column is rendered on its own
window, so memory and time scale with the number of columns, not with columns × pixels; positions
are maximum a posteriori with the start positions as a Gaussian prior, weighted by the frame's own
noise level, so that on low-dose frames they do not chase the shot noise), drops columns the data does not support
(amplitude below `min_rel_amplitude` × the median, or merged into a neighbour) and fits again;
with `find_missed` it also adds the columns the start positions lack (`missed_columns`: peaks of
the residual) and fits again.
`render_columns` draws a fitted model. This is the data-consistency stage of Noise2Atom's
``refine`` option (`jaxdn.methods.noise2atom`): the generator's atom map says *where* the columns
are, the fit takes their intensities and width from the frame itself.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from .errors import InputError

CONVERGED_RTOL = 1e-8   # L-BFGS stops when a step lowers the loss by less than this fraction
EDGE_WEIGHT = 0.1   # pull (per px² beyond the frame's edge, in the normalised loss) on columns centred outside


@dataclass(frozen=True)
class Columns:
    """Fitted columns of one frame.

    positions: (N, 2) float64 (row, col) px (pixel centres at integers; may lie just outside the frame).
    amplitudes: (N,) float64 peak height above the background, input units.
    sigma: probe standard deviation, px.
    background: (order + 1, order + 1) polynomial coefficients c[i, j] of y^i x^j (i + j ≤ order,
      y and x on [−1, 1] over the frame), input units.
    background_order: degree of the background polynomial.
    shape: (H, W) of the frame.
    """
    positions: np.ndarray
    amplitudes: np.ndarray
    sigma: float
    background: np.ndarray
    background_order: int
    shape: tuple[int, int]


def _poly_background(coef, h: int, w: int):
    """(H, W) polynomial Σ_{i+j≤order} coef[i, j] · y^i · x^j on [−1, 1]² (separable: no (P, H, W) stack).

    coef: (order + 1, order + 1); entries with i + j > order are ignored.
    """
    import jax.numpy as jnp
    o = coef.shape[0]
    mask = (jnp.arange(o)[:, None] + jnp.arange(o)[None, :]) < o
    powers = jnp.arange(o, dtype=jnp.float32)[:, None]
    ys = jnp.linspace(-1.0, 1.0, h)[None, :] ** powers          # (o, H)
    xs = jnp.linspace(-1.0, 1.0, w)[None, :] ** powers          # (o, W)
    return ys.T @ (coef * mask) @ xs


def _render(pos, amp, sigma, shape, radius):
    """Σ_k amp_k · Gaussian(pos_k, sigma) on an (H, W) canvas; each column on a (2·radius+1)² window.

    pos: (N, 2), amp: (N,), sigma: scalar (jnp). Columns whose window leaves the frame are clipped.
    """
    import jax
    import jax.numpy as jnp
    h, w = shape
    k = 2 * radius + 1
    pad = radius + 1
    centre = jax.lax.stop_gradient(jnp.round(pos))                       # (N, 2)
    # window origins on the padded canvas, clipped so that every window stays on it; the Gaussian
    # is evaluated at the window's true pixels, so a clipped (far outside) column adds ~0, not a shifted copy
    r0 = jnp.clip(centre[:, 0] - radius + pad, 0, h + 2 * pad - k).astype(jnp.int32)
    c0 = jnp.clip(centre[:, 1] - radius + pad, 0, w + 2 * pad - k).astype(jnp.int32)
    idx = jnp.arange(k)
    rows = (r0 - pad)[:, None] + idx[None, :]                             # (N, K) frame coordinates
    cols = (c0 - pad)[:, None] + idx[None, :]
    gy = jnp.exp(-jnp.square(rows - pos[:, 0, None]) / (2 * sigma * sigma))
    gx = jnp.exp(-jnp.square(cols - pos[:, 1, None]) / (2 * sigma * sigma))
    win = amp[:, None, None] * gy[:, :, None] * gx[:, None, :]            # (N, K, K), separable
    canvas = jnp.zeros((h + 2 * pad, w + 2 * pad), win.dtype)
    canvas = canvas.at[r0[:, None, None] + idx[None, :, None], c0[:, None, None] + idx[None, None, :]].add(win)
    return canvas[pad:pad + h, pad:pad + w]


def _model(pos, amp, sigma, bg, shape, radius):
    """(H, W) column model + polynomial background (the quantity `_fit` matches to the frame)."""
    return _render(pos, amp, sigma, shape, radius) + _poly_background(bg, *shape)


def _fit(y, pos0, amp0, mask, held, sigma0, prior_weight, weight, bg0, *, shape, radius, order, iters, free_positions,
         free_sigma):
    """L-BFGS least squares of the column model to normalised frame y; returns (pos, amp, sigma, bg, loss).

    `weight` (H, W): per-pixel weight of the squared residual (inverse noise variance relative to
    its mean; ones for white noise). `bg0` ((order + 1)², normalised units): start background.

    `held` (N,): 1 where a column's amplitude and position are known (held at amp0, pos0: part of
    the model, not fitted), else 0.

    `free_positions` / `free_sigma` (static): whether positions / σ are fitted or held at their start.
    `prior_weight` (scalar): weight of the Gaussian prior Σ|p − p0|² that ties free positions to their
    start (noise variance / prior σ², see `_fit_window`)."""
    import jax
    import jax.numpy as jnp
    import optax

    h, w = shape
    n_cols = jnp.maximum(jnp.sum(mask), 1.0)
    # Preconditioning: the optimiser works on scaled blocks whose curvature is of the order of one
    # amplitude's (~πσ²/(H·W) in the mean-square loss). Unscaled, the background coefficients are
    # ~H·W/(πσ²) times stiffer than the columns (σ: ~N_columns times) and 150 L-BFGS steps stop far
    # from the minimum, where a 1e-6 px change of the seeds moved fitted positions by 0.2 px.
    bg_scale = jnp.sqrt(jnp.pi * sigma0 * sigma0 / (h * w))
    sigma_scale = 1.0 / jnp.sqrt(n_cols)
    upper = jnp.array([h, w], jnp.float32) - 0.5

    def unpack(theta):
        pos = theta["pos"] if free_positions else jax.lax.stop_gradient(theta["pos"])
        pos = jnp.where(held[:, None] > 0, pos0, pos)
        amp = jnp.where(held > 0, amp0, theta["amp"])
        log_sigma = theta["log_sigma"] * sigma_scale
        log_sigma = log_sigma if free_sigma else jax.lax.stop_gradient(log_sigma)
        return pos, amp * mask, jnp.exp(log_sigma), theta["bg"] * bg_scale

    def loss(theta):
        pos, amp, sigma, bg = unpack(theta)
        model = _model(pos, amp, sigma, bg, shape, radius)
        # a column centred beyond the frame is only seen by its tail (brighter and further out fits
        # as well): a weak pull to the edge makes that valley a minimum
        outside = jax.nn.relu(-0.5 - pos) + jax.nn.relu(pos - upper)
        penalty = prior_weight * jnp.square(pos - pos0) + EDGE_WEIGHT * jnp.square(outside)
        return jnp.mean(weight * jnp.square(model - y)) + jnp.sum(mask[:, None] * penalty) / (h * w)

    theta = {"pos": pos0, "amp": amp0, "log_sigma": jnp.log(sigma0) / sigma_scale, "bg": bg0 / bg_scale}
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        theta, state, _, it = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(theta, updates), state, value, it + 1

    def going(carry):
        # converged: a step that no longer lowers the loss beyond float32 rounding (after it, each
        # further step would spend the line search's whole budget finding nothing: 3x the time)
        _, state, before, it = carry
        after = optax.tree.get(state, "value")
        return (it < iters) & ((it < 2) | (before - after > CONVERGED_RTOL * jnp.abs(after)))

    theta, *_ = jax.lax.while_loop(going, step, (theta, opt.init(theta), jnp.float32(jnp.inf), 0))
    pos, amp, sigma, bg = unpack(theta)
    return pos, amp, sigma, bg, loss(theta)


@functools.lru_cache(maxsize=8)
def _jitted_fit(shape, radius, order, iters, free_positions, free_sigma):
    """Jitted `_fit` for one window shape (cached: one compilation per shape and column bucket).

    Frames are fitted one after another, not vmapped: L-BFGS's line search is a while loop, and
    vmapped it runs every frame for as long as the slowest (measured 2.5-4x slower on 16 frames of 128²)."""
    import jax
    return jax.jit(functools.partial(_fit, shape=shape, radius=radius, order=order, iters=iters,
                                     free_positions=free_positions, free_sigma=free_sigma))


@functools.lru_cache(maxsize=8)
def _jitted_model(shape, radius):
    """Jitted (pos, amp, σ, bg) → `_model` on an (H, W) window (normalised units)."""
    import jax
    return jax.jit(functools.partial(_model, shape=shape, radius=radius))


HETERO_MIN_RANGE = 1.2  # refit with weights only when the fitted noise variance varies more than this over the frame
VARIANCE_FLOOR = 0.25   # of the mean variance: weights of pixels the model calls dark stay bounded
MISFIT_RATIO = 1.5      # residuals above this × the frame's own noise variance are misfit, not noise


def inverse_variance_weights(y, model, *, noise_var=None):
    """(H, W) weights ∝ 1 / Var(y) for shot-noise-like data, or None where the noise is white.

    Var(y) = α·model + β (Poisson counts plus detector noise in any affine units) is fitted by least
    squares of the squared residuals y − model on the model; weights are mean(Var) / Var, with Var
    floored at `VARIANCE_FLOOR` × its mean. None when α ≤ 0, when Var varies by less than
    `HETERO_MIN_RANGE` (the unweighted fit is then already the maximum-likelihood one), or when
    the residuals are not noise: their mean square above `MISFIT_RATIO` × the frame's noise
    variance measured without the model (`noise_var`, default `noise_sigma(y)²`), as for columns
    held at misplaced seeds.
    """
    y, m = np.asarray(y, np.float64), np.asarray(model, np.float64)
    r2 = np.square(y - m).ravel()
    if r2.mean() > MISFIT_RATIO * (noise_sigma(y) ** 2 if noise_var is None else noise_var):
        return None
    a = np.stack([m.ravel(), np.ones(m.size)], axis=1)
    alpha, beta = np.linalg.lstsq(a, r2, rcond=None)[0]
    if not alpha > 0:
        return None
    var = alpha * m + beta
    mean = float(var.mean())
    if mean <= 0:
        return None
    var = np.maximum(var, VARIANCE_FLOOR * mean)
    if var.max() < HETERO_MIN_RANGE * var.min():
        return None
    return (mean / var).astype(np.float32)


def _window_radius(sigma: float) -> int:
    """Half side (px) of each column's render window: 4σ, at least for σ = 2.5 (a 23² window)."""
    return int(np.ceil(4.0 * max(sigma, 2.5))) + 1


def _bucket(n: int) -> int:
    """Padded column count (limits recompilation to a few sizes)."""
    return max(64, int(2 ** np.ceil(np.log2(max(n, 1)))))


def fit_columns(frame, positions, **kwargs) -> Columns:
    """Fit Gaussian columns to one (H, W) `frame` from (N, 2) start `positions`; see `fit_columns_stack`."""
    img = np.asarray(frame)
    if img.ndim != 2:
        raise InputError(f"fit_columns expects one (H, W) frame, got shape {img.shape}")
    return fit_columns_stack(img[None], [positions], **kwargs)[0]


def _spans(n: int, tile: int, margin: int):
    """[(window start, window length, core lo, core hi)] along one axis: windows of `tile` px whose
    cores (the window less `margin` on inner sides) partition the axis; outer cores reach ±inf."""
    if n <= tile:
        return [(0, n, -np.inf, np.inf)]
    core = tile - 2 * margin
    starts = list(range(0, n, core))
    out = []
    for i, a in enumerate(starts):
        ws = int(np.clip(a - margin, 0, n - tile))
        out.append((ws, tile, -np.inf if i == 0 else a, np.inf if i == len(starts) - 1 else a + core))
    return out


def fit_columns_stack(frames, positions, *, sigma=1.5, background_order=2, iters=150, min_rel_amplitude=0.3,
                      min_distance=None, rounds=2, fit_positions=True, position_prior=0.5, tile=512,
                      held_amplitudes=None, weighted=True, find_missed=0, progress=False) -> list[Columns]:
    """Fit Gaussian columns to every frame of a stack, each from its own start positions.

    Args:
      frames: (T, H, W) real frames (any units; counts for STEM).
      positions: T arrays (N_t, 2) of start positions (row, col) px, e.g. `metrics.find_atoms` of
        the atom maps.
      sigma: start value of the probe σ in px.
      background_order: degree of the polynomial background (0 = constant; per window, see `tile`).
      iters: at most this many L-BFGS iterations per round (it stops earlier once converged).
      min_rel_amplitude: after each round but the last, columns with amplitude below this fraction
        of the frame's median amplitude are dropped (false columns: the data shows no column there).
      min_distance: of two columns that end up closer than this (px; default σ) the dimmer is dropped.
      rounds: fit → prune → fit ... rounds; the first fits σ (positions held at their start), the
        others fit the positions (σ held at the frame's value, capped at half the median
        nearest-neighbour spacing of the columns: the model is one of resolved columns). rounds=1
        fits both.
      fit_positions: False holds the columns at `positions` in every round (σ, amplitudes and
        background are fitted; with rounds=1 nothing is pruned, and negative amplitudes are
        returned as 0, so that every column is returned; True drops negative columns).
      position_prior: px; fitted positions are maximum a posteriori with the start positions as a
        Gaussian prior of this σ and the noise level measured in the frame (`noise_sigma`): on
        low-dose frames a free position chases the shot noise, on clean ones the prior has no
        weight. None or 0: least squares.
      tile: frames larger than this (px) are fitted in overlapping windows of this size (bounded
        memory; one compilation); each column belongs to the window whose core holds it, σ is the
        frame's median over windows, and `Columns.background` is then only the median constant.
      held_amplitudes: None, or T arrays (N_t,) of known amplitudes (input units) aligned with
        `positions`; a finite entry holds that column at its position and amplitude (part of the
        model — its tail is fitted around — never pruned, returned as given), NaN fits it.
      weighted: each window is fitted, its noise variance fitted as α·model + β (shot noise), and
        the window fitted again at the inverse of that variance (`inverse_variance_weights`;
        skipped where the noise is white). Unweighted least squares on shot noise narrows σ — each
        column's free amplitude fits its noisy peak best with a narrow profile (seed-1 test movie,
        3 e⁻, true positions: 2.0 px for a true 2.45; weighted 2.46).
      find_missed: after the fit, up to this many times, columns the fit misses
        (`missed_columns`: peaks of the residual) are added to the fitted ones and the frame fitted
        again — for seeds that see only part of the crystal (a dim sublattice next to a bright one).
      progress: progress bar over frames.
    Returns:
      T `Columns` in the frames' units (positions may lie just outside the frame).
    """
    from tqdm import tqdm
    imgs = np.asarray(frames, np.float64)
    if imgs.ndim != 3:
        raise InputError(f"fit_columns_stack expects (T, H, W) frames, got shape {imgs.shape}")
    if len(positions) != len(imgs):
        raise InputError(f"{len(imgs)} frames but {len(positions)} position arrays")
    if not np.isfinite(imgs).all():
        raise InputError("fit_columns: frames have NaN/inf pixels")
    if float(sigma) <= 0:
        raise InputError(f"sigma must be positive, got {sigma}")
    positions = [np.asarray(p, np.float64).reshape(-1, 2) for p in positions]
    if held_amplitudes is None:
        held = [np.full(len(p), np.nan) for p in positions]
    else:
        held = [np.asarray(a, np.float64).reshape(-1) for a in held_amplitudes]
        if len(held) != len(imgs) or any(len(a) != len(p) for a, p in zip(held, positions)):
            raise InputError("held_amplitudes must hold one amplitude (or NaN) per start position of every frame")
    t_n, h, w = imgs.shape
    radius = _window_radius(float(sigma))
    margin = 3 * radius
    if int(tile) < 4 * margin:
        raise InputError(f"tile must be at least {4 * margin} px, got {tile}")
    windows = [(r, c) for r in _spans(h, int(tile), margin) for c in _spans(w, int(tile), margin)]
    opts = dict(sigma=float(sigma), order=int(background_order), iters=int(iters), min_rel=min_rel_amplitude,
                min_distance=min_distance, rounds=max(1, int(rounds)), fit_positions=bool(fit_positions), radius=radius,
                position_prior=float(position_prior) if position_prior else 0.0, weighted=bool(weighted),
                find_missed=max(0, int(find_missed)))
    return [_fit_frame(imgs[t], positions[t], held[t], windows, **opts)
            for t in tqdm(range(t_n), desc="column fit", unit="frame", disable=not progress)]


def noise_sigma(image) -> float:
    """Standard deviation of white Gaussian noise in an (H, W) image (Immerkær 1996: mean |3×3
    Laplacian difference| · √(π/2) / 6; smooth structure up to second order cancels)."""
    from scipy import signal
    img = np.asarray(image, np.float64)
    if min(img.shape) < 3:
        return 0.0
    kernel = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    return float(np.sqrt(np.pi / 2) * np.abs(signal.convolve2d(img, kernel, mode="valid")).mean() / 6)


def _fit_window(img, pos, held, sig, *, order, iters, radius, free_positions, free_sigma, position_prior, weighted):
    """Fit one (h, w) window from start positions (N, 2) in window coordinates and held amplitudes
    (N,) in the image's units (NaN: fitted); returns (pos, amp, σ, bg) in window coordinates and the
    image's units."""
    import jax.numpy as jnp
    from scipy import ndimage
    h, w = img.shape
    lo, hi = np.percentile(img, 1), np.percentile(ndimage.gaussian_filter(img, 1.0), 99.9)
    scale = float(hi - lo) if hi > lo else 1.0
    y = (img - lo) / scale
    smooth = ndimage.gaussian_filter(y, 1.0)
    n, m = len(pos), _bucket(len(pos))
    p0 = np.full((m, 2), -4.0 * radius, np.float32)   # padding: far outside, zero amplitude
    p0[:n] = pos
    rr = np.clip(np.round(pos[:, 0]).astype(int), 0, h - 1)
    cc = np.clip(np.round(pos[:, 1]).astype(int), 0, w - 1)
    a0 = np.zeros(m, np.float32)
    known = np.isfinite(held)
    a0[:n] = np.where(known, np.nan_to_num(held) / scale, np.maximum(smooth[rr, cc] - np.median(smooth), 0.05))
    mask = np.zeros(m, np.float32)
    mask[:n] = 1.0
    hold = np.zeros(m, np.float32)
    hold[:n] = known
    # MAP positions: Gaussian noise of the window's own level, start positions ± `position_prior` px
    noise_var = noise_sigma(y) ** 2
    prior = noise_var / position_prior ** 2 if position_prior else 0.0
    fit = _jitted_fit((h, w), radius, order, iters, free_positions, free_sigma)
    yj, p0, mask, hold = jnp.asarray(y, jnp.float32), jnp.asarray(p0), jnp.asarray(mask), jnp.asarray(hold)
    bg0 = np.zeros((order + 1, order + 1), np.float32)
    bg0[0, 0] = np.median(y)
    pf, af, sf, bf, _ = fit(yj, p0, jnp.asarray(a0), mask, hold, jnp.float32(sig), jnp.float32(prior),
                            jnp.ones((h, w), jnp.float32), jnp.asarray(bg0))
    if weighted:
        weight = inverse_variance_weights(y, _jitted_model((h, w), radius)(pf, af, sf, bf), noise_var=noise_var)
        if weight is not None:   # shot noise: refit at the inverse variance (σ unbiased: see `fit_columns_stack`)
            pf, af, sf, bf, _ = fit(yj, p0, af, mask, hold, sf, jnp.float32(prior), jnp.asarray(weight), bf)
    bg = np.asarray(bf, np.float64) * scale
    bg[0, 0] += lo
    return np.asarray(pf[:n], np.float64), np.asarray(af[:n], np.float64) * scale, float(sf), bg


def _fit_windows(img, pos, held, windows, sig, *, free_positions, free_sigma, **opts):
    """One fit of every window of a frame: (pos, amp, held, σ per window, columns per window,
    [(row span, col span, background polynomial)] of the windows fitted)."""
    h, w = img.shape
    new_pos, new_amp, new_held, sigs, counts, bgs = [], [], [], [], [], []
    for (r0, th, rlo, rhi), (c0, tw, clo, chi) in windows:
        # seeds in the window; a window on the frame's edge also takes seeds beyond that edge
        inside = ((pos[:, 0] >= (r0 if r0 > 0 else -np.inf)) & (pos[:, 0] < (r0 + th if r0 + th < h else np.inf))
                  & (pos[:, 1] >= (c0 if c0 > 0 else -np.inf)) & (pos[:, 1] < (c0 + tw if c0 + tw < w else np.inf)))
        if not inside.any():
            continue
        p, a, s, bg = _fit_window(img[r0:r0 + th, c0:c0 + tw], pos[inside] - (r0, c0), held[inside], sig,
                                  free_positions=free_positions, free_sigma=free_sigma, **opts)
        p = p + (r0, c0)
        core = (p[:, 0] >= rlo) & (p[:, 0] < rhi) & (p[:, 1] >= clo) & (p[:, 1] < chi)
        new_pos.append(p[core])
        new_amp.append(np.where(np.isfinite(held[inside]), held[inside], a)[core])
        new_held.append(held[inside][core])
        sigs.append(s)
        counts.append(int(core.sum()))
        bgs.append(((r0, th, rlo, rhi), (c0, tw, clo, chi), bg))
    if not new_pos:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0), sigs, counts, bgs
    return np.concatenate(new_pos), np.concatenate(new_amp), np.concatenate(new_held), sigs, counts, bgs


def _fit_frame(img, pos, held, windows, *, find_missed, **opts) -> Columns:
    """Fit one frame (`_fit_rounds`); then, up to `find_missed` times, add the columns the fit
    misses (`missed_columns` of its residual, background per window) and fit again from the fitted
    columns plus those."""
    for search in range(int(find_missed) + 1):
        cols, held_out, window_bgs = _fit_rounds(img, pos, held, windows, **opts)
        if search == find_missed:
            break
        new = missed_columns(img, cols, background=_background_image(window_bgs, img.shape, cols))
        if not len(new):
            break
        pos = np.concatenate([cols.positions, new])
        held = np.concatenate([held_out, np.full(len(new), np.nan)])
    return cols


def _fit_rounds(img, pos, held, windows, *, sigma, order, iters, min_rel, min_distance, rounds, fit_positions, radius,
                position_prior, weighted):
    """fit → prune → fit ... (see `fit_columns_stack`); returns (Columns, held amplitudes aligned with
    its columns, [(row span, col span, background)] per fitted window)."""
    h, w = img.shape
    sig = sigma
    amp = np.zeros(0)
    bgs = []
    opts = dict(order=order, iters=iters, radius=radius, position_prior=position_prior, weighted=weighted)
    for rnd in range(rounds):
        # Round 1 fits σ with the columns held at their start (the atom map's positions); later
        # rounds fit the positions at that σ. Fitting both at once on low-dose frames narrows σ
        # (the positions chase the shot noise: 0.71 px for a true 1.07 px at 3 e⁻).
        free_positions, free_sigma = (rnd > 0 or rounds == 1) and fit_positions, rnd == 0
        p, a, hd, sigs, counts, bgs = _fit_windows(img, pos, held, windows, sig, free_positions=free_positions,
                                                   free_sigma=free_sigma, **opts)
        if not len(p):
            pos, amp, held = p, a, hd
            break
        if free_sigma:
            sig = float(np.median(np.repeat(sigs, np.maximum(counts, 1))))
            # resolved columns only: σ at most half the median nearest-neighbour spacing (on dense
            # clusters the seeds are sparse and the free fit grows σ to cover them: 9.9 px on a Pt frame)
            sig = min(sig, 0.5 * median_spacing(p, fallback=2 * sig))
        pos, amp, held = p, a, hd
        if rnd < rounds - 1:
            keep = _prune(pos, amp, h, w, sig, min_rel, min_distance or sig) | np.isfinite(held)
            pos, amp, held = pos[keep], amp[keep], held[keep]
    if fit_positions:           # a column is bright: a negative fit is a hole in the background, not a column
        positive = amp > 0
        pos, amp, held = pos[positive], amp[positive], held[positive]
    else:                       # columns held at given places (tracks) stay, faded to 0 where the frame shows none:
        amp = np.maximum(amp, 0.0)   # (dropped, one at −1e-3 vanished while one at +1e-3 took its track's amplitude)
    if len(bgs) == 1 and len(windows) == 1:
        bg = bgs[0][2]
    else:
        bg = np.zeros((order + 1, order + 1))
        bg[0, 0] = float(np.median([b[0, 0] for *_, b in bgs])) if bgs else 0.0
    cols = Columns(positions=pos, amplitudes=amp, sigma=float(sig), background=bg, background_order=order, shape=(h, w))
    return cols, held, bgs


def _background_image(window_bgs, shape, cols: Columns) -> np.ndarray:
    """(H, W) background of a frame fitted in windows: each window's polynomial over its core;
    frame parts no fitted window covers get `cols`' constant."""
    import jax.numpy as jnp
    out = np.full(shape, float(cols.background[0, 0]))
    for (r0, th, rlo, rhi), (c0, tw, clo, chi), bg in window_bgs:
        poly = np.asarray(_poly_background(jnp.asarray(bg, jnp.float32), th, tw), np.float64)
        r_a, r_b = int(max(rlo, r0)), int(min(rhi, r0 + th))
        c_a, c_b = int(max(clo, c0)), int(min(chi, c0 + tw))
        out[r_a:r_b, c_a:c_b] = poly[r_a - r0:r_b - r0, c_a - c0:c_b - c0]
    return out


MISSED_N_SIGMA = 5.0     # a missed column's smoothed residual peak: at least this × the residual's noise level
MISSED_MIN_DISTANCE = 1.2  # × σ: closer to a fitted column, a residual peak is that column's misfit


def missed_columns(image, cols: Columns, *, background=None, n_sigma: float = MISSED_N_SIGMA,
                   min_rel_amplitude: float = 0.3) -> np.ndarray:
    """(K, 2) positions (row, col) px of columns the fit `cols` misses in the (H, W) `image`.

    The residual image − model (columns + `background`, an (H, W) image; default `cols`' own
    polynomial) is smoothed with a Gaussian of 0.7 σ (a column's peak keeps σ²/(σ² + (0.7σ)²) of
    its height); its local maxima count as missed columns when they stand at least `n_sigma` × the
    residual's noise level after that smoothing (`noise_sigma`) and at least `min_rel_amplitude` ×
    the median fitted amplitude (as smoothed) above zero, at least `MISSED_MIN_DISTANCE` σ from every
    fitted column and σ from the frame's edge. Seeds the fit would otherwise never see: a second,
    dimmer sublattice the atom map merged into the first (seed-2 test movie: 140 of 309 columns).
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree
    from skimage.feature import peak_local_max
    img = np.asarray(image, np.float64)
    if img.shape != tuple(cols.shape):
        raise InputError(f"image is {img.shape} but the columns were fitted to {tuple(cols.shape)}")
    if not len(cols.amplitudes):
        return np.zeros((0, 2))
    sigma = float(cols.sigma)
    model = render_columns(cols, background=background is None).astype(np.float64)
    residual = img - model - (0.0 if background is None else np.asarray(background, np.float64))
    s = 0.7 * sigma
    smooth = ndimage.gaussian_filter(residual, s)
    noise = noise_sigma(residual) / (2.0 * np.sqrt(np.pi) * s)    # white noise after a Gaussian of width s
    keep_frac = sigma ** 2 / (sigma ** 2 + s ** 2)
    threshold = max(n_sigma * noise, min_rel_amplitude * keep_frac * float(np.median(cols.amplitudes)), 1e-12)
    peaks = peak_local_max(smooth, min_distance=max(1, int(round(sigma))), threshold_abs=threshold,
                           exclude_border=max(1, int(np.ceil(sigma)))).astype(np.float64)
    if not len(peaks):
        return np.zeros((0, 2))
    r, c = peaks[:, 0].astype(int), peaks[:, 1].astype(int)   # σ from the edge: the 3×3 neighbourhood exists
    peaks[:, 0] += _vertex(smooth[r - 1, c], smooth[r, c], smooth[r + 1, c])
    peaks[:, 1] += _vertex(smooth[r, c - 1], smooth[r, c], smooth[r, c + 1])
    d, _ = cKDTree(cols.positions).query(peaks)
    return peaks[d >= MISSED_MIN_DISTANCE * sigma]


def _vertex(m, c, p):
    """Sub-pixel offsets of peaks from 3-point neighbourhoods (arrays): the vertex of a Gaussian (a
    parabola in log; a parabola where a value is not positive), within ±0.5 px."""
    pos = (m > 0) & (c > 0) & (p > 0)
    lm, lc, lp = (np.where(pos, np.log(np.where(pos, v, 1.0)), v) for v in (m, c, p))
    den = lm - 2 * lc + lp
    off = 0.5 * (lm - lp) / np.where(den < 0, den, -1.0)
    return np.where(den < 0, np.clip(off, -0.5, 0.5), 0.0)


def median_spacing(pos, *, fallback: float) -> float:
    """Median nearest-neighbour distance of (N, 2) positions in px (`fallback` for fewer than 2)."""
    if len(pos) < 2:
        return float(fallback)
    from scipy.spatial import cKDTree
    d, _ = cKDTree(pos).query(pos, k=2)
    return float(np.median(d[:, 1]))


def _prune(pos, amp, h, w, sigma, min_rel, min_dist):
    """Boolean keep-mask: supported amplitude, not far outside the frame, not merged into a brighter column."""
    ok = amp >= min_rel * max(float(np.median(amp)), 1e-12) if len(amp) else np.zeros(0, bool)
    margin = 2.0 * sigma
    ok &= (pos[:, 0] > -margin) & (pos[:, 0] < h - 1 + margin) & (pos[:, 1] > -margin) & (pos[:, 1] < w - 1 + margin)
    return ok & ~_dimmer_of_close_pairs(pos, amp, min_dist)


def _dimmer_of_close_pairs(pos, amp, min_dist) -> np.ndarray:
    """(N,) bool: the dimmer column of every pair closer than `min_dist` px."""
    out = np.zeros(len(pos), bool)
    if len(pos) > 1:
        from scipy.spatial import cKDTree
        pairs = cKDTree(pos).query_pairs(min_dist, output_type="ndarray")
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            out[np.where(amp[i] < amp[j], i, j)] = True
    return out


def drop_close_columns(cols: Columns, min_distance: float | None = None) -> Columns:
    """`cols` without the dimmer column of each pair closer than `min_distance` px (default σ): the
    model is one of resolved columns, and two at nearly one place make its fit degenerate (their
    amplitudes split into a large positive and a large negative one)."""
    return _subset(cols, ~_dimmer_of_close_pairs(cols.positions, cols.amplitudes,
                                                 cols.sigma if min_distance is None else float(min_distance)))


def render_columns(cols: Columns, *, background: bool = False) -> np.ndarray:
    """(H, W) float32 image of fitted columns (plus the fitted background when `background`)."""
    import jax.numpy as jnp
    h, w = cols.shape
    radius = _window_radius(cols.sigma)
    n = len(cols.positions)
    out = np.zeros((h, w), np.float32)
    if n:
        out = np.asarray(_render(jnp.asarray(cols.positions, jnp.float32), jnp.asarray(cols.amplitudes, jnp.float32),
                                 jnp.float32(cols.sigma), (h, w), radius))
    if background:
        out = out + np.asarray(_poly_background(jnp.asarray(cols.background, jnp.float32), h, w))
    return out.astype(np.float32)


def movie_drift(images, *, max_step: float | None = None) -> np.ndarray:
    """(T, 2) cumulative rigid shift (row, col) px of each frame relative to frame 0.

    Cross-correlation of consecutive frames (FFT), summed. Without `max_step`: the global peak,
    refined to 1/10 px (`skimage.registration.phase_cross_correlation`). With `max_step` (px): the
    peak is searched only among shifts of at most that size and refined by a Gaussian fit to its
    3-point neighbourhood — on a crystal the correlation also peaks at every lattice vector, and
    at low dose the global peak is often one of those (a jump of a lattice vector between frames);
    half the nearest-neighbour column spacing rules that out. images: (T, H, W), e.g. atom maps
    (clean images register reliably where the raw low-dose frames do not).
    """
    from skimage.registration import phase_cross_correlation
    imgs = np.asarray(images, np.float64)
    steps = [np.zeros(2)]
    for a, b in zip(imgs[:-1], imgs[1:]):
        if max_step is None:
            shift, _, _ = phase_cross_correlation(a, b, upsample_factor=10, normalization=None)
            steps.append(-np.asarray(shift, np.float64))   # b ≈ a shifted by -shift
        else:
            steps.append(_bounded_step(a, b, float(max_step)))
    return np.cumsum(np.stack(steps), axis=0)


def lattice_drift(images, positions) -> np.ndarray:
    """`movie_drift` of (T, H, W) `images` with steps below half the median nearest-neighbour
    spacing of the columns `positions` (T lists of (N, 2) px) — a crystal also correlates at its
    lattice vectors; unbounded when no frame has two columns."""
    spacing = np.median([median_spacing(p, fallback=np.inf) for p in positions])
    return movie_drift(images, max_step=0.5 * spacing if np.isfinite(spacing) else None)


def column_drift(frames: list[Columns], drift, *, tolerance: float | None = None) -> np.ndarray:
    """(T, 2) cumulative drift (row, col) px refined from fitted columns: each step `drift[t + 1] −
    drift[t]` plus the median offset between frame t + 1's columns and frame t's moved by that step
    (pairs closer than `tolerance`, default a quarter of the median column spacing; a step with
    fewer than 3 pairs is kept). Hundreds of columns at ~0.1 px each pin a step far better than the
    cross-correlation of atom maps (test movies, 3 e⁻: mean step error 0.12 → 0.02 px on seed 0,
    0.19 → 0.03 on seed 2, whose maps see one of two sublattices).
    """
    from scipy.spatial import cKDTree
    drift = np.asarray(drift, np.float64)
    if len(frames) != len(drift):
        raise InputError(f"{len(frames)} frames of columns but {len(drift)} drift rows")
    if tolerance is None:
        spacing = np.median([median_spacing(c.positions, fallback=np.inf) for c in frames]) if frames else np.inf
        tolerance = 0.25 * spacing if np.isfinite(spacing) else 1.0
    steps = [np.zeros(2)]
    for t in range(len(frames) - 1):
        step = drift[t + 1] - drift[t]
        a, b = frames[t].positions, frames[t + 1].positions
        if len(a) >= 3 and len(b) >= 3:
            pred = a + step
            d, j = cKDTree(b).query(pred, distance_upper_bound=float(tolerance))
            ok = np.isfinite(d)
            if ok.sum() >= 3:
                step = step + np.median(b[j[ok]] - pred[ok], axis=0)
        steps.append(step)
    return drift[0] + np.cumsum(np.stack(steps), axis=0)


def _bounded_step(a, b, max_step):
    """Shift (row, col) px with b ≈ a moved by it, searched within |shift| ≤ max_step (see `movie_drift`)."""
    h, w = a.shape
    fa, fb = np.fft.fft2(a - a.mean()), np.fft.fft2(b - b.mean())
    xc = np.real(np.fft.ifft2(fb * np.conj(fa)))          # xc[s] = Σ_r a(r) b(r + s): peaks at the motion
    dr = np.fft.fftfreq(h, 1.0 / h)[:, None]               # signed shift of each index
    dc = np.fft.fftfreq(w, 1.0 / w)[None, :]
    allowed = dr ** 2 + dc ** 2 <= max(max_step, 1.0) ** 2
    i, j = np.unravel_index(np.argmax(np.where(allowed, xc, -np.inf)), xc.shape)
    top = xc[i, j]
    off_r = float(_vertex(xc[(i - 1) % h, j], top, xc[(i + 1) % h, j]))
    off_c = float(_vertex(xc[i, (j - 1) % w], top, xc[i, (j + 1) % w]))
    return np.array([dr[i, 0] + off_r, dc[0, j] + off_c])


def registered_mean(images, drift, *, window: int = 2) -> np.ndarray:
    """(T, H, W) float32: each frame t averaged with frames t − window … t + window shifted onto it.

    images: (T, H, W); drift: (T, 2) rigid shifts (row, col) px from `movie_drift`. Frame u is moved
    by drift[t] − drift[u] (`scipy.ndimage.shift`, linear interpolation); each pixel averages only
    the frames that cover it, so the edges of a drifting field of view are not smeared.
    """
    from scipy import ndimage
    imgs = np.asarray(images, np.float32)
    drift = np.asarray(drift, np.float64)
    ones = np.ones(imgs.shape[1:], np.float32)
    out = np.empty_like(imgs)
    for t in range(len(imgs)):
        acc, cover = np.zeros_like(ones), np.zeros_like(ones)
        for u in range(max(0, t - window), min(len(imgs), t + window + 1)):
            d = drift[t] - drift[u]
            acc += ndimage.shift(imgs[u], d, order=1, mode="constant", cval=0.0)
            cover += ndimage.shift(ones, d, order=1, mode="constant", cval=0.0)
        out[t] = acc / np.maximum(cover, 1e-3)
    return out


def _link_weight(d, tol):
    """Weight of a track link at distance d < tol px: 1 up to tol / 2, then (1 − s²)² with
    s = (d − tol/2) / (tol/2), falling smoothly to 0 at tol."""
    s = np.clip((np.asarray(d, np.float64) - tol / 2) / (tol / 2), 0.0, 1.0)
    return (1.0 - s ** 2) ** 2


def smooth_in_time(frames: list[Columns], *, window: int = 2, drift=None, tolerance=None,
                   leave_out: bool = False, unchanged=None) -> list[Columns]:
    """Average each column's position and amplitude over its track in frames t − window … t + window.

    A column of frame t is linked to the nearest column of frame u when their drift-corrected
    positions are closer than `tolerance` px (default: σ of frame t); its smoothed position is the
    weighted mean of the linked drift-corrected positions (shifted back to frame t) and its amplitude
    the weighted mean of the linked amplitudes. A link weighs 1 up to tol / 2 and falls smoothly to 0
    at the tolerance (`_link_weight`), so that a link does not switch the result on or off as its
    distance crosses it (the result is continuous in the positions; a hard threshold moved a track
    by 1.1 px for a 1e-6 change of the atom maps). Columns that move (beyond the tolerance), appear
    or vanish are linked only where they match, so dynamics survive at the scale of the window. σ is
    the mean over the window. drift: (T, 2) from `movie_drift` (default: zero). leave_out: average
    only the *other* frames of the track, so that frame t's result is independent of frame t's noise;
    frame t's own values weigh max(0, 1 − Σ link weights), so a column linked to none keeps them.
    unchanged: None, or per frame (M_t, 2) positions of columns (found within 1e-3 px) that are
    returned as they are and that no column links to: values that are already track averages, as
    `columns_beyond_edges` gives, whose amplitude fades to 0 with their evidence (smoothed, a faded
    one took its track's full amplitude: a 1e-6 change of the atom maps moved a frame by 0.12 of
    its peak).
    """
    from scipy.spatial import cKDTree
    t_n = len(frames)
    drift = np.zeros((t_n, 2)) if drift is None else np.asarray(drift, np.float64)
    if unchanged is not None:
        if len(unchanged) != t_n:
            raise InputError(f"{t_n} frames of columns but {len(unchanged)} arrays of unchanged positions")
        kept = [_matched(c.positions, u) for c, u in zip(frames, unchanged)]
        moving = smooth_in_time([_subset(c, ~k) for c, k in zip(frames, kept)], window=window, drift=drift,
                                tolerance=tolerance, leave_out=leave_out)
        return [with_columns(m, c.positions[k], c.amplitudes[k]) for m, c, k in zip(moving, frames, kept)]
    corrected = [c.positions - drift[t] for t, c in enumerate(frames)]
    trees = [cKDTree(p) if len(p) else None for p in corrected]
    out = []
    for t, cols in enumerate(frames):
        q = corrected[t]
        tol = float(tolerance) if tolerance else cols.sigma
        pos_sum, amp_sum, weight = np.zeros_like(q), np.zeros(len(q)), np.zeros(len(q))
        sig = [] if leave_out else [cols.sigma]
        for u in range(max(0, t - window), min(t_n, t + window + 1)):
            if u == t or trees[u] is None or not len(q):
                continue
            d, j = trees[u].query(q, distance_upper_bound=tol)
            hit = np.isfinite(d)
            wgt = np.zeros(len(q))
            wgt[hit] = _link_weight(d[hit], tol)
            pos_sum[hit] += wgt[hit, None] * corrected[u][j[hit]]
            amp_sum[hit] += wgt[hit] * frames[u].amplitudes[j[hit]]
            weight += wgt
            sig.append(frames[u].sigma)
        own = np.maximum(0.0, 1.0 - weight) if leave_out else np.ones(len(q))
        pos_sum, amp_sum, weight = pos_sum + own[:, None] * q, amp_sum + own * cols.amplitudes, weight + own
        out.append(Columns(positions=pos_sum / weight[:, None] + drift[t], amplitudes=amp_sum / weight,
                           sigma=float(np.mean(sig or [cols.sigma])), background=cols.background,
                           background_order=cols.background_order, shape=cols.shape))
    return out


def columns_from_neighbours(frames: list[Columns], *, window: int = 2, drift=None, min_frames: int | None = None,
                            min_distance: float | None = None, margin: float = 0.0) -> list[np.ndarray]:
    """Per frame t, (M_t, 2) positions of columns that frame t lacks but most of frames t ± window hold:
    candidates from each neighbour (shifted by `drift` (T, 2)) farther than `min_distance` (default σ)
    from frame t's columns, grouped within that distance; a group seen by at least `min_frames`
    distinct neighbours (default: half of them, at least 2 where there are 2) gives its mean
    position, if that lies in frame t at least `margin` px inside its edges."""
    from scipy.spatial import cKDTree
    t_n = len(frames)
    drift = np.zeros((t_n, 2)) if drift is None else np.asarray(drift, np.float64)
    out = []
    for t, cols in enumerate(frames):
        h, w = cols.shape
        dmin = cols.sigma if min_distance is None else float(min_distance)
        us = [u for u in range(max(0, t - window), min(t_n, t + window + 1)) if u != t]
        need = min(len(us), max(2, -(-len(us) // 2))) if min_frames is None else int(min_frames)
        pos = [frames[u].positions.reshape(-1, 2) - drift[u] + drift[t] for u in us]
        src = np.concatenate([np.full(len(p), u) for p, u in zip(pos, us)]) if us else np.zeros(0, int)
        pos = np.concatenate(pos) if us else np.zeros((0, 2))
        if len(pos) and len(cols.positions):
            d, _ = cKDTree(cols.positions).query(pos)
            pos, src = pos[d > dmin], src[d > dmin]
        new = np.zeros((0, 2))
        if len(pos):
            n, label = _groups(pos, dmin)
            support = np.bincount(np.unique(label * t_n + src) // t_n, minlength=n)   # distinct neighbours per group
            centre = np.column_stack([np.bincount(label, pos[:, i], n) / np.bincount(label, None, n) for i in (0, 1)])
            lo, hi = margin, np.array([h - 1, w - 1]) - margin
            ok = (support >= need) & np.all((centre >= lo) & (centre <= hi), axis=1)
            new = centre[ok]
        out.append(new)
    return out


def _matched(positions, targets, tol: float = 1e-3) -> np.ndarray:
    """(N,) bool: which of `positions` (N, 2) lie within `tol` px of one of `targets` (M, 2)."""
    from scipy.spatial import cKDTree
    targets = np.asarray(targets, np.float64).reshape(-1, 2)
    if not len(positions) or not len(targets):
        return np.zeros(len(positions), bool)
    return np.isfinite(cKDTree(targets).query(positions, distance_upper_bound=tol)[0])


def _subset(cols: Columns, mask) -> Columns:
    """`cols` with only the columns where `mask` (N,) is True."""
    return dataclasses.replace(cols, positions=cols.positions[mask], amplitudes=cols.amplitudes[mask])


def with_columns(cols: Columns, positions, amplitudes) -> Columns:
    """`cols` plus columns at `positions` (M, 2) px with `amplitudes` (M,), appended after its own."""
    return dataclasses.replace(cols, positions=np.concatenate([cols.positions, np.reshape(positions, (-1, 2))]),
                               amplitudes=np.concatenate([cols.amplitudes, amplitudes]))


def _groups(pos, dist: float) -> tuple[int, np.ndarray]:
    """Groups of positions (N, 2) px linked by pairs closer than `dist` px (transitively):
    (number of groups, (N,) group label of each)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree
    pairs = cKDTree(pos).query_pairs(dist, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pos), len(pos)))
    return connected_components(graph, directed=False)


def columns_beyond_edges(frames: list[Columns], *, window: int = 2, drift=None, margin: float | None = None,
                         min_distance: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Columns just beyond each frame's edge, seen whole by its neighbours: per frame t a pair
    (positions (M_t, 2) px in frame t's coordinates, amplitudes (M_t,) in the frames' units).

    A drifting field of view cuts columns at its edges: frame t shows their tails, but its atom map
    (like any peak finder) seeds only columns centred inside. Frames t − window … t + window that
    hold such a column inside their own field of view give its position (shifted by `drift` (T, 2)
    from `movie_drift`, default zero) and amplitude; kept are those centred outside frame t, at most
    `margin` px (default 3σ) beyond its edge, and not within `min_distance` (default σ) of a column
    of frame t. Candidates of several neighbours within `min_distance` of each other are one column.

    Every decision is soft, so the result is continuous in the input positions (a hard "inside its
    frame" test flipped a whole column in or out for a 1e-6 change): a candidate weighs
    w = clip(1/2 + d_in / (σ/2), 0, 1), d_in its distance inside its own frame (px, negative beyond),
    times clip(1/2 + d_out / (σ/2), 0, 1) · clip((margin − d_out) / (σ/2), 0, 1), d_out its distance
    beyond frame t's edge (a hard "outside frame t" test flipped a column at −0.001 px), times
    clip((d − min_distance) / (min_distance / 4), 0, 1), d its distance to frame t's columns;
    a column's position is the w-weighted mean and its amplitude Σ w·a / max(Σ w, 1) (the mean
    where at least one neighbour sees it whole, fading to 0 with the evidence).
    """
    from scipy.spatial import cKDTree
    t_n = len(frames)
    drift = np.zeros((t_n, 2)) if drift is None else np.asarray(drift, np.float64)
    out = []
    for t, cols in enumerate(frames):
        h, w = cols.shape
        m = 3.0 * cols.sigma if margin is None else float(margin)
        dmin = cols.sigma if min_distance is None else float(min_distance)
        pos, amp, wt = [np.zeros((0, 2))], [np.zeros(0)], [np.zeros(0)]
        for u in range(max(0, t - window), min(t_n, t + window + 1)):
            if u == t:
                continue
            p = frames[u].positions.reshape(-1, 2)
            d_in = np.minimum(np.minimum(p[:, 0], h - 1 - p[:, 0]), np.minimum(p[:, 1], w - 1 - p[:, 1]))
            seen = np.clip(0.5 + d_in / (0.5 * frames[u].sigma), 0.0, 1.0)
            k = seen > 0
            pos.append(p[k] - drift[u] + drift[t])
            amp.append(frames[u].amplitudes[k])
            wt.append(seen[k])
        pos, amp, wt = np.concatenate(pos), np.concatenate(amp), np.concatenate(wt)
        r, c = pos[:, 0], pos[:, 1]
        d_out = -np.minimum(np.minimum(r, h - 1 - r), np.minimum(c, w - 1 - c))   # px beyond frame t's edge
        half = 0.5 * cols.sigma
        wt = wt * np.clip(0.5 + d_out / half, 0.0, 1.0) * np.clip((m - d_out) / half, 0.0, 1.0)
        pos, amp, wt = pos[wt > 0], amp[wt > 0], wt[wt > 0]
        if len(pos) and len(cols.positions):
            d, _ = cKDTree(cols.positions).query(pos)
            wt = wt * np.clip((d - dmin) / (0.25 * dmin), 0.0, 1.0)
            pos, amp, wt = pos[wt > 0], amp[wt > 0], wt[wt > 0]
        if len(pos):
            n, label = _groups(pos, dmin)
            total = np.bincount(label, wt, n)
            pos = np.column_stack([np.bincount(label, wt * pos[:, i], n) / total for i in (0, 1)])
            amp = np.bincount(label, wt * amp, n) / np.maximum(total, 1.0)
        out.append((pos.reshape(-1, 2), amp))
    return out


COLUMN_FIELDS = ("frame", "row", "col", "amplitude", "sigma")


def columns_table(frames: list[Columns]) -> np.ndarray:
    """(N, 5) float64 rows (frame, row px, col px, amplitude, σ px) of fitted columns, for a CSV:
    ``np.savetxt(path, columns_table(c), delimiter=",", header=",".join(COLUMN_FIELDS), comments="")``."""
    rows = [np.column_stack([np.full(len(c.positions), t), c.positions, c.amplitudes, np.full(len(c.positions), c.sigma)])
            for t, c in enumerate(frames) if len(c.positions)]
    return np.concatenate(rows) if rows else np.zeros((0, len(COLUMN_FIELDS)))
