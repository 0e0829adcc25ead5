"""Atom-column model fitting (`jaxdn.columns`) against NumPy references and analytic cases, and
Noise2Atom's `refine` option built on it."""
from __future__ import annotations

import numpy as np
import pytest

from jaxdn import columns as C
from jaxdn.errors import InputError


def _dense(pos, amp, sigma, shape):
    """NumPy reference: Σ amp · exp(−|r − p|² / 2σ²) on the full grid."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    out = np.zeros(shape)
    for (r, c), a in zip(pos, amp):
        out += a * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma ** 2))
    return out


def _cols(pos, amp, sigma, shape, bg=None):
    bg = np.zeros((1, 1)) if bg is None else np.asarray(bg, np.float64)
    return C.Columns(positions=np.asarray(pos, np.float64), amplitudes=np.asarray(amp, np.float64), sigma=sigma,
                     background=bg, background_order=bg.shape[0] - 1, shape=shape)


def _grid(shape, spacing, offset):
    r = np.arange(offset, shape[0] - 2, spacing)
    c = np.arange(offset, shape[1] - 2, spacing)
    return np.stack(np.meshgrid(r, c, indexing="ij"), -1).reshape(-1, 2).astype(np.float64)


def test_render_matches_dense_numpy_reference_including_edge_columns():
    shape = (40, 52)
    pos = np.array([[10.3, 12.7], [0.2, 25.0], [39.6, 51.4], [-2.5, 20.0], [20.0, 54.1], [25.5, 30.25]])
    amp = np.array([1.0, 0.6, 0.8, 0.9, 0.7, 1.3])
    for sigma in (1.1, 2.4):
        got = C.render_columns(_cols(pos, amp, sigma, shape))
        assert got.shape == shape and got.dtype == np.float32
        np.testing.assert_allclose(got, _dense(pos, amp, sigma, shape), atol=2e-5)


def test_render_background_polynomial_matches_numpy():
    shape = (24, 30)
    coef = np.array([[1.0, 0.5, -0.2], [0.3, 0.1, 9.9], [-0.4, 9.9, 9.9]])   # 9.9: i + j > 2, ignored
    got = C.render_columns(_cols(np.zeros((0, 2)), np.zeros(0), 1.5, shape, bg=coef), background=True)
    y = np.linspace(-1, 1, shape[0])[:, None]
    x = np.linspace(-1, 1, shape[1])[None, :]
    ref = 1.0 + 0.5 * x - 0.2 * x ** 2 + 0.3 * y + 0.1 * y * x - 0.4 * y ** 2
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_fit_recovers_known_columns_width_and_background():
    rng = np.random.default_rng(0)
    shape = (48, 48)
    truth = _grid(shape, 9.0, 4.0) + rng.uniform(-0.3, 0.3, (25, 2))
    amp = rng.uniform(0.5, 1.0, len(truth))
    sigma = 1.8
    y = np.linspace(-1, 1, shape[0])[:, None]
    frame = 10 * _dense(truth, amp, sigma, shape) + 2.0 + 0.5 * y + rng.normal(0, 0.05, shape)
    start = truth + rng.uniform(-0.7, 0.7, truth.shape)
    cols = C.fit_columns(frame, start, background_order=1)
    assert len(cols.positions) == len(truth)
    order = np.argmin(np.linalg.norm(cols.positions[:, None] - truth[None], axis=-1), axis=0)
    np.testing.assert_allclose(cols.positions[order], truth, atol=0.05)
    np.testing.assert_allclose(cols.amplitudes[order], 10 * amp, rtol=0.03)
    assert abs(cols.sigma - sigma) < 0.03
    assert abs(cols.background[0, 0] - 2.0) < 0.05 and abs(cols.background[1, 0] - 0.5) < 0.05
    np.testing.assert_allclose(C.render_columns(cols, background=True), frame, atol=0.25)


def test_fit_reaches_the_scipy_map_optimum_and_tiny_seed_changes_do_not_move_it():
    """Low-dose-like frame (noise 30 % of the column peak): the L-BFGS fit (positions + σ free, one
    round) lands on the minimum SciPy's float64 `least_squares` finds for the same objective — data
    residuals plus the Gaussian position prior of weight noise²/prior² — and seeds moved by 1e-6 px
    give the same fit (without the preconditioning up to 2e-3 px apart here; 0.2 px on the test movie)."""
    from scipy.optimize import least_squares
    rng = np.random.default_rng(7)
    shape = (48, 48)
    truth = _grid(shape, 7.0, 3.5)
    truth = truth + rng.uniform(-0.3, 0.3, truth.shape)
    amp = rng.uniform(0.6, 1.0, len(truth))
    y = np.linspace(-1, 1, shape[0])[:, None]
    frame = 10 * _dense(truth, amp, 1.2, shape) + 3.0 + 1.0 * y + rng.normal(0, 3.0, shape)
    start = truth + rng.uniform(-0.6, 0.6, truth.shape)
    prior = 0.5
    got = C.fit_columns(frame, start, background_order=1, rounds=1, position_prior=prior)
    again = C.fit_columns(frame, start + 1e-6, background_order=1, rounds=1, position_prior=prior)
    assert len(got.positions) == len(again.positions) == len(truth)
    np.testing.assert_allclose(again.positions, got.positions, atol=1e-3)

    n = len(start)
    weight = C.noise_sigma(frame) / prior           # sqrt of the prior's weight noise²/prior²
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")

    def residuals(v):
        pos, a, log_s, bg = v[:2 * n].reshape(n, 2), v[2 * n:3 * n], v[3 * n], v[3 * n + 1:]
        model = _dense(pos, a, np.exp(log_s), shape) + bg[0] + bg[1] * xx + bg[2] * yy
        return np.concatenate([(model - frame).ravel(), weight * (pos - start).ravel()])

    v0 = np.concatenate([start.ravel(), np.full(n, 5.0), [np.log(1.5)], [np.median(frame), 0.0, 0.0]])
    ref = least_squares(residuals, v0, xtol=1e-12, ftol=1e-12, gtol=1e-12).x
    order = np.argmin(np.linalg.norm(got.positions[:, None] - start[None], axis=-1), axis=0)
    np.testing.assert_allclose(got.positions[order], ref[:2 * n].reshape(n, 2), atol=0.01)
    np.testing.assert_allclose(got.amplitudes[order], ref[2 * n:3 * n], rtol=0.01)
    assert abs(got.sigma - np.exp(ref[3 * n])) < 0.01
    moved = np.linalg.norm(ref[:2 * n].reshape(n, 2) - start, axis=1)
    assert moved.max() > 0.05                       # the prior does not hold the columns at their seeds


def test_fit_with_positions_held_keeps_them_and_fits_width_and_amplitudes():
    rng = np.random.default_rng(5)
    shape = (40, 40)
    truth = _grid(shape, 9.0, 4.0) + rng.uniform(-0.3, 0.3, (16, 2))
    amp = rng.uniform(0.5, 1.0, len(truth))
    frame = 10 * _dense(truth, amp, 2.1, shape) + 1.0 + rng.normal(0, 0.05, shape)
    cols = C.fit_columns(frame, truth, sigma=1.5, background_order=0, rounds=1, fit_positions=False)
    np.testing.assert_array_equal(cols.positions, np.asarray(truth, np.float32).astype(np.float64))
    np.testing.assert_allclose(cols.amplitudes, 10 * amp, rtol=0.03)
    assert abs(cols.sigma - 2.1) < 0.03


def test_inverse_variance_weights_match_the_known_shot_noise_variance_and_refuse_white_noise_or_misfit():
    """Poisson counts + detector noise: the fitted Var = α·model + β gives weights mean(Var)/Var
    within a few % of the true ones; white noise and a misplaced model give None (no reweighting)."""
    rng = np.random.default_rng(3)
    shape = (64, 64)
    truth = _grid((80, 80), 7.0, 0.0) - 8 + rng.uniform(-0.3, 0.3, (len(_grid((80, 80), 7.0, 0.0)), 2))
    lam = 3.0 * _dense(truth, rng.uniform(0.6, 1.0, len(truth)), 2.3, shape) + 0.3
    counts = rng.poisson(lam) + rng.normal(0, 0.05, shape)
    w = C.inverse_variance_weights(10 * counts + 7, 10 * lam + 7)      # any affine units
    var = lam + 0.05 ** 2
    ref = var.mean() / np.maximum(var, C.VARIANCE_FLOOR * var.mean())
    assert w.shape == shape and w.dtype == np.float32
    rel = np.abs(w / ref - 1)
    assert np.median(rel) < 0.03 and rel.max() < 0.12
    assert C.inverse_variance_weights(lam + rng.normal(0, 1.0, shape), lam) is None
    shifted = 3.0 * _dense(truth + 1.0, np.ones(len(truth)), 2.3, shape) + 0.3
    assert C.inverse_variance_weights(lam + rng.normal(0, 0.05, shape), shifted) is None


def test_weighted_fit_of_shot_noise_frames_recovers_the_width_least_squares_narrows():
    """Low dose (3 counts at the brightest column), positions held at the truth: each column's free
    amplitude makes plain least squares prefer a narrow profile on Poisson noise (variance ∝
    intensity); the inverse-variance refit does not."""
    rng = np.random.default_rng(5)
    n, sigma = 112, 2.4
    g = _grid((n + 16, n + 16), 7.5, 0.0) - 8
    truth = g + rng.uniform(-0.3, 0.3, g.shape)
    lam = 3.0 * _dense(truth, rng.uniform(0.6, 1.0, len(truth)), sigma, (n, n)) + 0.2
    frames = rng.poisson(lam, (6, n, n)) + rng.normal(0, 0.05, (6, n, n))
    opts = dict(sigma=1.5, background_order=0, rounds=1, fit_positions=False, min_rel_amplitude=0)
    weighted = np.median([c.sigma for c in C.fit_columns_stack(frames, [truth] * 6, **opts)])
    plain = np.median([c.sigma for c in C.fit_columns_stack(frames, [truth] * 6, weighted=False, **opts)])
    assert abs(weighted - sigma) < 0.07
    assert plain < sigma - 0.04 and abs(weighted - sigma) < abs(plain - sigma)


def test_fit_drops_columns_the_data_does_not_support_and_merges_duplicates():
    rng = np.random.default_rng(1)
    shape = (40, 40)
    truth = _grid(shape, 10.0, 5.0)
    frame = _dense(truth, np.ones(len(truth)), 1.6, shape) + rng.normal(0, 0.02, shape)
    empty = np.array([[10.0, 10.0], [20.0, 30.0]])                       # between the columns
    duplicate = truth[:3] + 0.4                                           # a second seed on a column
    cols = C.fit_columns(frame, np.concatenate([truth, empty, duplicate]), background_order=0)
    assert len(cols.positions) == len(truth)
    d = np.linalg.norm(cols.positions[:, None] - truth[None], axis=-1).min(axis=0)
    assert d.max() < 0.1


def _two_sublattices(shape, rng, *, dim=0.5, sigma=1.6, noise=0.02, background=0.0):
    """Bright sublattice A on a 10-px grid, dimmer B at (+5, +5): B is 7.1 px (4.4σ) from A."""
    a = _grid(shape, 10.0, 4.0) + rng.uniform(-0.2, 0.2, (len(_grid(shape, 10.0, 4.0)), 2))
    b = a + 5.0
    b = b[(b < np.array(shape) - 2).all(1)]
    frame = (_dense(a, np.ones(len(a)), sigma, shape) + _dense(b, np.full(len(b), dim), sigma, shape)
             + background + rng.normal(0, noise, shape))
    return frame, a, b


def _matched(found, truth):
    from scipy.spatial import cKDTree
    d, j = cKDTree(found).query(truth)
    return d, j


def test_missed_columns_finds_a_sublattice_the_seeds_lack_and_the_refit_recovers_it():
    rng = np.random.default_rng(11)
    shape = (64, 64)
    frame, a, b = _two_sublattices(shape, rng)
    plain = C.fit_columns(frame, a, background_order=0)
    assert len(plain.positions) == len(a) and plain.sigma < 1.5     # σ narrows: B's light is unexplained
    new = C.missed_columns(frame, plain)
    inner = b[(b >= 2).all(1) & (b <= np.array(shape) - 3).all(1)]
    d, _ = _matched(new, inner)
    assert d.max() <= 0.5 and len(new) == len(inner)                # one sub-pixel residual peak per column
    full = C.fit_columns(frame, a, background_order=0, find_missed=2)
    truth = np.concatenate([a, b])
    assert len(full.positions) == len(truth)
    d, j = _matched(full.positions, truth)
    # Cramér–Rao: σ_noise / amplitude · √(2/π) = 0.03 px per axis for B (amplitude 0.5), 0.016 for A
    assert len(set(j)) == len(j) and d[:len(a)].max() < 0.07 and d[len(a):].max() < 0.15
    amp = full.amplitudes[j]
    np.testing.assert_allclose(amp[:len(a)], 1.0, rtol=0.03)
    np.testing.assert_allclose(amp[len(a):], 0.5, rtol=0.05)
    assert abs(full.sigma - 1.6) < 0.02


def test_missed_columns_adds_nothing_where_the_fit_explains_the_frame():
    """No false columns from noise, from the misfit next to a column or from a background gradient."""
    rng = np.random.default_rng(12)
    shape = (64, 64)
    y = np.linspace(-1, 1, shape[0])[:, None]
    for noise in (0.02, 0.2):
        frame, a, _ = _two_sublattices(shape, rng, dim=0.0, noise=noise, background=0.3 + 0.2 * y)
        cols = C.fit_columns(frame, a, background_order=1)
        assert len(C.missed_columns(frame, cols)) == 0
        again = C.fit_columns(frame, a, background_order=1, find_missed=2)
        np.testing.assert_array_equal(again.positions, cols.positions)
        np.testing.assert_array_equal(again.amplitudes, cols.amplitudes)
    # a column of the wrong width leaves a ring of residual around it: not a column
    frame = _dense(a, np.ones(len(a)), 2.0, shape)
    narrow = C.Columns(positions=a, amplitudes=np.ones(len(a)), sigma=1.6, background=np.zeros((1, 1)),
                       background_order=0, shape=shape)
    assert len(C.missed_columns(frame, narrow)) == 0


def test_missed_columns_thresholds_on_the_amplitude_and_the_noise():
    rng = np.random.default_rng(13)
    shape = (64, 64)
    a = _grid(shape, 10.0, 4.0)
    cols = C.Columns(positions=a, amplitudes=np.ones(len(a)), sigma=1.6, background=np.zeros((1, 1)),
                     background_order=0, shape=shape)
    extra = np.array([[31.0, 36.0]])                                      # 5 px from its neighbours
    base = _dense(a, np.ones(len(a)), 1.6, shape)
    quiet = rng.normal(0, 0.01, shape)
    found = C.missed_columns(base + _dense(extra, [0.4], 1.6, shape) + quiet, cols)
    np.testing.assert_allclose(found, extra, atol=0.5)
    assert len(C.missed_columns(base + _dense(extra, [0.2], 1.6, shape) + quiet, cols)) == 0   # < 0.3 × median
    loud = rng.normal(0, 0.4, shape)       # smoothed noise ≈ 0.4 / (2√π · 1.12) = 0.1: 5σ = 0.5 > its 0.27 peak
    assert len(C.missed_columns(base + _dense(extra, [0.4], 1.6, shape) + loud, cols)) == 0
    with pytest.raises(InputError, match="fitted to"):
        C.missed_columns(base[:32], cols)


def test_missed_columns_in_windows_use_each_windows_background():
    """A frame larger than the fit window: the residual uses every window's own polynomial, so a
    strong gradient adds no column, and the dim sublattice is found in every window."""
    rng = np.random.default_rng(14)
    shape = (200, 170)
    y = np.linspace(-1, 1, shape[0])[:, None]
    x = np.linspace(-1, 1, shape[1])[None, :]
    frame, a, b = _two_sublattices(shape, rng, background=2.0 + 1.5 * y + 1.0 * x * x)
    cols = C.fit_columns(frame, a, background_order=2, tile=136, find_missed=2)
    assert len(C._spans(shape[0], 136, 36)) > 1 and len(C._spans(shape[1], 136, 36)) > 1
    truth = np.concatenate([a, b])
    assert len(cols.positions) == len(truth)
    d, j = _matched(cols.positions, truth)
    assert len(set(j)) == len(j) and d.max() < 0.2 and d.mean() < 0.04   # noise floor as in the test above


def test_fit_stack_is_deterministic_and_frames_are_independent():
    rng = np.random.default_rng(2)
    shape = (32, 32)
    truth = _grid(shape, 8.0, 4.0)
    frames = np.stack([_dense(truth + s, np.ones(len(truth)), 1.5, shape) + rng.normal(0, 0.05, shape)
                       for s in (0.0, 1.0)]).astype(np.float32)
    seeds = [truth, truth + 1.0]
    a = C.fit_columns_stack(frames, seeds, background_order=0)
    b = C.fit_columns_stack(frames, seeds, background_order=0)
    single = C.fit_columns(frames[1], seeds[1], background_order=0)
    assert len(a) == 2
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.amplitudes, y.amplitudes)
    np.testing.assert_allclose(a[1].positions, single.positions, atol=1e-4)


def test_fit_with_an_edge_column_held_fits_the_interior_as_if_the_whole_field_were_seen():
    """A column centred just beyond the frame's edge leaves its tail inside: without a seed the fit
    widens and brightens its neighbours to cover the tail; held at its known amplitude and position
    it is part of the model, returned exactly as given, and the inside columns and σ come out right."""
    rng = np.random.default_rng(11)
    shape = (40, 40)
    inside = _grid(shape, 9.0, 4.0) + rng.uniform(-0.3, 0.3, (16, 2))
    beyond = np.array([[-1.5, 13.0], [20.0, 41.2]])                 # above row 0, right of the last column
    amp_in = rng.uniform(6.0, 10.0, len(inside))
    amp_out = np.array([9.0, 7.0])
    sigma = 2.0
    frame = _dense(np.concatenate([inside, beyond]), np.concatenate([amp_in, amp_out]), sigma, shape)
    frame = frame + 1.0 + rng.normal(0, 0.05, shape)
    opts = dict(sigma=1.5, background_order=0, rounds=1, fit_positions=False)
    seen = C.fit_columns_stack(frame[None], [inside], **opts)[0]
    held = C.fit_columns_stack(frame[None], [np.concatenate([inside, beyond])],
                               held_amplitudes=[np.concatenate([np.full(len(inside), np.nan), amp_out])], **opts)[0]
    assert len(held.positions) == len(inside) + 2
    np.testing.assert_array_equal(held.amplitudes[-2:], amp_out)
    np.testing.assert_allclose(held.positions[-2:], beyond, atol=1e-5)
    np.testing.assert_allclose(held.amplitudes[:-2], amp_in, rtol=0.01)
    assert abs(held.sigma - sigma) < 0.01
    np.testing.assert_allclose(C.render_columns(held, background=True), frame, atol=0.2)
    # the inside-only fit is measurably off: that is what holding the edge columns corrects
    err_seen = np.abs(seen.amplitudes / amp_in - 1).max()
    assert err_seen > 5 * np.abs(held.amplitudes[:-2] / amp_in - 1).max()


def test_held_positions_keep_every_column_and_clip_negative_amplitudes_to_zero():
    """With positions held (tracks), a column the frame does not show is returned at amplitude 0,
    not dropped (its presence would then flip with a 1e-3 change of its fit); a free fit drops it."""
    rng = np.random.default_rng(7)
    shape = (40, 40)
    real = _grid(shape, 9.0, 5.0)
    ghost = np.array([[9.5, 9.5]])                      # between columns: the frame is dark there
    frame = _dense(real, np.full(len(real), 5.0), 1.5, shape) + 1.0 + rng.normal(0, 0.05, shape)
    frame[8:12, 8:12] -= 0.6                             # a dip: unconstrained, the fit goes negative
    start = np.concatenate([real, ghost])
    opts = dict(sigma=1.5, background_order=0, rounds=1, min_rel_amplitude=0.0)
    held = C.fit_columns_stack(frame[None], [start], fit_positions=False, **opts)[0]
    free = C.fit_columns_stack(frame[None], [start], fit_positions=True, position_prior=0.1, **opts)[0]
    assert len(held.positions) == len(start)
    assert held.amplitudes[-1] == 0.0 and (held.amplitudes[:-1] > 4.5).all()
    assert len(free.positions) == len(real)              # the negative column is a hole, not a column


def test_columns_from_neighbours_adds_what_most_neighbours_see():
    """Frame 2 of five misses lattice column k that frames 0, 1, 3, 4 hold: it gets k at the mean of their
    drift-shifted positions. A column only one neighbour holds (below half of the four), one beside a
    column of frame 2, and one outside frame 2 (each seen by 2–3 neighbours) are not added; no other
    frame gets any (at the movie's ends, too, two neighbours must agree)."""
    shape, sigma = (40, 40), 1.5
    lattice = _grid(shape, 8.0, 5.0)
    drift = np.array([[0.0, 0.0], [0.6, -0.4], [1.2, -0.8], [1.8, -1.2], [2.4, -1.6]])
    rng = np.random.default_rng(9)
    noise = rng.normal(0, 0.1, (5,) + lattice.shape)
    k = 7
    frames = []
    for t in range(5):
        p = lattice + drift[t] + noise[t]
        if t == 2:
            p = np.delete(p, k, axis=0)
        if t == 0:   # a lone extra column (one neighbour only)
            p = np.concatenate([p, [[20.0, 33.0]]])
        if t in (0, 1):   # one 0.5 px from frame 2's column 3
            p = np.concatenate([p, [lattice[3] + drift[t] + [0.5, 0.0]]])
        if t in (1, 3, 4):   # one 1 px beyond frame 2's top edge
            p = np.concatenate([p, [[-1.0 + drift[t, 0] - drift[2, 0], 20.0 + drift[t, 1] - drift[2, 1]]]])
        frames.append(_cols(p, np.ones(len(p)), sigma, shape))
    got = C.columns_from_neighbours(frames, window=2, drift=drift)
    assert len(got) == 5
    want = np.mean([lattice[k] + drift[2] + noise[u, k] for u in (0, 1, 3, 4)], axis=0)
    np.testing.assert_allclose(got[2], [want], atol=1e-9)
    assert all(len(g) == 0 for t, g in enumerate(got) if t != 2)
    assert len(C.columns_from_neighbours(frames, window=2, drift=drift, min_frames=1)[2]) == 2   # + the lone one


def test_drop_close_columns_keeps_the_brighter_of_each_close_pair():
    cols = _cols([[10.0, 10.0], [10.09, 10.0], [20.0, 20.0], [20.0, 21.9]], [2.0, 1.98, 1.0, 3.0], 1.8, (40, 40))
    out = C.drop_close_columns(cols)                                  # default: closer than σ = 1.8 px
    np.testing.assert_array_equal(out.positions, [[10.0, 10.0], [20.0, 20.0], [20.0, 21.9]])
    np.testing.assert_array_equal(out.amplitudes, [2.0, 1.0, 3.0])
    out = C.drop_close_columns(cols, min_distance=2.0)
    np.testing.assert_array_equal(out.amplitudes, [2.0, 3.0])
    assert out.sigma == cols.sigma and out.shape == cols.shape


def test_columns_beyond_edges_match_the_lattice_neighbours_see_whole():
    """Analytic case: a drifting lattice seen through a 40² window. Frame t's edge candidates are the
    lattice columns centred outside it, within the margin, that frames t ± window hold inside theirs
    (softly: weight ramping 0 → 1 from σ/4 beyond to σ/4 inside their edge; and 0 → 1 from σ/4 inside
    to σ/4 beyond frame t's edge, 1 → 0 over the margin's last σ/2), at the weighted mean of
    those frames' amplitudes, faded where the weights sum below 1; one beside a column of frame t
    itself is dropped."""
    shape = (40, 40)
    lattice = np.stack(np.meshgrid(np.arange(-18.0, 60.0, 8.0), np.arange(-18.0, 60.0, 8.0) + 2.5,
                                   indexing="ij"), -1).reshape(-1, 2)
    drift = np.array([[0.0, 0.0], [1.7, -1.1], [3.4, -2.2], [5.1, -3.3]])
    amp = np.random.default_rng(4).uniform(0.5, 1.5, (len(drift), len(lattice)))
    sigma, margin, window = 1.5, 4.0, 1

    def visible(p):
        return (p[:, 0] >= 0) & (p[:, 0] <= 39) & (p[:, 1] >= 0) & (p[:, 1] <= 39)

    frames = []
    for t, d in enumerate(drift):
        p = lattice + d
        frames.append(_cols(p[visible(p)], amp[t][visible(p)], sigma, shape))
    # frame 1 also has its own column 0.8 px from where lattice column k, which frame 2 sees, lands
    # beyond its top edge
    p1 = lattice + drift[1]
    k = int(np.flatnonzero(~visible(p1) & (p1[:, 0] > -margin) & visible(lattice + drift[2]))[0])
    own = p1[k] + [-0.8, 0.0]
    frames[1] = _cols(np.concatenate([frames[1].positions, [own]]), np.concatenate([frames[1].amplitudes, [1.0]]),
                      sigma, shape)
    got = C.columns_beyond_edges(frames, window=window, drift=drift, margin=margin)
    assert len(got) == len(frames)
    for t in range(len(drift)):
        p = lattice + drift[t]
        # how far beyond frame t's edge: weight 1 from σ/4 beyond, tapering to 0 over the last σ/2 of the margin
        d_out = -np.minimum(np.minimum(p[:, 0], 39 - p[:, 0]), np.minimum(p[:, 1], 39 - p[:, 1]))
        f_t = np.clip(0.5 + d_out / (0.5 * sigma), 0, 1) * np.clip((margin - d_out) / (0.5 * sigma), 0, 1)
        want_pos, want_amp = [], []
        for j in np.flatnonzero((f_t > 0) & ~visible(p)):
            if t == 1 and j == k:
                continue
            # how whole neighbour u sees it: 1 from σ/4 inside its edge, 0 from σ/4 beyond
            seen = {u: float(np.clip(0.5 + min(q[0], 39 - q[0], q[1], 39 - q[1]) / (0.5 * sigma), 0, 1))
                    for u in range(max(0, t - window), min(len(drift), t + window + 1)) if u != t
                    for q in [lattice[j] + drift[u]] if visible(q[None])[0]}   # frame u lists only these
            total = f_t[j] * sum(seen.values())
            if total > 0:
                want_pos.append(p[j])
                want_amp.append(f_t[j] * sum(wu * amp[u, j] for u, wu in seen.items()) / max(total, 1.0))
        pos, a = got[t]
        assert pos.shape == (len(want_pos), 2) and a.shape == (len(want_pos),)
        if not want_pos:
            continue
        order = np.lexsort(np.round(pos, 6).T[::-1])
        want_pos, want_amp = np.array(want_pos), np.array(want_amp)
        ref = np.lexsort(np.round(want_pos, 6).T[::-1])
        np.testing.assert_allclose(pos[order], want_pos[ref], atol=1e-9)
        np.testing.assert_allclose(a[order], want_amp[ref], atol=1e-12)
    found = np.concatenate([pos for pos, _ in got])
    # the case exercises the edges the drift uncovers and covers: top, bottom, left and right
    assert (found[:, 0] < 0).any() and (found[:, 0] > 39).any() and (found[:, 1] < 0).any() and (found[:, 1] > 39).any()


def test_columns_beyond_edges_are_continuous_in_the_neighbours_positions():
    """A neighbour's column crossing its own frame's edge fades in and out: 1e-6 px moves the result by
    ~1e-6, not by a whole column (the hard test did: 0.27 of the output peak on the refine-repro movie)."""
    shape, sigma = (40, 40), 1.5
    own = np.array([[20.0, 20.0]])

    def edge(col_in_u):
        """Frame 1 holds one column (amplitude 2) at column `col_in_u`; frame 0 sees it 2 px further right."""
        frames = [_cols(own, np.ones(1), sigma, shape), _cols([[10.0, col_in_u]], [2.0], sigma, shape)]
        return C.columns_beyond_edges(frames, window=1, drift=np.array([[0.0, 0.0], [0.0, -2.0]]))[0]

    for x in (39.0 - 0.375, 39.0, 39.0 + 0.375):          # σ/4 inside, on, σ/4 beyond frame 1's edge
        (p1, a1), (p2, a2) = edge(x), edge(x + 1e-6)
        assert len(p1) == len(p2) and np.allclose(a1, a2, atol=1e-5)
    np.testing.assert_allclose(edge(39.0 - 0.375)[1], [2.0])           # seen whole: its amplitude
    np.testing.assert_allclose(edge(39.0)[1], [1.0])                   # half seen: half the evidence
    assert len(edge(39.5)[0]) == 0                                       # beyond σ/4: not seen


def test_columns_beyond_edges_are_continuous_across_the_frames_own_edge():
    """A candidate from a neighbour landing on frame t's own edge (or at the margin) fades in: 1e-6 px
    moves its amplitude by ~1e-6 (a hard "outside frame t" test dropped a column at −0.001 px: 0.39
    of the output peak on the seed-2 refine-repro movie)."""
    shape, sigma = (40, 40), 1.5

    def edge(row_in_t):
        """Frame 1 holds one column (amplitude 2) at (20, 20); frame 0 sees it at (row_in_t, 20)."""
        frames = [_cols([[30.0, 5.0]], np.ones(1), sigma, shape), _cols([[20.0, 20.0]], [2.0], sigma, shape)]
        out = C.columns_beyond_edges(frames, window=1, drift=np.array([[row_in_t - 20.0, 0.0], [0.0, 0.0]]),
                                     margin=4.0)[0]
        return float(out[1].sum())

    for r in (0.375, 0.0, -0.375, -3.25, -4.0):     # σ/4 inside, on, σ/4 beyond; the margin's taper
        assert abs(edge(r) - edge(r + 1e-6)) < 1e-5 and abs(edge(r) - edge(r - 1e-6)) < 1e-5
    assert edge(0.375) == 0.0 and edge(-4.0) == 0.0
    assert edge(0.0) == pytest.approx(1.0)                       # on the edge: half
    assert edge(-1.0) == pytest.approx(2.0)                      # beyond σ/4: whole
    assert edge(-3.625) == pytest.approx(1.0)                    # σ/4 before the margin: half


def test_movie_drift_recovers_a_known_shift():
    shape = (64, 64)
    base = _grid(shape, 9.0, 5.0)
    steps = np.array([[0.0, 0.0], [1.3, -0.6], [0.7, 1.9]])
    shifts = np.cumsum(steps, axis=0)
    imgs = np.stack([_dense(base + s, np.ones(len(base)), 1.7, shape) for s in shifts])
    np.testing.assert_allclose(C.movie_drift(imgs), shifts, atol=0.12)


def test_bounded_drift_picks_the_true_step_among_lattice_aliases():
    """A lattice correlates with itself at every lattice vector: on an exactly periodic frame all
    of them tie, and only the step bound (half the spacing) singles out the true motion."""
    r, c = np.mgrid[0:64, 0:64].astype(np.float64)
    lattice = lambda dr, dc: 2 + np.cos(2 * np.pi * (r - dr) / 8) + np.cos(2 * np.pi * (c - dc) / 8)
    steps = np.array([[0.0, 0.0], [1.3, -0.6], [-0.5, 1.9]])
    shifts = np.cumsum(steps, axis=0)
    imgs = np.stack([lattice(*s) for s in shifts])
    got = C.movie_drift(imgs, max_step=4.0)
    np.testing.assert_allclose(got, shifts, atol=0.05)
    assert np.all(np.linalg.norm(np.diff(got, axis=0), axis=1) <= 4.0)
    # unbounded: the right step modulo the lattice period, not necessarily the small one
    free = np.diff(C.movie_drift(imgs), axis=0)
    np.testing.assert_allclose(np.mod(free - steps[1:] + 4, 8) - 4, 0, atol=0.15)


def test_column_drift_recovers_the_true_steps_from_matched_columns():
    rng = np.random.default_rng(21)
    shape = (60, 60)
    base = _grid(shape, 8.0, 4.0)
    steps = np.array([[0.0, 0.0], [0.4, 1.3], [-0.2, 1.1], [0.3, 1.6], [0.1, 0.9]])
    true = np.cumsum(steps, axis=0) + np.array([2.0, -1.0])             # any origin: drift[0] is kept
    frames = []
    for t, d in enumerate(true):
        p = base + d + rng.normal(0, 0.03, base.shape)                  # fitted positions, 0.03 px noise (a step: ±0.006 px)
        p = np.delete(p, rng.choice(len(p), 4, replace=False), 0)       # each frame misses a few columns
        p = np.concatenate([p, rng.uniform(0, 60, (2, 2))])             # and has two false ones
        frames.append(_cols(p, np.ones(len(p)), 1.5, shape))
    guess = true + np.outer(np.arange(5), [0.25, -0.3])                 # 0.25 / −0.3 px per step off
    got = C.column_drift(frames, guess)
    np.testing.assert_allclose(got[0], guess[0])
    np.testing.assert_allclose(np.diff(got, axis=0), np.diff(true, axis=0), atol=0.03)
    # a frame with too few columns to pair keeps the guessed step around it
    sparse = frames[:2] + [_cols(base[:2] + true[2], np.ones(2), 1.5, shape)] + frames[3:]
    kept = C.column_drift(sparse, guess)
    np.testing.assert_allclose(np.diff(kept, axis=0)[1:3], np.diff(guess, axis=0)[1:3], atol=1e-12)
    np.testing.assert_allclose(np.diff(kept, axis=0)[[0, 3]], np.diff(true, axis=0)[[0, 3]], atol=0.03)
    with pytest.raises(InputError, match="drift rows"):
        C.column_drift(frames, guess[:3])


def test_registered_mean_matches_numpy_shifts_and_averages_only_covering_frames():
    rng = np.random.default_rng(6)
    imgs = rng.normal(size=(4, 20, 24)).astype(np.float32)
    drift = np.array([[0, 0], [1, 2], [3, 1], [2, -1]], np.float64)
    got = C.registered_mean(imgs, drift, window=1)
    assert got.shape == imgs.shape and got.dtype == np.float32
    for t in range(4):   # integer shifts: frame u's pixel (r, c) lands on (r + d, c + e) of frame t
        acc, cover = np.zeros((20, 24)), np.zeros((20, 24))
        for u in range(max(0, t - 1), min(4, t + 2)):
            dr, dc = (drift[t] - drift[u]).astype(int)
            for r in range(20):
                for c in range(24):
                    if 0 <= r - dr < 20 and 0 <= c - dc < 24:
                        acc[r, c] += imgs[u, r - dr, c - dc]
                        cover[r, c] += 1
        np.testing.assert_allclose(got[t], acc / cover, atol=1e-5)
    # sub-pixel: linear interpolation of a ramp is exact inside the frame
    ramp = np.broadcast_to(np.arange(30, dtype=np.float32)[None, :], (16, 30))
    movie = np.stack([ramp, ramp + 0.5])                    # frame 1 = frame 0 moved by −0.5 px in col
    mean = C.registered_mean(movie, np.array([[0.0, 0.0], [0.0, -0.5]]), window=1)
    np.testing.assert_allclose(mean[0, :, 1:-1], ramp[:, 1:-1], atol=1e-5)
    np.testing.assert_allclose(C.registered_mean(imgs, drift, window=0), imgs)


def test_movie_refine_recovers_a_column_one_frame_of_the_atom_map_misses(monkeypatch):
    """refine="movie" seeds from the drift-registered mean of the maps: a column missing from one
    frame's map is found there all the same, also without the residual search
    (`columns.missed_columns`); refine="frame" (which does not search) cannot find it."""
    from jaxdn.methods import noise2atom as N
    from jaxdn.methods.noise2atom import fit_movie_columns
    rng = np.random.default_rng(7)
    shape = (48, 48)
    base = _grid(shape, 10.0, 6.0)
    drift = np.array([[0.0, 0.0], [1.2, 0.7], [2.4, 1.4]])
    frames = np.stack([50 * _dense(base + d, np.ones(len(base)), 1.8, shape) + 5 + rng.normal(0, 1, shape)
                       for d in drift]).astype(np.float32)
    maps = np.stack([_dense(base + d, np.ones(len(base)), 1.8, shape) for d in drift])
    lost = 12
    maps[1] = _dense(np.delete(base, lost, 0) + drift[1], np.ones(len(base) - 1), 1.8, shape)
    target = base[lost] + drift[1]
    nearest = lambda cols: np.linalg.norm(cols[1].positions - target, axis=1).min()
    assert nearest(fit_movie_columns(frames, refine="frame", atom_maps=maps)) > 3.0
    for find_missed in (0, N.FIND_MISSED):
        with monkeypatch.context() as m:
            m.setattr(N, "FIND_MISSED", find_missed)
            movie = fit_movie_columns(frames, refine="movie", atom_maps=maps, track_window=1)
        assert nearest(movie) < 0.3
        assert [len(c.positions) for c in movie] == [len(base)] * 3
    assert abs(movie[1].sigma - 1.8) < 0.05


def test_movie_refine_places_low_dose_columns_closer_than_single_frame_fits():
    """Poisson frames of 3 counts at the brightest column, drifting 1.4 px/frame: refine="movie" (positions
    fitted to the drift-registered mean of the frames, then averaged along tracks) lands nearer the
    true columns than refine="frame", and keeps (almost) all of them."""
    from scipy.spatial import cKDTree
    from jaxdn.methods.noise2atom import fit_movie_columns
    rng = np.random.default_rng(0)
    shape = (64, 64)
    grid = _grid((80, 80), 7.0, 0.0) - 8
    base = grid + rng.uniform(-0.3, 0.3, grid.shape)
    amp = rng.uniform(0.6, 1.0, len(base))
    drift = np.array([[1.3 * t, 0.6 * t] for t in range(6)])
    frames = np.stack([rng.poisson(3.0 * _dense(base + d, amp, 2.0, shape) + 0.3) + rng.normal(0, 0.05, shape)
                       for d in drift]).astype(np.float32)
    maps = np.stack([_dense(base + d, amp, 2.0, shape) for d in drift])
    rms, missed = {}, {}
    for mode in ("frame", "movie"):
        cols = fit_movie_columns(frames, refine=mode, atom_maps=maps / maps.max(), track_window=2)
        d = []
        for t, c in enumerate(cols):
            tp = base + drift[t]
            d.append(cKDTree(c.positions).query(tp[np.all((tp >= 3) & (tp <= 60), axis=1)])[0])
        d = np.concatenate(d)
        rms[mode], missed[mode] = float(np.sqrt(np.mean(d[d < 2] ** 2))), int((d >= 2).sum())
    assert rms["movie"] < 0.32 and rms["movie"] < 0.9 * rms["frame"]
    assert missed["movie"] <= 0.02 * len(d)


def _link_weight_reference(d, tol):
    d = np.asarray(d, np.float64)
    return np.where(d <= tol / 2, 1.0, np.where(d < tol, (1 - ((2 * d - tol) / tol) ** 2) ** 2, 0.0))


def test_smooth_in_time_averages_tracks_and_leaves_movers_alone():
    shape = (50, 50)
    rng = np.random.default_rng(3)
    base = _grid(shape, 10.0, 5.0)
    drift = np.array([[0.0, 0.0], [1.0, 0.5], [2.0, 1.0]])
    noise = rng.normal(0, 0.35, (3,) + base.shape)
    amps = rng.uniform(0.8, 1.2, (3, len(base)))
    frames = [_cols(base + drift[t] + noise[t], amps[t], 1.5, shape) for t in range(3)]
    # column 0 of the last frame hops by 5 px: it is not linked to its earlier positions
    frames[2] = _cols(np.concatenate([[base[0] + drift[2] + [5.0, 0.0]], (base + drift[2] + noise[2])[1:]]),
                      amps[2], 1.5, shape)
    out = C.smooth_in_time(frames, window=1, drift=drift)
    mid = out[1]
    # reference: frame 1's own values at weight 1, each link at distance d at 1 up to σ/2, then
    # (1 − s²)², s = (d − σ/2) / (σ/2)
    d = np.linalg.norm(noise - noise[1], axis=-1)                  # (3, N) drift-corrected distances
    w = _link_weight_reference(d, 1.5)
    links = w[[0, 2]]
    assert ((links > 0) & (links < 0.9)).sum() >= 3 and (links == 1).mean() > 0.5   # full and tapered links
    ref_mid = base + drift[1] + (w[..., None] * noise).sum(0) / w.sum(0)[:, None]
    np.testing.assert_allclose(mid.positions[1:], ref_mid[1:], atol=1e-9)
    np.testing.assert_allclose(mid.amplitudes[1:], (w * amps).sum(0)[1:] / w.sum(0)[1:], atol=1e-9)
    w0 = w[:2, 0]                                                    # column 0 of frame 2 hopped away
    np.testing.assert_allclose(mid.positions[0], base[0] + drift[1] + (w0[:, None] * noise[:2, 0]).sum(0) / w0.sum(),
                               atol=1e-9)
    np.testing.assert_allclose(out[2].positions[0], base[0] + drift[2] + [5.0, 0.0], atol=1e-9)
    assert mid.sigma == pytest.approx(1.5)


@pytest.mark.parametrize("leave_out", [False, True])
def test_smooth_in_time_is_continuous_as_a_link_crosses_the_tolerance(leave_out):
    """A neighbour's column moved from just inside to just outside the link tolerance changes the
    smoothed column by next to nothing (a hard threshold jumps by a sizeable part of the distance)."""
    shape = (30, 30)
    tol = 1.5
    results = []
    for d in (tol - 1e-6, tol + 1e-6):
        frames = [_cols([[10.0, 10.0]], [1.0], tol, shape), _cols([[10.0 + d, 10.0]], [2.0], tol, shape),
                  _cols([[11.0, 10.0]], [1.5], tol, shape)]
        results.append(C.smooth_in_time(frames, window=2, leave_out=leave_out)[0])
    np.testing.assert_allclose(results[0].positions, results[1].positions, atol=1e-6)
    np.testing.assert_allclose(results[0].amplitudes, results[1].amplitudes, atol=1e-6)
    # the one link left (1.0 px away, weight (1 − (1/3)²)² = 0.79): frame 0's own value weighs
    # 1 − 0.79 when left out
    w = (1 - (1 / 3) ** 2) ** 2
    want = (1.5 * w + 1.0 * (1 - w)) / 1.0 if leave_out else (1.0 + 1.5 * w) / (1 + w)
    assert results[1].amplitudes[0] == pytest.approx(want)


def test_smooth_in_time_leaves_unchanged_columns_as_given_and_links_none_to_them():
    """Edge columns (already neighbour averages, faded with their evidence) are returned as given and
    take no part in other columns' tracks; so one faded to ε changes the result by ε, not by its
    track's full amplitude."""
    shape = (30, 30)
    inner = [_cols([[10.0, 10.0]], [1.0], 1.5, shape), _cols([[10.2, 10.0]], [2.0], 1.5, shape)]
    edge_pos = np.array([[-1.0, 20.0]])
    ref = C.smooth_in_time(inner, window=1)
    for eps in (1e-4, 0.8):
        frames = [_cols([[10.0, 10.0], [-1.0, 20.0]], [1.0, eps], 1.5, shape),
                  _cols([[10.2, 10.0], [-1.1, 20.0]], [2.0, 3.0], 1.5, shape)]
        out = C.smooth_in_time(frames, window=1, unchanged=[edge_pos, np.zeros((0, 2))])
        # frame 0: its inner column smoothed exactly as without the edge column, the edge column as given
        np.testing.assert_allclose(out[0].positions, [ref[0].positions[0], [-1.0, 20.0]], atol=1e-12)
        np.testing.assert_allclose(out[0].amplitudes, [ref[0].amplitudes[0], eps], atol=1e-12)
        # frame 1: its column at (−1.1, 20) has nothing to link to (frame 0's is unchanged): kept as fitted
        np.testing.assert_allclose(out[1].positions[1], [-1.1, 20.0], atol=1e-12)
        assert out[1].amplitudes[1] == pytest.approx(3.0)
    # without `unchanged` the faded column took the track's mean: (ε + 3) / 2
    plain = C.smooth_in_time(frames, window=1)
    assert plain[0].amplitudes[1] == pytest.approx((0.8 + 3.0) / 2)
    with pytest.raises(InputError, match="2 frames of columns but 1 arrays"):
        C.smooth_in_time(frames, window=1, unchanged=[edge_pos])


def test_column_fit_refuses_bad_input():
    with pytest.raises(InputError, match="one \\(H, W\\) frame"):
        C.fit_columns(np.zeros((2, 8, 8)), np.zeros((1, 2)))
    with pytest.raises(InputError, match="NaN/inf"):
        C.fit_columns(np.full((8, 8), np.nan), np.zeros((1, 2)))
    with pytest.raises(InputError, match="2 frames but 1 position"):
        C.fit_columns_stack(np.zeros((2, 8, 8)), [np.zeros((1, 2))])
    with pytest.raises(InputError, match="sigma must be positive"):
        C.fit_columns(np.zeros((8, 8)), np.zeros((1, 2)), sigma=0)
    with pytest.raises(InputError, match="held_amplitudes must hold one amplitude"):
        C.fit_columns_stack(np.zeros((1, 8, 8)), [np.zeros((2, 2))], held_amplitudes=[np.zeros(3)])


def test_noise2atom_refine_improves_fidelity_on_a_simulated_movie():
    """Shipped weights, 6 frames of 64² at 3 e⁻: the column fit beats the atom map in PSNR, the
    tracks beat the per-frame fit, and the output keeps the input's shape and dtype."""
    import jax
    from jaxdn.methods.noise2atom import denoise
    from jaxdn.train.noise2atom import _affine_psnr, simulated_movie
    clean, noisy, _ = simulated_movie(jax.random.key(7), frames=6, size=64, peak_electrons=3.0)
    psnr = {}
    for mode in ("none", "frame", "movie"):
        out = denoise(noisy, refine=mode)
        assert out.shape == noisy.shape and out.dtype == np.float32 and np.isfinite(out).all()
        psnr[mode] = _affine_psnr(out, clean)
    assert psnr["frame"] > psnr["none"] + 1.0
    assert psnr["movie"] > psnr["frame"] + 1.0
    # the numbers behind the image: the same columns, as a table
    from jaxdn.methods.noise2atom import fit_movie_columns
    cols = fit_movie_columns(noisy, refine="movie")
    np.testing.assert_array_equal(np.stack([C.render_columns(c) for c in cols]), out)
    table = C.columns_table(cols)
    assert table.shape == (sum(len(c.positions) for c in cols), len(C.COLUMN_FIELDS))
    np.testing.assert_array_equal(np.unique(table[:, 0]), np.arange(len(noisy)))
    np.testing.assert_array_equal(table[table[:, 0] == 2][:, 1:3], cols[2].positions)
    np.testing.assert_array_equal(table[table[:, 0] == 2][:, 3], cols[2].amplitudes)
    with pytest.raises(InputError, match="refine must be one of"):
        denoise(noisy, refine="lattice")


def test_fit_in_windows_matches_the_whole_frame_fit():
    """A frame fitted in overlapping windows (bounded memory) gives the same columns, each once."""
    rng = np.random.default_rng(4)
    shape = (200, 170)
    truth = _grid(shape, 9.0, 3.0) + rng.uniform(-0.3, 0.3, (len(_grid(shape, 9.0, 3.0)), 2))
    frame = 5 * _dense(truth, rng.uniform(0.6, 1.0, len(truth)), 1.7, shape) + 1.0 + rng.normal(0, 0.1, shape)
    start = truth + rng.uniform(-0.5, 0.5, truth.shape)
    whole = C.fit_columns(frame, start, background_order=0)
    tiled = C.fit_columns(frame, start, background_order=0, tile=136)
    assert len(C._spans(shape[0], 136, 36)) > 1 and len(C._spans(shape[1], 136, 36)) > 1
    assert len(tiled.positions) == len(whole.positions) == len(truth)
    d, j = __import__("scipy.spatial", fromlist=["cKDTree"]).cKDTree(whole.positions).query(tiled.positions)
    assert d.max() < 0.05 and len(set(j)) == len(j)
    np.testing.assert_allclose(tiled.amplitudes, whole.amplitudes[j], rtol=0.02)
    assert abs(tiled.sigma - 1.7) < 0.03 and abs(whole.sigma - 1.7) < 0.03   # medians of window fits vs one fit


def test_spans_partition_the_axis_with_fixed_windows():
    for n, tile, margin in ((1000, 300, 40), (301, 300, 40), (250, 300, 40), (777, 200, 33)):
        spans = C._spans(n, tile, margin)
        pts = np.arange(-5, n + 5) + 0.5
        owners = [sum((lo <= x < hi) for _, _, lo, hi in spans) for x in pts]
        assert owners == [1] * len(pts)                               # every position in exactly one core
        for ws, length, lo, hi in spans:
            assert length == min(n, tile) and 0 <= ws and ws + length <= n
            assert lo == -np.inf or lo - ws >= margin                 # cores keep a margin inside the window
            assert hi == np.inf or ws + length - hi >= margin


def test_noise2atom_streamed_stack_matches_the_in_memory_result(tmp_path):
    """A stack streamed in chunks of 2 frames is normalised with the whole stack's range
    (`methods.noise2atom.stream_options`), so it equals the one-call result; without the hook each
    chunk would get its own min–max."""
    import jax
    from jaxdn import api, batch
    from jaxdn.methods import noise2atom as N
    from jaxdn.train.noise2atom import simulated_movie
    _, noisy, _ = simulated_movie(jax.random.key(3), frames=5, size=48, peak_electrons=3.0, background=0.5)
    noisy = np.array(noisy)
    noisy[3] *= 3.0                                       # one much brighter frame: chunk ranges differ
    np.save(tmp_path / "movie.npy", noisy)
    res = batch.denoise_file(tmp_path / "movie.npy", tmp_path / "out.npy", method="noise2atom", batch_frames=2)
    assert res.streamed
    whole = api.denoise(noisy, "noise2atom")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), whole, atol=1e-5)
    chunked = np.concatenate([N.denoise(noisy[i:i + 2]) for i in range(0, 5, 2)])
    assert np.abs(chunked - whole).max() > 1e-2           # the case the hook exists for
    lo_hi = N.stream_options(__import__("jaxdn.io", fromlist=["open_lazy"]).open_lazy(tmp_path / "movie.npy"), {})
    pre = __import__("jaxdn.train.noise2atom", fromlist=["remove_background"]).remove_background(noisy, order=2)
    assert lo_hi["value_range"] == pytest.approx((float(pre.min()), float(pre.max())), rel=1e-6)


def test_noise2atom_streamed_refine_movie_sees_its_neighbours_across_chunk_boundaries(tmp_path):
    """Streamed in chunks of 3 frames, `refine="movie"` gets 4 × track_window frames of context per
    side (`stream_halo`) and matches the one-call result (up to the per-call median σ); without the
    context the frames next to a boundary lose their tracks."""
    import jax
    from jaxdn import api, batch, io
    from jaxdn.methods import noise2atom as N
    from jaxdn.train.noise2atom import simulated_movie
    _, noisy, _ = simulated_movie(jax.random.key(3), frames=8, size=48, peak_electrons=3.0)
    noisy = np.asarray(noisy)
    np.save(tmp_path / "movie.npy", noisy)
    opts = {"refine": "movie", "track_window": 1}
    assert N.stream_halo(opts) == 4 and N.stream_halo({"refine": "frame"}) == 0
    res = batch.denoise_file(tmp_path / "movie.npy", tmp_path / "out.npy", method="noise2atom", batch_frames=3,
                             options=opts)
    assert res.streamed
    whole = api.denoise(noisy, "noise2atom", **opts)
    scale = np.abs(whole).max()
    assert np.abs(np.load(tmp_path / "out.npy") - whole).max() < 0.01 * scale
    vr = N.stream_options(io.open_lazy(tmp_path / "movie.npy"), {})["value_range"]
    alone = np.concatenate([N.denoise(noisy[i:i + 3], value_range=vr, **opts) for i in range(0, 8, 3)])
    assert np.abs(alone - whole).max() > 0.05 * scale


def test_cli_refine_writes_columns_in_input_units_and_records_the_option(tmp_path, capsys):
    """`jaxdn denoise -m noise2atom --refine movie`: calibrated output of the input's shape whose
    values are the fitted columns (input units, so the peak is near the input's column peaks), the
    option in the sidecar; `--refine` on a method without it is refused in one line."""
    import json
    import jax
    from jaxdn import cli, io
    from jaxdn.train.noise2atom import simulated_movie
    clean, noisy, _ = simulated_movie(jax.random.key(11), frames=3, size=48, peak_electrons=5.0)
    src = io.write(tmp_path / "movie.tif", io.Image(data=np.asarray(noisy, np.float32), pixel_size=0.02, unit="nm",
                                                     metadata={}, source=None))
    out = tmp_path / "out.tif"
    assert cli.main(["denoise", "-m", "noise2atom", "--refine", "movie", "--track-window", "1", "-q",
                     "--output", str(out), str(src)]) == 0
    img = io.read(out)
    assert img.data.shape == noisy.shape and img.pixel_size == pytest.approx(0.02) and img.unit == "nm"
    assert np.all(img.data >= 0) and 0.3 < img.data.max() / np.percentile(noisy, 99.9) < 2.0
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    params = sidecar["provenance"]["parameters"]
    assert params["refine"] == "movie" and params["track_window"] == 1 and len(params["value_range"]) == 2
    capsys.readouterr()
    assert cli.main(["denoise", "-m", "reucid", "--refine", "frame", "-q", "-o", str(tmp_path / "r"), str(src)]) == 2
    assert "does not apply to method 'reucid'" in capsys.readouterr().err


def test_evaluate_on_a_users_movie_reports_css_beside_column_consistency(tmp_path):
    """`evaluate(data=...)` without ground truth: CSS and the column consistency of consecutive
    frames, for the atom map and both refinements; the refined tracks are at least as consistent."""
    import jax
    from jaxdn.train.noise2atom import evaluate, simulated_movie
    _, noisy, _ = simulated_movie(jax.random.key(5), frames=4, size=64, peak_electrons=5.0)
    np.save(tmp_path / "movie.npy", noisy)
    r = evaluate(data=tmp_path / "movie.npy", outdir=tmp_path / "ev", quiet=True, refine=True)
    for key in ("", "_refined_frame", "_refined_movie"):
        c = r[f"column_consistency{key}"]
        assert 0.5 < c["f1"] <= 1.0 and c["columns_per_frame"] > 10
        assert 0.0 < r[f"css{key if key else '_denoised'}"] <= 1.0
    assert r["column_consistency_refined_movie"]["f1"] >= r["column_consistency"]["f1"] - 0.02
    assert (tmp_path / "ev" / "noise2atom_eval.json").is_file()
    assert r["frames"] == 4 and "peak_electrons" not in r
    np.save(tmp_path / "frame.npy", noisy[0])
    with pytest.raises(InputError, match="at least 2 frames"):
        evaluate(data=tmp_path / "frame.npy", outdir=tmp_path / "ev1", quiet=True)
