"""Noise2Atom benchmark: quality on a simulated drifting low-dose movie and train-step speed.

    python benchmarks/noise2atom_bench.py quality [--weights W] [--frames 16] [--peak 3]
    python benchmarks/noise2atom_bench.py ceiling [--frames 8] [--peak 3]
    python benchmarks/noise2atom_bench.py refine-large [--size 1024] [--peak 3]
    python benchmarks/noise2atom_bench.py css-edges [--seed 1] [--background 0.5]
    python benchmarks/noise2atom_bench.py refine-repro [--frames 16] [--size 128] [--peak 3] [--tries 3]
    python benchmarks/noise2atom_bench.py select runs/n2a_snap/*.npz [--copy-to jaxdn/weights/noise2atom.npz]
    python benchmarks/noise2atom_bench.py norm-lrelu [--shape 6,130,130,64]
    python benchmarks/noise2atom_bench.py ttq --variants small,small:xla,fast [--steps 400] [--target 0.9,0.95] [--set KEY=VALUE ...]
    python benchmarks/noise2atom_bench.py speed --variants small,small:xla,fast [--steps 2] [--torch [--torch-jemalloc] [--torch-bf16]]
        (the PyTorch peer runs for the `paper` and `small` architectures with the variant's optimiser)

`speed` runs JAX under jemalloc, else mimalloc, as the `jaxdn` command does (`jaxdn.allocator`;
`JAXDN_ALLOCATOR=system` for glibc's malloc, `=mimalloc` to pick it); the PyTorch peer always runs once under the system
allocator, and with --torch-jemalloc also under jemalloc (it is slower there), so "fastest" is measured.
Keep --steps ≥ 2: mimalloc returns pages left unused for a second, so the first JAX step after the
PyTorch peer's turn faults its scratch memory in again; the minimum is the steady state.

`quality` calls `jaxdn.train.noise2atom.evaluate` (CSS vs the clean movie's own CSS, PSNR vs a
Gaussian filter tuned on the same movie, atom-column F1 at 2 px, flat and gradient background) and
prints a markdown table; `speed` times the fused train step (critic ×5 + generators) of config
variants after compilation. Results are pasted into `benchmarks/results/noise2atom.md`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def quality(args) -> None:
    from jaxdn.train.noise2atom import evaluate
    r = evaluate(weights=args.weights, outdir=Path(args.outdir), frames=args.frames,
                 peak_electrons=args.peak, seed=args.seed, quiet=True)
    print(json.dumps(r, indent=2))
    print("\n| background | CSS clean | CSS noisy | CSS Gauss | CSS N2A | PSNR noisy | PSNR Gauss (σ) | PSNR N2A "
          "| F1 clean | F1 Gauss | F1 N2A | false atoms/true Gauss | N2A | resolving F1 clean / Gauss / N2A |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in ("flat", "gradient"):
        q = r[name]
        print(f"| {name} | {q['css_clean']:.3f} | {q['css_noisy']:.3f} | {q['css_gauss']:.3f} | {q['css_denoised']:.3f} "
              f"| {q['psnr_noisy']:.2f} | {q['psnr_gauss']:.2f} ({q['gauss_sigma']}) | {q['psnr_denoised']:.2f} "
              f"| {q['atoms_clean']['f1']:.3f} | {q['atoms_gauss']['f1']:.3f} | {q['atoms_denoised']['f1']:.3f} "
              f"| {q['atoms_gauss']['false_atoms_per_true']:.3f} | {q['atoms_denoised']['false_atoms_per_true']:.3f} "
              f"| {q['atoms_clean']['resolving']['f1']:.3f} / {q['atoms_gauss']['resolving']['f1']:.3f} "
              f"/ {q['atoms_denoised']['resolving']['f1']:.3f} |")
    if "psnr_refined_frame" not in r["flat"]:
        return
    rows = (("N2A atom map (`refine=none`)", "denoised"), ("N2A + column fit (`refine=frame`)", "refined_frame"),
            ("N2A + column tracks (`refine=movie`)", "refined_movie"),
            ("peer: Gaussian filter", "gauss"), ("peer: Gaussian + column fit", "gauss_columns_frame"),
            ("peer: Gaussian + column tracks", "gauss_columns_movie"),
            ("peer: Gaussian, drift-registered mean over the same frames", "gauss_temporal"))
    print("\n| output | background | PSNR dB | vs tuned Gaussian | CSS (clean) | F1 | false atoms/true "
          "| resolving F1 (false/true) | F1 of the fitted column list |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, key in rows:
        for name in ("flat", "gradient"):
            q = r[name]
            d = q[f"psnr_{key}"] - q["psnr_gauss"]
            a = q[f"atoms_{key}"]
            fitted = q.get(f"atoms_{key}_fitted")
            fitted_f1 = "" if fitted is None else f"{fitted['f1']:.3f}"
            print(f"| {label} | {name} | {q[f'psnr_{key}']:.2f} | {d:+.2f} | {q[f'css_{key}']:.3f} ({q['css_clean']:.3f}) "
                  f"| {a['f1']:.3f} | {a['false_atoms_per_true']:.3f} "
                  f"| {a['resolving']['f1']:.3f} ({a['resolving']['false_atoms_per_true']:.3f}) | {fitted_f1} |")


def ceiling(args) -> None:
    """Per-frame PSNR ceiling of a column model: the test movie fitted with the *true* column
    positions (every column, also those just outside the frame) and the true σ (grid-searched),
    only the amplitudes and a polynomial background free (linear least squares, NumPy). What a
    per-frame column fit could reach with exact positions."""
    import jax
    import numpy as np
    from scipy import ndimage
    from jaxdn.simulate import atoms
    from jaxdn.train.noise2atom import _affine_psnr, simulated_movie
    key = jax.random.key(1000 + args.seed)
    _, pos, _ = atoms.drift_movie(jax.random.split(key, 3)[0], frames=args.frames, size=128)
    pos = np.asarray(pos)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float64)
    y = np.linspace(-1, 1, 128)[:, None] * np.ones((1, 128))
    x = np.ones((128, 1)) * np.linspace(-1, 1, 128)[None]
    bg = np.stack([(y ** i * x ** j).ravel() for i in range(3) for j in range(3 - i)])
    print("| background | tuned Gaussian dB | true-position ceiling dB (σ px) |\n|---|---|---|")
    for name, strength in (("flat", 0.0), ("gradient", 0.5)):
        clean, noisy, _ = simulated_movie(key, frames=args.frames, peak_electrons=args.peak, background=strength)
        gauss = max(_affine_psnr(ndimage.gaussian_filter(noisy, (0, s, s)), clean) for s in (1.0, 1.25, 1.5, 2.0, 2.5))
        best = (-np.inf, None)
        for sig in np.arange(1.0, 2.61, 0.1):
            out = []
            for t in range(args.frames):
                p = pos[t][np.all(np.abs(pos[t] - 63.5) < 64 + 12, axis=1)]
                g = np.exp(-((yy[None] - p[:, 0, None, None]) ** 2 + (xx[None] - p[:, 1, None, None]) ** 2)
                           / (2 * sig ** 2)).reshape(len(p), -1)
                coef = np.linalg.lstsq(np.concatenate([g, bg]).T, noisy[t].ravel(), rcond=None)[0]
                out.append((g.T @ coef[:len(p)]).reshape(128, 128))
            best = max(best, (_affine_psnr(np.array(out), clean), round(float(sig), 1)))
        print(f"| {name} | {gauss:.2f} | {best[0]:.2f} ({best[1]}) |", flush=True)


def refine_large(args) -> None:
    """One large simulated 3 e⁻ lattice frame: atom map vs `refine="frame"` (windowed column fit),
    wall time (first call, compilation included) and peak resident memory of the process."""
    import resource
    import jax
    import numpy as np
    from scipy import ndimage
    from jaxdn.methods.noise2atom import denoise
    from jaxdn.simulate import atoms, noise
    from jaxdn.train.noise2atom import _affine_psnr
    img, _, valid = atoms.haadf_lattice(jax.random.key(3), size=args.size, max_atoms=max(4096, args.size ** 2 // 25))
    clean = np.asarray(img)
    noisy = np.asarray(noise.poisson_gaussian(jax.random.key(4), img, dose=args.peak / 0.04 / float(img.max())))
    t = time.perf_counter()
    atom_map = denoise(noisy)
    t_map = time.perf_counter() - t
    t = time.perf_counter()
    refined = denoise(noisy, refine="frame")
    t_ref = time.perf_counter() - t
    gauss, sig = max((_affine_psnr(ndimage.gaussian_filter(noisy, s), clean), s) for s in (1.0, 1.5, 2.0, 2.5))
    print(json.dumps({"size": args.size, "columns": int(np.sum(np.asarray(valid))), "atom_map_s": t_map,
                      "refine_frame_s": t_ref, "psnr_atom_map": _affine_psnr(atom_map, clean),
                      "psnr_refine_frame": _affine_psnr(refined, clean), "psnr_gauss": gauss, "gauss_sigma": sig,
                      "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def refine_repro(args) -> None:
    """Reproducibility and cost of the column refinement: how far `refine` output moves when the atom
    maps it is seeded from change by 1e-6 (float32 rounding differs that much between CPUs, chunkings
    and library versions), as max |Δ| / output peak over `--tries` perturbations, and the compiled time
    per frame (a warm-up call on 3 frames compiles first)."""
    import jax
    import numpy as np
    from jaxdn.methods import noise2atom as N
    from jaxdn.train.noise2atom import simulated_movie
    _, noisy, _ = simulated_movie(jax.random.key(args.seed), frames=args.frames, size=args.size,
                                  peak_electrons=args.peak)
    noisy = np.asarray(noisy)
    maps = N.denoise(noisy)
    rng = np.random.default_rng(0)
    for mode in ("frame", "movie"):
        N.refine_columns(noisy[:3], maps[:3], mode=mode)
        t = time.perf_counter()
        ref = N.refine_columns(noisy, maps, mode=mode)
        dt = (time.perf_counter() - t) / len(noisy)
        moved = []
        for _ in range(args.tries):
            near = np.clip(maps + 1e-6 * rng.standard_normal(maps.shape).astype(np.float32), 0.0, 1.0)
            moved.append(float(np.abs(N.refine_columns(noisy, near, mode=mode) - ref).max() / np.abs(ref).max()))
        print(json.dumps({"mode": mode, "frames": args.frames, "size": args.size, "peak": args.peak,
                          "s_per_frame": round(dt, 4), "max_change_rel_to_peak": [round(m, 5) for m in moved]}),
              flush=True)


def css_edges(args) -> None:
    """Where the CSS of the `refine=movie` output stands against the clean movie's own CSS, and why.

    (1) The clean movie's columns refitted (true positions held, σ and amplitudes fitted, constant
    background) and rendered as `refine` renders: only columns centred inside the frame, then also
    those up to 3 and 6 px beyond its edges. (2) The `refine=movie` column fit without the columns
    beyond each frame's edge (the session-11 pipeline), then as shipped (`fit_movie_columns`: those
    columns from the neighbouring frames, `columns.columns_beyond_edges`, held at the neighbours'
    amplitudes), then the session-11 experiment: the same columns fitted freely, their amplitudes
    replaced by their track's, capped at the frame's brightest column."""
    import dataclasses
    import jax
    import numpy as np
    from jaxdn import columns as C
    from jaxdn.methods.noise2atom import denoise, fit_movie_columns
    from jaxdn.metrics import find_atoms
    from jaxdn.simulate import atoms
    from jaxdn.train.noise2atom import _affine_psnr, _f1, _mean_css, simulated_movie
    key = jax.random.key(1000 + args.seed)
    clean, noisy, truth = simulated_movie(key, frames=args.frames, peak_electrons=args.peak, background=args.background)
    _, pos, _ = atoms.drift_movie(jax.random.split(key, 3)[0], frames=args.frames, size=clean.shape[-1])
    pos, size = np.asarray(pos), clean.shape[-1]
    print(f"seed {args.seed}, background {args.background}, {args.peak} e-: CSS of the clean movie {_mean_css(clean, normalise=False):.4f}\n")
    print("| clean columns rendered | columns/frame | σ fitted px | CSS |\n|---|---|---|---|")
    for lo in (0, -3, -6):
        p = [q[np.all((q >= lo) & (q <= size - 1 - lo), axis=1)] for q in pos]
        cc = C.fit_columns_stack(clean, p, background_order=0, fit_positions=False, rounds=1, min_rel_amplitude=0.0)
        img = np.stack([C.render_columns(c) for c in cc])
        print(f"| centred inside or up to {-lo} px beyond the edge | {np.mean([len(c.positions) for c in cc]):.0f} "
              f"| {np.median([c.sigma for c in cc]):.2f} | {_mean_css(img):.4f} |")
    frames, window, order = np.asarray(noisy, np.float32), 2, 2
    maps = denoise(frames)
    drift = C.lattice_drift(maps, [find_atoms(m) for m in maps])
    # the first fit as `fit_movie_columns` makes it: to the drift-registered mean of the frames
    fitted = C.fit_columns_stack(C.registered_mean(frames, drift, window=window),
                                 [find_atoms(m) for m in C.registered_mean(maps, drift, window=window)],
                                 background_order=order)
    tracks = C.smooth_in_time(fitted, window=window, drift=drift, leave_out=True)
    sigma = float(np.median([c.sigma for c in tracks]))

    def row(f):
        img = np.stack([C.render_columns(c) for c in f])
        return (f"| {np.mean([len(c.positions) for c in f]):.0f} | {np.median([c.sigma for c in f]):.2f} "
                f"| {_mean_css(img):.4f} | {_affine_psnr(img, clean):.2f} | {_f1(img, truth)['f1']:.3f} |")

    def finish(positions, cap):
        f = C.fit_columns_stack(frames, positions, sigma=sigma, background_order=order, rounds=1, fit_positions=False)
        others = C.smooth_in_time(f, window=window, drift=drift, leave_out=True)
        f = C.smooth_in_time(f, window=window, drift=drift)
        if cap:
            for i, (c, o) in enumerate(zip(f, others)):
                h, w = c.shape
                out = (c.positions < 0).any(1) | (c.positions[:, 0] > h - 1) | (c.positions[:, 1] > w - 1)
                a = c.amplitudes.copy()
                a[out] = np.minimum(o.amplitudes[out], a[~out].max() if (~out).any() else np.inf)
                f[i] = dataclasses.replace(c, amplitudes=a)
        return row(f)
    print("\n| `refine=movie` | columns/frame | σ px | CSS | PSNR dB | F1 |\n|---|---|---|---|---|---|")
    print("| columns centred inside only (session 11) " + finish([c.positions for c in tracks], False))
    print("| + neighbours' columns ≤ 3σ beyond the edge, held at their amplitudes (shipped) "
          + row(fit_movie_columns(frames, atom_maps=maps, track_window=window, background_order=order)))
    inside = C.fit_columns_stack(frames, [c.positions for c in tracks], sigma=sigma, background_order=order,
                                 rounds=1, fit_positions=False)
    extra = [e for e, _ in C.columns_beyond_edges(inside, window=window, drift=drift)]
    both = [np.concatenate([c.positions, e]) for c, e in zip(tracks, extra)]
    for cap in (False, True):
        print(f"| + the same columns fitted{', amplitudes from the track, capped' if cap else ''} "
              + finish(both, cap))


def select(args) -> None:
    """Pick the best of several weight snapshots on a *validation* movie (seed `--seed`, default 1;
    the quality table uses seed 0): GAN training does not improve monotonically, so the shipped
    weights are the snapshot with the best mean atom F1 (flat + gradient; PSNR breaks ties)."""
    import shutil
    from jaxdn.train.noise2atom import evaluate
    from jaxdn.weights_io import read_meta
    rows = []
    for w in args.weights:
        r = evaluate(weights=w, outdir=Path(args.outdir), frames=args.frames, peak_electrons=args.peak,
                     seed=args.seed, quiet=True)
        f1 = (r["flat"]["atoms_denoised"]["f1"] + r["gradient"]["atoms_denoised"]["f1"]) / 2
        psnr = (r["flat"]["psnr_denoised"] + r["gradient"]["psnr_denoised"]) / 2
        rows.append((f1, psnr, w, read_meta(w).get("step")))
        print(json.dumps({"weights": w, "step": rows[-1][3], "mean_f1": f1, "mean_psnr": psnr}), flush=True)
    print("\n| snapshot | step | mean F1 (flat, gradient) | mean PSNR dB |\n|---|---|---|---|")
    for f1, psnr, w, step in rows:
        print(f"| {Path(w).name} | {step} | {f1:.3f} | {psnr:.2f} |")
    best = max(rows)
    print(f"\nbest: {best[2]} (step {best[3]})")
    if args.copy_to:
        shutil.copyfile(best[2], args.copy_to)
        print(f"copied to {args.copy_to}")


def _jax_step(variant: str, impl: str | None):
    """(compiled step, state, batch, compile_s, gflop) of the fused train step of a config variant."""
    import dataclasses
    import jax
    import numpy as np
    from jaxdn.train import noise2atom as T
    from jaxdn.train.config import load_config
    cfg = load_config(f"configs/noise2atom.py:{variant}")
    if impl:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, impl=impl))
    gdefs, init_state, tx = T.graphdefs_and_init(cfg)
    state = init_state()
    frames = jax.numpy.asarray(np.random.default_rng(0).uniform(-1, 1, (4, cfg.crop * 2, cfg.crop * 2)).astype(np.float32))
    batch = T.make_batch_fn(cfg)(jax.random.key(0), 0, {"frames": frames})
    step = jax.jit(T.make_train_step(cfg, gdefs, tx))
    t = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    t_compile = time.perf_counter() - t
    flops = _convolution_flops(lambda: jax.jit(T.make_train_step(cfg, gdefs, tx)), state, batch)
    state, _ = compiled(state, batch, jax.random.key(0))
    jax.block_until_ready(state)
    return compiled, state, batch, t_compile, flops / 1e9


def _convolution_flops(make_step, state, batch) -> float:
    """XLA's FLOP count of the step with every convolution and filter gradient an XLA convolution:
    cost analysis counts a loop body once, so the chunked filter gradients (`fori_loop`s) and the
    bf16 flat convolutions (`lax.map`) would be under-counted."""
    import jax
    from jaxdn.models import noise2atom as M
    chunked, flat = M._use_chunked_wgrad, M._use_flat_conv
    M._use_chunked_wgrad = M._use_flat_conv = lambda *shapes: False
    try:
        compiled = make_step().lower(state, batch, jax.random.key(0)).compile()
    finally:
        M._use_chunked_wgrad, M._use_flat_conv = chunked, flat
    return (compiled.cost_analysis() or {}).get("flops", float("nan"))


# config variant -> the architecture benchmarks/peers/torch_noise2atom.py implements for it
PEER_VARIANTS = {"paper": "paper", "paper_fast": "paper", "paper_bf16": "paper", "small": "small", "fast": "small"}


def _torch_step(variant: str, channels_last: bool, steps: int, jemalloc: bool = False, bf16: bool = False) -> dict:
    """The PyTorch peer with the architecture, optimiser and low-pass of config `variant`, under
    the system allocator or (`jemalloc`) the one `jaxdn.allocator` would preload; `bf16`: under
    bfloat16 autocast."""
    import os
    import subprocess
    from jaxdn.allocator import MALLOC_CONF, jemalloc_library
    from jaxdn.train.config import load_config
    cfg = load_config(f"configs/noise2atom.py:{variant}")
    peer = Path(__file__).with_name("peers") / "torch_noise2atom.py"
    cmd = [sys.executable, str(peer), "--variant", variant, "--steps", str(steps), "--lr", str(cfg.lr),
           "--momentum", str(cfg.momentum), "--lowpass-size", str(cfg.lowpass_size),
           "--lowpass-variance", str(cfg.lowpass_variance)] + (["--channels-last"] if channels_last else []) + (
               ["--bf16"] if bf16 else [])
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if jemalloc:
        env.update(LD_PRELOAD=jemalloc_library(), MALLOC_CONF=MALLOC_CONF)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(args) -> None:
    """JAX fused step per (variant, impl) and, with --torch, the PyTorch peer (default and
    channels-last eager) interleaved round by round in the same run, plus the f32 matmul peak."""
    from jaxdn.allocator import jemalloc_library, loaded_allocator
    import jax
    from jaxdn.bench import matmul_peak
    print(json.dumps({"jax_allocator": loaded_allocator()}), flush=True)
    peak = matmul_peak(n=2048, dtype="float32", repeats=3).get("flops_per_s", float("nan")) / 1e9
    print(json.dumps({"matmul_f32_gflop_s": peak}), flush=True)
    cases = []
    for spec in args.variants.split(","):
        variant, _, impl = spec.partition(":")
        compiled, state, batch, t_compile, gflop = _jax_step(variant, impl or None)
        cases.append({"name": f"jax {spec}", "variant": variant, "compile_s": t_compile, "gflop": gflop,
                      "run": (compiled, state, batch), "times": []})
    peers = []
    if args.torch:
        for variant in sorted({PEER_VARIANTS[c["variant"]] for c in cases if c["variant"] in PEER_VARIANTS}):
            for cl in (False, True):
                for je in (False, True) if args.torch_jemalloc and jemalloc_library() else (False,):
                    for bf in (False, True) if args.torch_bf16 else (False,):
                        peers.append({"name": f"torch {variant}{' channels-last' if cl else ''}{' jemalloc' if je else ''}"
                                      f"{' bf16 autocast' if bf else ''}",
                                      "variant": variant, "cl": cl, "jemalloc": je, "bf16": bf, "times": []})
    for r in range(args.rounds):
        for c in cases:
            compiled, state, batch = c["run"]
            for i in range(args.steps):
                t = time.perf_counter()
                state, _ = compiled(state, batch, jax.random.key(100 * r + i + 1))
                jax.block_until_ready(state)
                c["times"].append(time.perf_counter() - t)
            c["run"] = (compiled, state, batch)
        for p in peers:
            res = _torch_step(p["variant"], p["cl"], args.steps, p["jemalloc"], p["bf16"])
            p["times"].append(res.get("s_per_step", float("nan")))
            p["last"] = res
    print(f"\nf32 matmul peak (jnp.dot 2048², same run): {peak:.0f} GFLOP/s; JAX allocator: {loaded_allocator()}\n")
    print("| step (critic ×5 + generators) | s/step (min) | compile s | GFLOP/step | GFLOP/s | % of f32 peak |")
    print("|---|---|---|---|---|---|")
    for c in cases:
        t = min(c["times"])
        print(f"| {c['name']} | {t:.3f} | {c['compile_s']:.0f} | {c['gflop']:.1f} | {c['gflop'] / t:.1f} | "
              f"{100 * c['gflop'] / t / peak:.0f} % |")
        print(json.dumps({k: v for k, v in c.items() if k != "run"}), flush=True)
    for p in peers:
        t = min(p["times"])
        gflop = next((c["gflop"] for c in cases if PEER_VARIANTS.get(c["variant"]) == p["variant"]), float("nan"))
        print(f"| {p['name']} (eager) | {t:.3f} | – | ({gflop:.1f}) | {gflop / t:.1f} | {100 * gflop / t / peak:.0f} % |")
        print(json.dumps({k: v for k, v in p.items()}, default=str), flush=True)


def time_to_quality(args) -> None:
    """Train each config variant from scratch (`jaxdn train`, one process each, one after another)
    and read its `metrics.jsonl`: the wall time (compilation included) until the validation atom
    F1 of `SnapshotSelector` first reaches each `--target`, beside the median step time."""
    import shutil
    import statistics
    import subprocess
    root = Path(args.workdir)
    targets = [float(t) for t in args.target.split(",")]
    rows = []
    for spec in args.variants.split(","):
        variant, _, impl = spec.partition(":")
        work = root / spec.replace(":", "_")
        shutil.rmtree(work, ignore_errors=True)
        sets = [f"steps={args.steps}"] + list(args.set) + ([f"model.impl={impl}"] if impl else [])
        cmd = [sys.executable, "-m", "jaxdn.cli", "train", "noise2atom", "--config", f"configs/noise2atom.py:{variant}",
               "--workdir", str(work), "-q"] + [a for kv in sets for a in ("--set", kv)]
        print(" ".join(cmd[1:]), flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{spec}: exit {out.returncode}: {out.stderr.strip()[-2000:]}")
        records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if r["kind"] == "eval" and "val_f1" in r]
        rates = [r["steps_per_s"] for r in records if r["kind"] == "train" and "steps_per_s" in r]
        hits = [next((r for r in evals if r["val_f1"] >= t), None) for t in targets]
        best = max(evals, key=lambda r: (r["val_f1"], r["val_psnr"]))
        row = {"variant": spec, "s_per_step": 1.0 / statistics.median(rates), "targets": targets,
               "target_steps": [h and h["step"] for h in hits], "target_wall_s": [h and h["wall_s"] for h in hits],
               "best_step": best["step"], "best_val_f1": best["val_f1"],
               "best_val_psnr": best["val_psnr"], "wall_s": records[-1]["wall_s"],
               "curve": [(r["step"], round(r["wall_s"], 1), round(r["val_f1"], 3), round(r["val_psnr"], 2)) for r in evals]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    heads = "".join(f" wall s to val F1 ≥ {t} (step) |" for t in targets)
    print(f"\n| variant | s/step (median) |{heads} best val F1 / PSNR dB (step) | wall s for {args.steps} steps |")
    print("|---|---|" + "---|" * len(targets) + "---|---|")
    for r in rows:
        hits = "".join(" not reached |" if s is None else f" {w:.0f} ({s}) |"
                       for s, w in zip(r["target_steps"], r["target_wall_s"]))
        print(f"| {r['variant']} | {r['s_per_step']:.3f} |{hits} {r['best_val_f1']:.3f} / {r['best_val_psnr']:.2f} "
              f"({r['best_step']}) | {r['wall_s']:.0f} |")


def norm_lrelu(args) -> None:
    """Where the `paper` step's elementwise time goes: the fused instance norm + leaky ReLU
    (`models.noise2atom.norm_leaky_relu`) forward and backward on one activation, against the
    memory passes they need at least (one elementwise read+write, one per-sample sum), same process."""
    import jax
    import jax.numpy as jnp
    from jaxdn.models.noise2atom import _nlr_bwd, _nlr_fwd
    shape = tuple(int(v) for v in args.shape.split(","))
    x = jax.random.normal(jax.random.key(0), shape) * 0.7 + 0.3
    g = jax.random.normal(jax.random.key(1), shape)
    scale, offset = jnp.full(1, 1.3), jnp.full(1, 0.1)
    fwd = jax.jit(_nlr_fwd)
    res = fwd(x, scale, offset)[1]

    def best_ms(f, *a, n=20):
        jax.block_until_ready(f(*a))
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(n):
                r = f(*a)
            jax.block_until_ready(r)
            times.append((time.perf_counter() - t) / n)
        return 1e3 * min(times)

    mb = x.size * 4 / 1e6
    cases = {"a·x + b (1 read, 1 write)": (jax.jit(lambda v: 2.0 * v + 1.0), (x,)),
             "per-sample sum (1 read)": (jax.jit(lambda v: jnp.sum(v, axis=(1, 2, 3))), (x,)),
             "norm+lReLU forward, with residuals": (fwd, (x, scale, offset)),
             "norm+lReLU backward": (jax.jit(_nlr_bwd), (res, g))}
    print(f"| {shape} float32, {mb:.1f} MB per tensor | ms (best of {args.rounds}) | tensor passes at the a·x+b rate |")
    print("|---|---|---|")
    base = None
    for name, (f, a) in cases.items():
        ms = best_ms(f, *a)
        base = ms / 2 if base is None else base
        print(f"| {name} | {ms:.2f} | {ms / base:.1f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--weights", default=None)
    q.add_argument("--frames", type=int, default=16)
    q.add_argument("--peak", type=float, default=3.0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--outdir", default="/tmp/n2a_eval")
    se = sub.add_parser("select")
    se.add_argument("weights", nargs="+")
    se.add_argument("--frames", type=int, default=16)
    se.add_argument("--peak", type=float, default=3.0)
    se.add_argument("--seed", type=int, default=1, help="validation movie (the quality table uses seed 0)")
    se.add_argument("--outdir", default="/tmp/n2a_select")
    se.add_argument("--copy-to", default=None, help="copy the best snapshot here")
    c = sub.add_parser("ceiling")
    c.add_argument("--frames", type=int, default=8)
    c.add_argument("--peak", type=float, default=3.0)
    c.add_argument("--seed", type=int, default=0)
    rl = sub.add_parser("refine-large")
    rl.add_argument("--size", type=int, default=1024)
    rl.add_argument("--peak", type=float, default=3.0)
    rr = sub.add_parser("refine-repro")
    rr.add_argument("--frames", type=int, default=16)
    rr.add_argument("--size", type=int, default=128)
    rr.add_argument("--peak", type=float, default=3.0)
    rr.add_argument("--seed", type=int, default=0)
    rr.add_argument("--tries", type=int, default=3)
    ce = sub.add_parser("css-edges")
    ce.add_argument("--frames", type=int, default=16)
    ce.add_argument("--peak", type=float, default=3.0)
    ce.add_argument("--seed", type=int, default=1)
    ce.add_argument("--background", type=float, default=0.5, help="gradient strength (0: flat)")
    nl = sub.add_parser("norm-lrelu")
    nl.add_argument("--shape", default="6,130,130,64", help="N,H,W,C of the activation (paper: 6 × 130² × 64)")
    nl.add_argument("--rounds", type=int, default=3)
    s = sub.add_parser("speed")
    s.add_argument("--variants", default="small")
    s.add_argument("--steps", type=int, default=2, help="timed steps per case per round")
    s.add_argument("--rounds", type=int, default=2, help="interleaved rounds (JAX cases, then peers)")
    s.add_argument("--torch", action="store_true", help="also time the PyTorch peer (torch==2.13.0)")
    s.add_argument("--torch-jemalloc", action="store_true", help="also time the peer under jemalloc")
    s.add_argument("--torch-bf16", action="store_true", help="also time the peer under bfloat16 autocast (context "
                   "for bf16 variants; the goal's peer is float32)")
    tq = sub.add_parser("ttq", help="time to quality: train variants from scratch, one process each")
    tq.add_argument("--variants", default="small,small:xla,fast")
    tq.add_argument("--steps", type=int, default=400)
    tq.add_argument("--target", default="0.9,0.95", help="validation atom F1 values to reach, comma-separated")
    tq.add_argument("--workdir", default="/tmp/n2a_ttq")
    tq.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides applied to every variant (e.g. the `small` recipe on the `paper` network)")
    args = ap.parse_args(argv)
    if args.cmd in ("speed", "norm-lrelu") and argv is None:
        from jaxdn.allocator import maybe_reexec
        maybe_reexec()  # JAX under jemalloc when installed, as the `jaxdn` command runs
    {"quality": quality, "select": select, "speed": speed, "ceiling": ceiling,
     "refine-large": refine_large, "refine-repro": refine_repro, "css-edges": css_edges,
     "norm-lrelu": norm_lrelu, "ttq": time_to_quality}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
