"""`jaxdn bench`: throughput of jaxdn's methods on this machine, against peers and the papers.

One command, one process, one run: every jaxdn-vs-peer ratio it prints comes from timings taken
side by side on the same inputs, interleaved (A, B, C, A, B, C, …) so machine noise hits every
contender alike. Speed is always shown with quality (PSNR against the clean simulated image).

What one run does:

1. Records the environment: backend, devices, JAX/jaxlib versions, XLA flags, thread count, CPU
   model, load average, date and the exact command.
2. Measures the device's f32 (and bf16) matmul peak with a large jitted ``jnp.dot``.
3. Simulates HAADF-like test images (`jaxdn.simulate.atoms.haadf_lattice` on a 256² tile, tiled
   to the larger sizes, Poisson–Gaussian noise per 256² tile from
   `jaxdn.simulate.noise.poisson_gaussian`, divided by the dose so the clean scale is [0, 1]).
4. Per image size (and one stack of frames): every contender — the jaxdn methods (REUCID first;
   the others when implemented and their shipped weights exist), the paper-faithful NumPy REUCID
   peer, PyTorch peers (when `torch` and `benchmarks/peers/torch_models.py` are there) and the
   classical denoisers (`benchmarks/peers/classical.py`) — is called once (first call: compile +
   run, timed separately), then ``repeats`` times interleaved. Reported: median, IQR, min–max,
   frames/s, megapixels/s, peak host RSS above the pre-call level (Linux ``VmHWM`` reset through
   ``/proc/self/clear_refs``; psutil sampling elsewhere), device peak memory where the backend
   reports it, PSNR, and speed-up ratios (median of the per-repetition ratios peer/jaxdn).
5. Optionally: train-step throughput and achieved FLOP/s via ``benchmarks/train_throughput.py``,
   and the first-call latency of ``jaxdn denoise`` in fresh processes without / with a cold / with
   a warm persistent compilation cache.

Outputs: a markdown table (stdout; ``--append-results`` appends it to ``benchmarks/RESULTS.md``
under a dated heading with the command), ``--json FILE`` and ``--plot FILE`` (log-log throughput
vs image size; peers dashed; the papers' runtimes as markers, clearly other hardware).

Peers live in the source checkout's ``benchmarks/`` folder; from an installed wheel without it the
suite still times the jaxdn methods and says which peers were missing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .allocator import loaded_allocator
from .errors import InputError

__all__ = ["main", "build_parser", "summarize", "interleaved_order", "run_interleaved", "PeakRSS",
           "environment", "matmul_peak", "make_inputs", "markdown", "plot", "PAPER_ROWS",
           "run_suite", "cli_latency", "COMPILE_CACHE_SNIPPET"]

SCHEMA = "jaxdn-bench/1"
QUICK_SIZES = (128, 256, 512)
FULL_SIZES = (128, 256, 512, 890, 1024, 2048, 4096)
TILE = 256
DOSE = 1000.0          # e/Å² at the brightest column (mid of the REUCID paper's 100–10 000 range)
PIXEL_SIZE = 0.2       # Å (jaxdn.simulate.noise.poisson_gaussian default)

#: Largest image side each peer runs at (slow peers would dominate the run above these).
PEER_MAX_SIZE = {"reucid-numpy": 890, "nlm": 1024, "bm3d": 256, "tv": 2048, "wavelet": 4096,
                 "gaussian": 4096}
QUICK_PEER_MAX_SIZE = {"bm3d": 0, "reucid-numpy": 256}

#: The papers' runtimes, other hardware: context only, never a ratio.
PAPER_ROWS = (
    {"what": "REUCID paper runtime (NumPy, single-threaded Intel i7-11700)", "method": "reucid",
     "size": 256, "frames": 1, "seconds": 1.8, "kind": "paper"},
    {"what": "REUCID paper runtime (NumPy, single-threaded Intel i7-11700)", "method": "reucid",
     "size": 890, "frames": 1, "seconds": 32.0, "kind": "paper"},
    {"what": "real-time acquisition budget per frame (Noise2Atom data)", "method": "budget",
     "size": 128, "frames": 1, "seconds": 0.0067, "kind": "budget"},
    {"what": "real-time acquisition budget per frame (Noise2Atom data)", "method": "budget",
     "size": 512, "frames": 1, "seconds": 0.067, "kind": "budget"},
    {"what": "real-time acquisition budget per frame (Noise2Atom data)", "method": "budget",
     "size": 1024, "frames": 1, "seconds": 0.200, "kind": "budget"},
)

#: What the CLI should run before its first compilation (see `cli_latency` for the measurement).
COMPILE_CACHE_SNIPPET = '''\
def enable_compilation_cache():
    """Persistent XLA cache under the user cache dir ($JAXDN_CACHE_DIR, else ~/.cache/jaxdn/xla)."""
    import os
    from pathlib import Path
    import jax
    if os.environ.get("JAXDN_NO_COMPILATION_CACHE") or jax.config.jax_compilation_cache_dir:
        return
    base = os.environ.get("JAXDN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "jaxdn")
    path = os.path.join(base, "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
'''


# ---------------------------------------------------------------------------------------------
# Statistics and scheduling
# ---------------------------------------------------------------------------------------------

def summarize(times) -> dict:
    """Median, quartiles (linear interpolation, as `numpy.percentile`), IQR, min, max, mean, n.

    Args:
      times: sequence of durations in seconds (at least one).
    """
    a = np.asarray(list(times), dtype=np.float64)
    if a.size == 0:
        raise ValueError("summarize needs at least one timing")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"n": int(a.size), "median": float(med), "q1": float(q1), "q3": float(q3),
            "iqr": float(q3 - q1), "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean())}


def interleaved_order(names, repeats: int) -> list[tuple[int, str]]:
    """The timing schedule: every contender once per round, ``repeats`` rounds (A, B, A, B, …)."""
    names = list(names)
    return [(r, n) for r in range(int(repeats)) for n in names]


class PeakRSS:
    """Context manager: peak resident set size of this process during the block, above its start.

    On Linux the kernel's high-water mark (``VmHWM``) is reset by writing 5 to
    ``/proc/self/clear_refs``, so the peak is exact; elsewhere a thread samples psutil every 2 ms.
    ``delta_bytes`` is set on exit (0 when the block allocated nothing new).
    """

    def __init__(self):
        self.delta_bytes = None
        self.method = None

    @staticmethod
    def _status(field_name):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(field_name)

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start = self._status("VmRSS")
            self.method = "VmHWM"
        except OSError:
            import psutil
            self._proc = psutil.Process()
            self.start = self._proc.memory_info().rss
            self._peak = self.start
            self._stop = threading.Event()

            def sample():
                while not self._stop.wait(0.002):
                    self._peak = max(self._peak, self._proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
            self.method = "psutil-sampling"
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            peak = self._status("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.delta_bytes = max(0, int(peak - self.start))
        return False


def _device_peak_bytes():
    """Peak device memory in use (bytes) where the backend reports it (GPU/TPU), else None."""
    try:
        import jax
        stats = jax.local_devices()[0].memory_stats()
    except Exception:
        return None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


@dataclass
class Contender:
    """One thing to time: ``fn(noisy) -> denoised`` (NumPy in, NumPy out, blocking)."""
    name: str
    kind: str            # "jaxdn" | "peer" | "classical"
    family: str          # ratios pair a non-jaxdn contender with the jaxdn method of this family
    fn: Callable[[np.ndarray], np.ndarray]
    note: str = ""
    dashed: bool = field(default=False)
    quality: bool = True      # PSNR against the clean image (False: random-weight speed peers)
    agree_with: str | None = None  # report PSNR of this output against that contender's output


def run_interleaved(contenders, x, *, repeats: int, clean=None, warmup: int = 1, log=None) -> list[dict]:
    """Time contenders on the same input, interleaved; returns one result dict per contender.

    Each contender is first called ``warmup`` times (the first call is timed as ``first_call_s``:
    compilation + run for jitted code), then the rounds of `interleaved_order` follow. A contender
    that raises is reported with its error and dropped from the remaining rounds.
    """
    res, outputs = {}, {}
    for c in contenders:
        r = res[c.name] = {"name": c.name, "kind": c.kind, "family": c.family, "note": c.note,
                           "times_s": [], "rss_peak_mb": None, "first_call_rss_mb": None,
                           "error": None, "dashed": c.dashed}
        try:
            dev0 = _device_peak_bytes()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                out = np.asarray(c.fn(x))
                r["first_call_s"] = time.perf_counter() - t0
            r["first_call_rss_mb"] = mem.delta_bytes / 2**20
            r["rss_method"] = mem.method
            for _ in range(max(0, warmup - 1)):
                out = np.asarray(c.fn(x))
            if out.shape != x.shape:
                raise RuntimeError(f"returned shape {out.shape} for input {x.shape}")
            if clean is not None and c.quality:
                r["psnr_db"] = _psnr(out, clean)
            if any(o.agree_with == c.name for o in contenders):
                outputs[c.name] = out
            if c.agree_with in outputs:
                ref = outputs[c.agree_with].astype(np.float64)
                span = float(ref.max() - ref.min()) or 1.0
                mse = float(np.mean((out.astype(np.float64) - ref) ** 2))
                r["psnr_vs_ref_db"] = float("inf") if mse == 0 else 10 * math.log10(span * span / mse)
                r["ref"] = c.agree_with
            dev1 = _device_peak_bytes()
            if dev1 is not None:
                r["device_peak_mb"] = dev1 / 2**20
                r["device_peak_before_mb"] = (dev0 or 0) / 2**20
        except Exception as err:  # report, keep the others going
            r["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if log:
            log(f"  {c.name:<16} first call {r.get('first_call_s', float('nan')):8.3f} s"
                + (f"  ERROR {r['error']}" if r["error"] else ""))
    live = [c for c in contenders if res[c.name]["error"] is None]
    by_name = {c.name: c for c in live}
    for _, name in interleaved_order([c.name for c in live], repeats):
        r = res[name]
        if r["error"]:
            continue
        try:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                np.asarray(by_name[name].fn(x))
                dt = time.perf_counter() - t0
        except Exception as err:
            r["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            continue
        r["times_s"].append(dt)
        mb = mem.delta_bytes / 2**20
        r["rss_peak_mb"] = mb if r["rss_peak_mb"] is None else max(r["rss_peak_mb"], mb)
    out = []
    frames = x.shape[0] if x.ndim == 3 else 1
    mpix = frames * x.shape[-1] * x.shape[-2] / 1e6
    for c in contenders:
        r = res[c.name]
        if r["times_s"]:
            st = r["stats"] = summarize(r["times_s"])
            r["frames_per_s"] = frames / st["median"]
            r["mpix_per_s"] = mpix / st["median"]
            r["compile_s"] = max(0.0, r["first_call_s"] - st["median"])
        out.append(r)
    return out


def _psnr(out, clean):
    from .metrics import psnr
    v = np.asarray(psnr(np.asarray(out, np.float32), np.asarray(clean, np.float32), data_range=1.0))
    return float(np.mean(v))


def paired_ratios(peer_times, ref_times) -> dict | None:
    """Speed-up of the reference over a peer from interleaved timings (round i with round i).

    Returns the median of the per-round ratios peer/ref, its min–max, and the ratio of medians.
    """
    n = min(len(peer_times), len(ref_times))
    if n == 0:
        return None
    r = np.asarray(peer_times[:n]) / np.asarray(ref_times[:n])
    return {"speedup": float(np.median(r)), "min": float(r.min()), "max": float(r.max()), "n": n,
            "ratio_of_medians": float(np.median(peer_times) / np.median(ref_times))}


# ---------------------------------------------------------------------------------------------
# Environment and device peak
# ---------------------------------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    except OSError:
        pass
    return []


def _version(mod):
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return None


def environment(argv=None) -> dict:
    """Backend, devices, versions, threads, CPU, memory, load, date and command line."""
    import jax
    import jaxlib
    import psutil
    from . import __version__
    devs = jax.devices()
    try:
        import jax.extend.backend
        backend = jax.extend.backend.get_backend()
        platform_version = backend.platform_version
    except Exception:
        platform_version = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "jaxdn bench" + ("" if argv is None else "".join(" " + shlex.quote(a) for a in argv)),
        "backend": jax.default_backend(),
        "platform_version": platform_version,
        "devices": [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in devs],
        "device_count": len(devs),
        "process_count": jax.process_count(),
        "jaxdn": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "flax": _version("flax"), "numpy": np.__version__, "scikit_image": _version("skimage"),
        "scikit_learn": _version("sklearn"), "torch": _version("torch") if _has("torch") else None,
        "python": platform.python_version(),
        "dtype": "float32",
        "cpu_model": _cpu_model(), "cpu_flags": _cpu_flags(),
        "os_cpu_count": os.cpu_count(), "cpu_affinity": affinity,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "allocator": loaded_allocator(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                       if k in os.environ},
        "memory_total_gb": psutil.virtual_memory().total / 2**30,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
    }
    return env


def _has(mod):
    return importlib.util.find_spec(mod) is not None


def matmul_peak(*, n: int = 4096, dtype: str = "float32", repeats: int = 5) -> dict:
    """FLOP/s of a jitted (n, n) @ (n, n) matmul on the default device (2n³ FLOP per call)."""
    import jax
    import jax.numpy as jnp
    dt = jnp.dtype(dtype)
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=dt))
    try:
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t0)
    except Exception as err:
        return {"dtype": dtype, "n": n, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
    st = summarize(times)
    flops = 2.0 * n ** 3
    return {"dtype": dtype, "n": n, "first_call_s": first, "stats": st, "flops_per_s": flops / st["median"],
            "flops_per_s_best": flops / st["min"]}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

class _Sim:
    """Simulated clean/noisy images of any size from one 256² HAADF tile (one compilation)."""

    def __init__(self, seed=0, dose=DOSE):
        import jax
        from .simulate import atoms, noise
        self.key = jax.random.PRNGKey(seed)
        clean, _, _ = atoms.haadf_lattice(jax.random.fold_in(self.key, 0), size=TILE)
        self.base = np.asarray(clean, np.float32)
        scale = 1.0 / (dose * PIXEL_SIZE ** 2)
        base = jax.numpy.asarray(self.base)
        self._noisy = jax.jit(lambda k: noise.poisson_gaussian(k, base, dose=dose, pixel_size=PIXEL_SIZE) * scale)
        self.counter = 0

    def tile_noise(self):
        import jax
        self.counter += 1
        return np.asarray(self._noisy(jax.random.fold_in(self.key, self.counter)))

    def frame(self, size):
        t = -(-size // TILE)
        clean = np.tile(self.base, (t, t))[:size, :size]
        noisy = np.block([[self.tile_noise() for _ in range(t)] for _ in range(t)])[:size, :size]
        return np.ascontiguousarray(clean), np.ascontiguousarray(noisy, dtype=np.float32)


def make_inputs(sizes, stack=None, *, seed=0, dose=DOSE):
    """{(frames, size): (clean, noisy)} float32; frames 1 → (H, W), else (T, H, W)."""
    sim = _Sim(seed, dose)
    out = {}
    for s in sizes:
        out[(1, s)] = sim.frame(s)
    if stack:
        t, s = stack
        pairs = [sim.frame(s) for _ in range(t)]
        out[(t, s)] = (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    return out


# ---------------------------------------------------------------------------------------------
# Contenders
# ---------------------------------------------------------------------------------------------

def _repo_root():
    root = Path(__file__).resolve().parents[1]
    return root if (root / "benchmarks").is_dir() else None


def _import_peer(name):
    """Import ``benchmarks.<name>`` from the source checkout, or None (with the reason)."""
    root = _repo_root()
    if root is None:
        return None, "benchmarks/ folder not found (run from a source checkout)"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(f"benchmarks.{name}"), None
    except ModuleNotFoundError as err:
        return None, f"{err}"
    except Exception as err:
        return None, f"{type(err).__name__}: {err}".splitlines()[0]


def _per_frame(fn):
    def run(x):
        if x.ndim == 2:
            return fn(x)
        return np.stack([fn(f) for f in x])
    return run


def jaxdn_methods(requested=None, notes=None):
    """jaxdn methods that are implemented and have weights: {name: (fn, note)}."""
    from . import api
    notes = [] if notes is None else notes
    names = list(api.METHODS) if requested is None else list(requested)
    out = {}
    for m in names:
        if m not in api.METHODS:
            raise InputError(f"unknown method {m!r}; choose from {', '.join(api.METHODS)}")
        try:
            fn = api.method_function(m)
        except Exception as err:
            notes.append(f"{m}: not benchmarked ({err})")
            continue
        wp = api.weights_path(m)
        has_weights = wp is not None and Path(wp).exists()
        if m != "reucid" and not has_weights:
            notes.append(f"{m}: not benchmarked (no shipped weights at {wp})")
            continue
        out[m] = (fn, has_weights)
    return out


def _reucid_contenders(fn, has_weights, x, *, peer_ok, notes):
    """REUCID (jaxdn) and its NumPy peer, configured to do the same work on ``x``."""
    from .reucid import patches as _patches, psf as _psf
    from .api import weights_path
    h, w = x.shape[-2:]
    half = min(h, w) // 2
    p = _psf.estimate_patch_size(x, max_size=max(5, min(31, half if half % 2 else half - 1)))
    d = _patches.n_stacks_for_budget((h, w), p)
    opts = {"n_stacks": d}
    note = f"p={p}, stacks={d}"
    if not has_weights:
        opts["n_keep"] = 8
        note += ", n_keep=8 (no shipped classifier)"
    else:
        note += ", shipped classifier"
    peer = None
    if peer_ok:
        mod, why = _import_peer("peers.reucid_numpy")
        if mod is None:
            notes.append(f"reucid-numpy peer unavailable: {why}")
        else:
            frame0 = x if x.ndim == 2 else x[0]
            p_peer = mod.estimate_patch_size(frame0)
            fixed = p_peer != p or x.ndim == 3
            if fixed:  # same work for both: the jaxdn patch size for both
                opts["patch_size"] = p
                note += " (patch size fixed for both)" if p_peer != p else ""
            popts = {"n_stacks": d, "seed": 0, "patch_size": p if fixed else None}
            if has_weights:
                popts["weights_path"] = str(weights_path("reucid"))
            else:
                popts["n_keep"] = 8
            peer = Contender("reucid-numpy", "peer", "reucid", _per_frame(lambda f: mod.denoise(f, **popts)),
                             note="NumPy/scikit-learn, float64 (paper-faithful)", dashed=True)
    jx = Contender("reucid", "jaxdn", "reucid", lambda a: fn(a, seed=0, **opts), note=note)
    return [jx] + ([peer] if peer else [])


def _torch_contenders(method, x, notes):
    """PyTorch peer of a jaxdn network method via benchmarks/peers/torch_models.py, if it offers one."""
    mod, why = _import_peer("peers.torch_models")
    if mod is None:
        return []
    make = getattr(mod, "bench_denoiser", None) or getattr(mod, "denoiser_for", None)
    if make is None:
        return []
    try:
        fn = make(method)
    except Exception as err:
        notes.append(f"torch peer for {method}: unavailable ({type(err).__name__}: {err})")
        return []
    if fn is None:
        return []
    return [Contender(f"torch:{method}", "peer", method, fn, note="PyTorch CPU, same weights", dashed=True)]


def _classical_contenders(size, names, cap, notes, *, stack=False):
    mod, why = _import_peer("peers.classical")
    if mod is None:
        notes.append(f"classical peers unavailable: {why}")
        return []
    avail = mod.available()
    out = []
    for n in names:
        if n not in mod.DENOISERS:
            continue
        if n not in avail:
            continue
        if size > cap.get(n, 10**9):
            continue
        if stack and n == "bm3d":
            continue  # seconds per frame: a stack would dominate the run
        out.append(Contender(n, "classical", "reucid", _per_frame(mod.DENOISERS[n][0]), dashed=True))
    return out


NETWORK_WEIGHTS = {"unet": "unet_g.npz", "stripes": "stripes.npz"}


def _jaxdn_network(arch, dtype, weights_file):
    """(jitted (H, W) -> (H, W) forward, whether trained weights were loaded) for a jaxdn network."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    dt = jnp.bfloat16 if dtype == "bfloat16" else None
    trained = weights_file is not None and Path(weights_file).is_file()
    cfg = _model_config(weights_file)
    if arch == "unet":
        from .models.unet import UNet
        widths = tuple(cfg.get("widths", (32, 64, 128)))
        build = lambda: UNet(widths=widths, compute_dtype=dt, im2col_first=True, rngs=nnx.Rngs(0))
    else:
        from .models.stripe_autoencoder import StripeAutoencoder
        feats = int(cfg.get("features", 32))
        build = lambda: StripeAutoencoder(features=feats, compute_dtype=dt, im2col_thin=True, rngs=nnx.Rngs(0))
    if trained:
        from .weights_io import load_weights
        model = load_weights(weights_file, build)
    else:
        model = build()
    model.eval()
    gdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x: nnx.merge(gdef, st)(x[None, :, :, None])[0, :, :, 0].astype(jnp.float32))
    return (lambda x: np.asarray(fwd(state, jnp.asarray(x)))), trained


def _model_config(weights_file):
    """The `model` section of a shipped weights file's meta ({} when absent)."""
    if weights_file is None or not Path(weights_file).is_file():
        return {}
    from .weights_io import read_meta
    return (read_meta(weights_file).get("config") or {}).get("model") or {}


def _torch_network(arch, channels_last, cfg=None):
    mod, why = _import_peer("peers.torch_models")
    if mod is None:
        return None, why
    import torch
    torch.manual_seed(0)
    cfg = cfg or {}
    model = (mod.UNet(tuple(cfg.get("widths", (32, 64, 128)))) if arch == "unet"
             else mod.StripeAutoencoder(int(cfg.get("features", 32)))).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)

    def run(x):
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)[None, None]).contiguous(memory_format=fmt)
        with torch.inference_mode():
            return model(t)[0, 0].numpy()
    return run, None


def network_contenders(arch, *, torch_ok, notes):
    """jaxdn network forward (f32, bf16) and its PyTorch twin (NCHW, channels-last), whole frames.

    Shipped weights are used when present (PSNR vs clean is then meaningful); otherwise all use
    random initial weights and only speed (and bf16-vs-f32 agreement) is reported.
    """
    from .weights_io import shipped
    wf = shipped(NETWORK_WEIGHTS[arch])
    out = []
    f32, trained = _jaxdn_network(arch, "float32", wf)
    label = "shipped weights" if trained else "random weights (speed only)"
    out.append(Contender(f"{arch}-net", "jaxdn", f"{arch}-net", f32, note=f"whole frame, f32, {label}",
                         quality=trained))
    bf16, _ = _jaxdn_network(arch, "bfloat16", wf)
    out.append(Contender(f"{arch}-net-bf16", "jaxdn-variant", f"{arch}-net", bf16,
                         note=f"whole frame, bf16 compute, {label}; PSNR vs f32 output", quality=trained,
                         agree_with=f"{arch}-net", dashed=True))
    if torch_ok:
        for cl in (False, True):
            fn, why = _torch_network(arch, cl, _model_config(wf))
            if fn is None:
                notes.append(f"torch {arch} peer unavailable: {why}")
                break
            out.append(Contender(f"torch:{arch}-net" + ("-cl" if cl else ""), "peer", f"{arch}-net", fn,
                                 note=("channels-last" if cl else "NCHW") + ", PyTorch CPU eager, same widths, random weights",
                                 quality=False, dashed=True))
    return out


# ---------------------------------------------------------------------------------------------
# Extra probes
# ---------------------------------------------------------------------------------------------

def cli_latency(*, size=256, log=None, timeout=900) -> dict:
    """Wall time of `jaxdn denoise` on one simulated {size}² TIFF in fresh processes.

    Runs: import only; denoise with no persistent cache; with a cold cache (empty folder); with
    the warm cache (same folder again). The cache is switched on through JAX's own environment
    variables, so the CLI code is unchanged.
    """
    import tifffile
    tmp = Path(tempfile.mkdtemp(prefix="jaxdn-bench-"))
    clean, noisy = _Sim(seed=1).frame(size)
    src = tmp / "in.tif"
    tifffile.imwrite(src, noisy)
    cache = tmp / "xla"
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("JAX_COMPILATION_CACHE", "JAXDN_CACHE_DIR", "JAXDN_NO_CACHE"))}

    def run(label, args, extra_env):
        env = dict(base_env, **extra_env)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable] + args, env=env, capture_output=True, text=True, timeout=timeout)
        dt = time.perf_counter() - t0
        if log:
            log(f"  cli {label:<12} {dt:7.2f} s" + ("" if p.returncode == 0 else f"  rc={p.returncode}"))
        return {"label": label, "seconds": dt, "rc": p.returncode,
                "stderr_tail": p.stderr[-300:] if p.returncode else ""}

    denoise = ["-m", "jaxdn.cli", "denoise", str(src), "-q", "--overwrite"]
    # the CLI's own cache switch (JAXDN_CACHE_DIR / JAXDN_NO_CACHE), and JAX's for older CLIs
    cache_env = {"JAXDN_CACHE_DIR": str(cache), "JAX_COMPILATION_CACHE_DIR": str(cache),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    runs = [run("import only", ["-c", "import jaxdn.cli, jaxdn.api, jax, jaxdn.methods.reucid"], {}),
            run("no cache", denoise + ["--output", str(tmp / "a.tif")], {"JAXDN_NO_CACHE": "1"}),
            run("cold cache", denoise + ["--output", str(tmp / "b.tif")], cache_env),
            run("warm cache", denoise + ["--output", str(tmp / "c.tif")], cache_env)]
    n_files = sum(1 for _ in cache.rglob("*") if _.is_file()) if cache.exists() else 0
    size_mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20 if cache.exists() else 0
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return {"size": size, "runs": runs, "cache_entries": n_files, "cache_mb": size_mb}


def shape_probe(fn, sim, *, base=256, others=(250, 257, 300), log=None) -> list[dict]:
    """First-call vs steady time of REUCID at sizes near ``base`` (does a new size recompile?)."""
    rows = []
    for s in (base,) + tuple(others):
        clean, noisy = sim.frame(s)
        t0 = time.perf_counter()
        fn(noisy)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn(noisy)
        steady = time.perf_counter() - t0
        rows.append({"size": s, "first_call_s": first, "steady_s": steady, "extra_s": max(0.0, first - steady)})
        if log:
            log(f"  shape {s}²: first {first:.3f} s, steady {steady:.3f} s")
    return rows


TRAIN_CASES = ("unet/jax-f32-im2col", "unet/torch-channels-last", "stripes/jax-f32-im2col",
               "stripes/torch-channels-last")


def train_throughput(quick, log=None, notes=None, cases=TRAIN_CASES):
    """Train-step rows from ``benchmarks/train_throughput.py`` (the model helpers' script), run
    in this process for a subset of its cases; its own stdout goes to stderr."""
    import contextlib
    mod, why = _import_peer("train_throughput")
    if mod is None or not hasattr(mod, "main"):
        if notes is not None:
            notes.append(f"train-step throughput: skipped ({why or 'no main() in benchmarks/train_throughput.py'})")
        return None
    if not _has("torch"):
        cases = tuple(c for c in cases if "torch" not in c)
    out = Path(tempfile.mkdtemp(prefix="jaxdn-bench-")) / "train.json"
    argv = ["--only", ",".join(cases), "--out", str(out)] + (["--quick"] if quick else ["--repeats", "3"])
    try:
        with contextlib.redirect_stdout(sys.stderr):
            mod.main(argv)
        res = json.loads(out.read_text())
    except Exception as err:
        if notes is not None:
            notes.append(f"train-step throughput failed: {type(err).__name__}: {err}")
        return None
    rows = []
    for name, r in res.get("cases", {}).items():
        row = {"case": name}
        row.update({k: v for k, v in r.items() if not isinstance(v, (dict, list))})
        rows.append(row)
    return {"rows": rows, "matmul_f32_gflops_2048": res.get("matmul_f32_gflops"),
            "command": "python benchmarks/train_throughput.py " + " ".join(argv[:2] + argv[4:])}


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

def run_suite(args, argv=None, log=print, checkpoint=None) -> dict:
    """Run everything `args` asks for and return the result document (see the module docstring).

    ``checkpoint(doc)`` is called after every input group with the partial document.
    """
    checkpoint = checkpoint or (lambda d: None)
    import jax
    if args.compile_cache and args.compile_cache != "off":
        jax.config.update("jax_compilation_cache_dir", str(Path(args.compile_cache).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    notes = []
    env = environment(argv)
    log(f"jaxdn bench on {env['backend']} ({', '.join(env['devices'])}), {env['cpu_model']}, "
        f"{env['cpu_affinity']} CPU(s), load {env['loadavg_start']}")
    t_start = time.perf_counter()
    doc = {"schema": SCHEMA, "env": env, "config": {
        "quick": args.quick, "sizes": args.sizes, "stack": args.stack, "repeats": args.repeats,
        "methods": args.methods, "peers": args.peers, "dose_e_per_A2": DOSE, "pixel_size_A": PIXEL_SIZE,
        "input": "haadf_lattice 256² tile, tiled; Poisson–Gaussian noise per tile / (dose·px²)"},
        "notes": notes, "paper": [dict(r) for r in PAPER_ROWS]}

    # device peak
    peaks = []
    if not args.no_peak:
        n = args.peak_size or (2048 if args.quick else 4096)
        for dt in ("float32", "bfloat16"):
            r = matmul_peak(n=n, dtype=dt, repeats=3 if args.quick else 5)
            peaks.append(r)
            if "flops_per_s" in r:
                log(f"matmul peak {dt} n={n}: {r['flops_per_s'] / 1e9:.1f} GFLOP/s")
    doc["matmul_peak"] = peaks

    methods = jaxdn_methods(args.methods, notes)
    peers = set(args.peers)
    sizes = list(args.sizes)
    cap = dict(PEER_MAX_SIZE)
    if args.quick:
        cap.update(QUICK_PEER_MAX_SIZE)
    if args.peer_max_size is not None:
        cap = {k: min(v, args.peer_max_size) for k, v in cap.items()}
    log("simulating inputs …")
    t0 = time.perf_counter()
    inputs = make_inputs(sizes, args.stack, seed=args.seed)
    doc["simulate_s"] = time.perf_counter() - t0
    classical_names = [p for p in ("gaussian", "tv", "wavelet", "nlm", "bm3d") if p in peers]
    cases, ratios = [], []
    for (frames, size), (clean, noisy) in inputs.items():
        log(f"{frames}×{size}²:")
        contenders = []
        for m, (fn, has_w) in methods.items():
            if m == "reucid":
                peer_ok = "reucid-numpy" in peers and size <= cap["reucid-numpy"] and (frames == 1 or not args.quick)
                contenders += _reucid_contenders(fn, has_w, noisy, peer_ok=peer_ok, notes=notes)
            elif size > args.method_max_size:
                notes.append(f"{m}: not timed above {args.method_max_size}² (--method-max-size)")
            else:
                contenders.append(Contender(m, "jaxdn", m, (lambda f: (lambda a: f(a, seed=0)))(fn),
                                            note="shipped weights"))
                if "torch" in peers and _has("torch"):
                    contenders += _torch_contenders(m, noisy, notes)
        if frames == 1 or not args.quick:
            contenders += _classical_contenders(size, classical_names, cap, notes, stack=frames > 1)
        rows = run_interleaved(contenders, noisy, repeats=args.repeats, clean=clean, log=log)
        psnr_noisy = _psnr(noisy, clean)
        for r in rows:
            r.update({"size": size, "frames": frames, "shape": list(noisy.shape), "psnr_noisy_db": psnr_noisy})
            if r.get("stats"):
                log(f"  {r['name']:<16} median {r['stats']['median'] * 1e3:10.2f} ms  "
                    f"{r['mpix_per_s']:8.3f} MPix/s  PSNR {r.get('psnr_db', float('nan')):6.2f} dB")
        refs = {r["family"]: r for r in rows if r["kind"] == "jaxdn" and r.get("stats")}
        for r in rows:
            ref = refs.get(r["family"])
            if r["kind"] == "jaxdn" or ref is None or not r.get("stats"):
                continue
            pr = paired_ratios(r["times_s"], ref["times_s"])
            ratios.append({"size": size, "frames": frames, "jaxdn": ref["name"], "peer": r["name"],
                           "peer_kind": r["kind"], **pr,
                           "psnr_jaxdn_db": ref.get("psnr_db"), "psnr_peer_db": r.get("psnr_db")})
            log(f"  {ref['name']} vs {r['name']}: jaxdn speed-up {pr['speedup']:.3g}× (per-round min–max "
                f"{pr['min']:.3g}–{pr['max']:.3g})")
        cases += rows
        doc["cases"], doc["ratios"] = cases, ratios
        checkpoint(doc)
    doc["cases"] = cases
    doc["ratios"] = ratios

    net_sizes = [n for n in sizes if n % 4 == 0 and n <= args.network_max_size]
    if args.networks and net_sizes:
        log("networks (whole-frame forward, jaxdn vs PyTorch):")
        torch_ok = "torch" in peers and _has("torch")
        if "torch" in peers and not torch_ok:
            notes.append("PyTorch peers skipped: torch not installed (pip install torch==2.13.0)")
        for arch in args.networks:
            try:
                contenders = network_contenders(arch, torch_ok=torch_ok, notes=notes)
            except Exception as err:
                notes.append(f"{arch} network benchmark unavailable: {type(err).__name__}: {err}")
                continue
            for size in net_sizes:
                clean, noisy = inputs[(1, size)]
                log(f"{arch} {size}²:")
                rows = run_interleaved(contenders, noisy, repeats=args.repeats, clean=clean, log=log)
                ref = next((r for r in rows if r["kind"] == "jaxdn" and r.get("stats")), None)
                for r in rows:
                    r.update({"size": size, "frames": 1, "shape": list(noisy.shape), "section": "network",
                              "psnr_noisy_db": _psnr(noisy, clean)})
                    if ref is None or r is ref or not r.get("stats"):
                        continue
                    pr = paired_ratios(r["times_s"], ref["times_s"])
                    ratios.append({"size": size, "frames": 1, "jaxdn": ref["name"], "peer": r["name"],
                                   "peer_kind": r["kind"], **pr, "psnr_jaxdn_db": ref.get("psnr_db"),
                                   "psnr_peer_db": r.get("psnr_db", r.get("psnr_vs_ref_db"))})
                    log(f"  {ref['name']} vs {r['name']}: jaxdn speed-up {pr['speedup']:.3g}×")
                doc.setdefault("network_cases", []).extend(rows)
                checkpoint(doc)

    if "reucid" in methods and args.shape_probe:
        log("shape probe (new image sizes near 256²):")
        fn, has_w = methods["reucid"]
        kw = {} if has_w else {"n_keep": 8}
        doc["shape_probe"] = shape_probe(lambda a: fn(a, seed=0, **kw), _Sim(seed=2), log=log)
        checkpoint(doc)
    if args.cli_latency:
        log("jaxdn denoise first-call latency in fresh processes …")
        doc["cli_latency"] = cli_latency(log=log)
        checkpoint(doc)
    if args.train:
        log("train-step throughput …")
        doc["train"] = train_throughput(args.quick, log=log, notes=notes)
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    doc["wall_s"] = time.perf_counter() - t_start
    return doc


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def _fmt_t(s):
    if s is None or not np.isfinite(s):
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _f(v, fmt):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def _case_table(cases) -> list[str]:
    lines = ["| input | method | kind | median | IQR | min–max | frames/s | MPix/s | first call | "
             "peak RSS Δ | PSNR (noisy) | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in cases:
        inp = f"{r['frames']}×{r['size']}²" if r["frames"] > 1 else f"{r['size']}²"
        if r.get("error"):
            lines.append(f"| {inp} | {r['name']} | {r['kind']} | error | | | | | | | | {r['error']} |")
            continue
        st = r.get("stats")
        if not st:
            continue
        if r.get("psnr_db") is not None:
            q = f"{_f(r.get('psnr_db'), '.2f')} ({_f(r.get('psnr_noisy_db'), '.2f')}) dB"
        elif r.get("psnr_vs_ref_db") is not None:
            q = f"{_f(r['psnr_vs_ref_db'], '.1f')} dB vs {r['ref']}"
        else:
            q = "–"
        dev = f"; device peak {r['device_peak_mb']:.0f} MB" if r.get("device_peak_mb") else ""
        lines.append(
            f"| {inp} | {r['name']} | {r['kind']} | {_fmt_t(st['median'])} | {_fmt_t(st['iqr'])} | "
            f"{_fmt_t(st['min'])}–{_fmt_t(st['max'])} | {_f(r['frames_per_s'], '.3g')} | "
            f"{_f(r['mpix_per_s'], '.3g')} | {_fmt_t(r.get('first_call_s'))} | "
            f"{_f(r.get('rss_peak_mb'), '.0f')} MB | {q} | {r.get('note', '')}{dev} |")
    return lines


def markdown(doc) -> str:
    """The run as markdown: environment, throughput table, ratios, paper context, extras."""
    env = doc["env"]
    lines = []
    load = env.get("loadavg_start")
    load_s = ", ".join(f"{v:.1f}" for v in load) if load else "n/a"
    load_e = env.get("loadavg_end")
    if doc.get("partial"):
        lines.append("- **Partial run** (stopped before the end; the sections present are complete)")
    lines.append(f"- Command: `{env['command']}`")
    wall = f"{doc['wall_s']:.0f} s" if doc.get("wall_s") is not None else "n/a"
    lines.append(f"- Date: {env['date_utc']}; wall time {wall}")
    lines.append(f"- Backend: {env['backend']} ({', '.join(env['devices'])}); {env['cpu_model']}; "
                 f"{env['cpu_affinity']} of {env['os_cpu_count']} CPUs; {env['memory_total_gb']:.0f} GiB; "
                 f"load average at start {load_s}" + (f", at end {', '.join(f'{v:.1f}' for v in load_e)}" if load_e else ""))
    lines.append(f"- Versions: jaxdn {env['jaxdn']}, JAX {env['jax']}, jaxlib {env['jaxlib']} "
                 f"(XLA {env.get('platform_version') or 'n/a'}), flax {env['flax']}, NumPy {env['numpy']}, "
                 f"scikit-image {env['scikit_image']}, scikit-learn {env['scikit_learn']}, torch {env['torch'] or '–'}; "
                 f"dtype {env['dtype']}; XLA_FLAGS `{env['xla_flags'] or '(none)'}`; "
                 f"persistent compilation cache {'on' if env.get('compilation_cache_dir') else 'off'}")
    cfg = doc["config"]
    lines.append(f"- Input: {cfg['input']}, dose {cfg['dose_e_per_A2']:g} e/Å², pixel {cfg['pixel_size_A']} Å; "
                 f"{cfg['repeats']} interleaved repetitions after one warm-up call")
    for p in doc.get("matmul_peak", []):
        if "flops_per_s" in p:
            lines.append(f"- Matmul peak ({p['dtype']}, {p['n']}²): {p['flops_per_s'] / 1e9:.1f} GFLOP/s "
                         f"(best {p['flops_per_s_best'] / 1e9:.1f})")
        elif "error" in p:
            lines.append(f"- Matmul peak ({p['dtype']}): {p['error']}")
    lines.append("")
    lines += _case_table(doc["cases"])
    if doc.get("network_cases"):
        lines.append("")
        lines.append("Networks, whole-frame forward pass (batch 1), jaxdn vs the same architecture in PyTorch:")
        lines.append("")
        lines += _case_table(doc["network_cases"])
    if doc.get("ratios"):
        lines.append("")
        lines.append("Speed-ups (same run, same input, interleaved; median of per-round peer/jaxdn time ratios, "
                     "per-round min–max):")
        lines.append("")
        lines.append("| input | jaxdn | peer | jaxdn speed-up (peer time ÷ jaxdn time) | min–max | PSNR jaxdn / peer |")
        lines.append("|---|---|---|---:|---:|---:|")
        for q in doc["ratios"]:
            inp = f"{q['frames']}×{q['size']}²" if q["frames"] > 1 else f"{q['size']}²"
            lines.append(f"| {inp} | {q['jaxdn']} | {q['peer']} ({q['peer_kind']}) | {q['speedup']:.3g}× | "
                         f"{q['min']:.3g}–{q['max']:.3g} | {_f(q.get('psnr_jaxdn_db'), '.2f')} / "
                         f"{_f(q.get('psnr_peer_db'), '.2f')} dB |")
    lines.append("")
    lines.append("Context from the papers (**other hardware**, not comparable ratios):")
    lines.append("")
    lines.append("| source | size | time per frame | jaxdn REUCID here (median) |")
    lines.append("|---|---|---:|---:|")
    here = {r["size"]: r for r in doc["cases"] if r["name"] == "reucid" and r["frames"] == 1 and r.get("stats")}
    for p in doc["paper"]:
        h = here.get(p["size"])
        mine = _fmt_t(h["stats"]["median"]) if h else "not run"
        if h and p["kind"] == "budget":
            mine += " (within budget)" if h["stats"]["median"] <= p["seconds"] else " (over budget)"
        lines.append(f"| {p['what']} | {p['size']}² | {_fmt_t(p['seconds'])} | {mine} |")
    if doc.get("shape_probe"):
        lines.append("")
        lines.append("New image sizes (REUCID first call vs steady state; extra = compile/trace cost of a new shape):")
        lines.append("")
        lines.append("| size | first call | steady | extra |")
        lines.append("|---|---:|---:|---:|")
        for r in doc["shape_probe"]:
            lines.append(f"| {r['size']}² | {_fmt_t(r['first_call_s'])} | {_fmt_t(r['steady_s'])} | {_fmt_t(r['extra_s'])} |")
    cl = doc.get("cli_latency")
    if cl:
        lines.append("")
        lines.append(f"`jaxdn denoise` on one {cl['size']}² TIFF, fresh process each (wall time incl. start-up and I/O):")
        lines.append("")
        lines.append("| run | wall time |")
        lines.append("|---|---:|")
        for r in cl["runs"]:
            lines.append(f"| {r['label']} | {r['seconds']:.2f} s{'' if r['rc'] == 0 else ' (rc ' + str(r['rc']) + ')'} |")
        lines.append(f"\nCache after the runs: {cl['cache_entries']} files, {cl['cache_mb']:.1f} MB.")
    tr = doc.get("train")
    if tr:
        lines.append("")
        lines.append(f"Train steps (`{tr.get('command', 'benchmarks/train_throughput.py')}`, same process; "
                     "GFLOP/s from analytic conv FLOPs; % of this run's f32 matmul peak):")
        lines.append("")
        lines.append(_rows_table(tr, doc.get("matmul_peak")))
    if doc.get("notes"):
        lines.append("")
        for n in dict.fromkeys(doc["notes"]):
            lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def _rows_table(rows, peaks):
    """Generic table for a list of dicts; adds % of the f32 matmul peak where a FLOP/s column exists."""
    if isinstance(rows, dict):
        rows = rows.get("rows", [rows])
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return "(no rows)"
    peak = next((p.get("flops_per_s") for p in (peaks or []) if p.get("dtype") == "float32"), None)
    keys = []
    for r in rows:
        for k in r:
            if k not in keys and not isinstance(r[k], (list, dict)):
                keys.append(k)
    flop_key = next((k for k in keys if k in ("train_gflops", "gflops") or
                     ("flop" in k.lower() and "per_s" in k.lower())), None)
    scale = 1e9 if flop_key and "gflops" in flop_key else 1.0
    if peak and flop_key:
        keys.append("% of f32 peak")
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        vals = []
        for k in keys:
            if k == "% of f32 peak":
                v = r.get(flop_key)
                vals.append(f"{100 * v * scale / peak:.1f} %" if isinstance(v, (int, float)) and v else "–")
                continue
            v = r.get(k)
            vals.append(f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "–"))
        out.append("| " + " | ".join(vals) + " |")
    return "\n".join(out)


def _plot_series(ax, cases):
    series = {}
    for r in cases:
        if r.get("stats") and r["frames"] == 1:
            series.setdefault((r["name"], r["kind"]), []).append((r["size"], r["mpix_per_s"]))
    for (name, kind), pts in sorted(series.items(), key=lambda kv: (kv[0][1] != "jaxdn", kv[0][0])):
        pts.sort()
        xs, ys = zip(*pts)
        jx = kind == "jaxdn"
        ax.plot(xs, ys, "-" if jx else "--", marker="o" if jx else ".", lw=2.2 if jx else 1.2,
                label=f"{name} ({kind})")
    for r in cases:
        if r.get("stats") and r["frames"] > 1:
            ax.plot([r["size"]], [r["mpix_per_s"]], marker="*", ms=11, ls="none",
                    color="k" if r["kind"] == "jaxdn" else "0.6", label=f"{r['name']} stack {r['frames']}×{r['size']}²")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (px), square frames")
    ax.set_ylabel("throughput (megapixels / s)")
    ax.grid(True, which="both", alpha=0.3)


def plot(doc, path) -> None:
    """Log-log throughput (MPix/s) vs image side; jaxdn solid, peers dashed, papers as markers.

    A second panel shows the network forward passes (jaxdn vs PyTorch) when they were run.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nets = doc.get("network_cases") or []
    fig, axes = plt.subplots(1, 2 if nets else 1, figsize=(15 if nets else 8.5, 6), squeeze=False)
    ax = axes[0, 0]
    _plot_series(ax, doc["cases"])
    pap = [p for p in doc["paper"] if p["kind"] == "paper"]
    bud = [p for p in doc["paper"] if p["kind"] == "budget"]
    if pap:
        ax.plot([p["size"] for p in pap], [p["size"] ** 2 / 1e6 / p["seconds"] for p in pap], "s", ms=9,
                mfc="none", color="tab:red", label="REUCID paper (i7-11700, 1 thread; other hardware)")
    if bud:
        ax.plot([p["size"] for p in bud], [p["size"] ** 2 / 1e6 / p["seconds"] for p in bud], "^", ms=9,
                mfc="none", color="tab:green", label="real-time budget per frame (Noise2Atom data)")
    env = doc["env"]
    ax.set_title(f"denoisers — {env['backend']}, {env['cpu_model'][:40]}, {env['date_utc'][:10]}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    if nets:
        ax2 = axes[0, 1]
        _plot_series(ax2, nets)
        ax2.set_title("network forward, batch 1 (jaxdn solid, PyTorch dashed)", fontsize=10)
        ax2.legend(fontsize=7, loc="best")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def append_results(doc, md, path, *, plot_path=None) -> None:
    """Append the run under a dated heading (with the exact command) to RESULTS.md."""
    path = Path(path)
    head = f"\n### `jaxdn bench` run, {doc['env']['date_utc']}\n\n"
    body = md
    if plot_path:
        try:
            rel = os.path.relpath(Path(plot_path).resolve(), path.resolve().parent)
        except ValueError:
            rel = str(plot_path)
        body += f"\n![throughput vs image size]({rel})\n"
    text = path.read_text() if path.exists() else "# jaxdn benchmark results\n"
    path.write_text(text.rstrip("\n") + "\n" + head + body)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _stack(text):
    if text.lower() in ("none", "0", ""):
        return ()
    try:
        t, s = text.lower().replace("×", "x").split("x")
        return int(t), int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--stack takes FRAMESxSIZE (e.g. 16x256) or none, got {text!r}") from None


ALL_PEERS = ("reucid-numpy", "torch", "gaussian", "tv", "wavelet", "nlm", "bm3d")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxdn bench",
        description="Time jaxdn's denoisers on this machine (whatever backend JAX finds) against the "
                    "NumPy REUCID peer, PyTorch peers and classical denoisers, in one interleaved run; "
                    "PSNR on the same simulated images; the papers' runtimes as context.")
    p.add_argument("--quick", action="store_true",
                   help=f"sizes {', '.join(map(str, QUICK_SIZES))} and a 4x256 stack, 3 repeats (< 3 min on 2 CPU cores)")
    p.add_argument("--methods", nargs="+", metavar="M", help="jaxdn methods (default: every one implemented here)")
    p.add_argument("--peers", nargs="*", metavar="P", default=None,
                   help=f"peers to time (default: all available: {' '.join(ALL_PEERS)}); --peers with no names: none")
    p.add_argument("--sizes", nargs="+", type=int, metavar="N",
                   help=f"square image sides (default: {' '.join(map(str, FULL_SIZES))}; quick: {' '.join(map(str, QUICK_SIZES))})")
    p.add_argument("--stack", type=_stack, default=None, metavar="TxN",
                   help="also time a stack of T frames of N² (default 16x256; quick 4x256; none to skip)")
    p.add_argument("--repeats", type=int, help="timed repetitions per contender after the warm-up (default 5; quick 3)")
    p.add_argument("--peer-max-size", type=int, help="largest image side any peer runs at")
    p.add_argument("--method-max-size", type=int, default=1024, metavar="N",
                   help="largest image side for jaxdn methods other than REUCID (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated inputs")
    p.add_argument("--json", metavar="FILE", help="write the full result document as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG: throughput vs image size")
    p.add_argument("--append-results", nargs="?", const="benchmarks/RESULTS.md", metavar="FILE",
                   help="append the markdown under a dated heading to FILE (default benchmarks/RESULTS.md)")
    p.add_argument("--compile-cache", metavar="DIR", default="off",
                   help="use a persistent XLA compilation cache in DIR (default off: first-call times are cold compiles)")
    p.add_argument("--cli-latency", action=argparse.BooleanOptionalAction, default=None,
                   help="time `jaxdn denoise` first-call latency without/with a cold/warm cache (default: on unless --quick)")
    p.add_argument("--shape-probe", action=argparse.BooleanOptionalAction, default=None,
                   help="time REUCID's first call at new sizes near 256² (default: on unless --quick)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=None,
                   help="train-step throughput via benchmarks/train_throughput.py (default: on unless --quick)")
    p.add_argument("--networks", nargs="*", choices=("unet", "stripes"), default=None,
                   help="network forward passes to time against PyTorch (default: unet stripes; none: empty)")
    p.add_argument("--network-max-size", type=int, default=None, metavar="N",
                   help="largest image side for the network section (default 512; quick 128)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    p.add_argument("--peak-size", type=int, metavar="N",
                   help="side of the square matmul for the peak (default 4096; quick 2048)")
    p.add_argument("--from-json", metavar="FILE",
                   help="do not run: render the markdown/plot (and --append-results) from a saved --json document")
    p.add_argument("-q", "--quiet", action="store_true", help="only print the final table")
    return p


def _resolve(args):
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else FULL_SIZES)
    if args.stack is None:
        args.stack = (4, 256) if args.quick else (16, 256)
    elif args.stack == ():
        args.stack = None
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        raise InputError("--repeats must be at least 1")
    if any(s < 32 for s in args.sizes):
        raise InputError("--sizes must be at least 32 px")
    if args.peers is None:
        args.peers = list(ALL_PEERS)
    if args.networks is None:
        args.networks = ["unet", "stripes"]
    if args.network_max_size is None:
        args.network_max_size = 128 if args.quick else 512
    bad = [x for x in args.peers if x not in ALL_PEERS]
    if bad:
        raise InputError(f"unknown peer(s) {', '.join(bad)}; choose from {', '.join(ALL_PEERS)}")
    for name in ("cli_latency", "shape_probe", "train"):
        if getattr(args, name) is None:
            setattr(args, name, not args.quick)
    return args


def main(argv=None) -> int:
    """Entry point of `jaxdn bench` (and `python benchmarks/run.py`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _resolve(build_parser().parse_args(argv))
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    def save(d):
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(d, indent=1, default=_json_default))

    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            doc = run_suite(args, argv, log=log, checkpoint=lambda d: save(dict(d, partial=True)))
    md = markdown(doc)
    print(md)
    if args.plot:
        plot(doc, args.plot)
        doc["plot"] = str(args.plot)
    if not args.from_json:
        save(doc)
    if args.append_results:
        append_results(doc, md, args.append_results, plot_path=args.plot)
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
