"""Host memory allocator for CPU runs: jemalloc or mimalloc told to keep freed pages.

XLA:CPU allocates each executable's temporary buffers afresh on every call; with glibc's malloc the
big ones are new ``mmap`` regions, so every training step page-faults and zero-fills all of its
scratch memory again (1.6 M minor faults, ~6 s of kernel time per Noise2Atom `paper` step on the
2-core CI machine). An allocator that keeps freed pages for reuse (jemalloc for good, mimalloc until
they have lain unused for a second) spares that: the step runs 15–30 % faster
(benchmarks/results/noise2atom.md). An allocator can only be chosen when a process starts, so the
``jaxdn`` command re-executes itself once with ``LD_PRELOAD`` set (`maybe_reexec`). Linux only.
jemalloc is used when the system has it (Debian/Ubuntu: ``apt install libjemalloc2``), else mimalloc
from the ``cmeel-mimalloc`` wheel (a dependency on Linux x86-64, so ``pip install`` brings it).
``JAXDN_ALLOCATOR=system|jemalloc|mimalloc`` chooses.
"""
from __future__ import annotations

import ctypes.util
import json
import os
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["jemalloc_library", "mimalloc_library", "loaded_allocator", "reexec_env", "restored_env", "maybe_reexec",
           "MALLOC_CONF", "ALLOCATORS"]

# Keep dirty and muzzy pages for reuse: the process stays at its peak resident size, which for
# training (the same step over and over) is what it needs anyway.
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# mimalloc: serve even the biggest blocks from its arenas, and purge (decommit) freed memory only
# after it has lain unused for a second. mimalloc 3 hands objects over 2 GiB straight to the OS and
# unmaps them on free, and XLA:CPU allocates each executable's temporaries as one block (5.7 GB for
# the Noise2Atom `paper` step), which was page-faulted and zero-filled anew on every step (14 % of
# that step's CPU time). Never purging (-1) keeps those pages too, but the block lands elsewhere in
# the arenas now and then and the process grows (16.5 GB against 9.1 GB); a purge delay longer than
# the gap between two steps keeps the pages that are reused and returns the rest
# (benchmarks/results/noise2atom.md, session 18).
MIMALLOC_ENV = {"MIMALLOC_PURGE_DELAY": "1000", "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "1TiB"}
ALLOCATORS = ("jemalloc", "mimalloc")  # in order of preference
_GUARD = "JAXDN_ALLOCATOR_REEXEC"
_SAVED = "JAXDN_ALLOCATOR_SAVED_ENV"   # the user's own values of the variables the re-execution sets
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def jemalloc_library() -> str | None:
    """Path (or loader name) of an installed libjemalloc shared library, else None."""
    for d in _DIRS:
        p = Path(d) / "libjemalloc.so.2"
        if p.is_file():
            return str(p)
    return ctypes.util.find_library("jemalloc")


def mimalloc_library() -> str | None:
    """Path of libmimalloc from the installed ``cmeel-mimalloc`` wheel, else None."""
    try:
        files = metadata.distribution("cmeel-mimalloc").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmimalloc.so"):
            p = Path(f.locate())
            if p.is_file():
                return str(p)
    return None


def loaded_allocator(maps: str | None = None) -> str:
    """"jemalloc" or "mimalloc" when that library is mapped into this process (`maps`:
    /proc/self/maps text), else "system"."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "system"
    for name in ALLOCATORS:
        if f"lib{name}" in maps:
            return name
    return "system"


def reexec_env(environ: dict, *, platform: str, libraries: dict, loaded: str) -> dict | None:
    """The environment to re-execute with, or None to carry on in this process.

    `libraries`: allocator name -> library path or None (`jemalloc_library`, `mimalloc_library`).
    ``JAXDN_ALLOCATOR`` (default: the first of `ALLOCATORS` that is installed) picks one. None when:
    not Linux, no such library, an allocator already loaded, ``JAXDN_ALLOCATOR=system``, or this
    process is itself the re-execution (a preload that failed must not loop). A user's own
    ``MALLOC_CONF`` / ``MIMALLOC_*`` settings are kept.
    """
    choice = environ.get("JAXDN_ALLOCATOR", "").strip().lower()
    if choice not in ("", "system") + ALLOCATORS:
        raise ValueError(f"JAXDN_ALLOCATOR must be one of system, {', '.join(ALLOCATORS)}; got {choice!r}")
    if choice == "system" or not platform.startswith("linux") or loaded != "system" or environ.get(_GUARD):
        return None
    name = choice or next((n for n in ALLOCATORS if libraries.get(n)), None)
    library = libraries.get(name) if name else None
    if library is None:
        return None
    env = dict(environ)
    touched = ("LD_PRELOAD", "MALLOC_CONF", *MIMALLOC_ENV)
    env[_SAVED] = json.dumps({k: environ.get(k) for k in touched})
    env["LD_PRELOAD"] = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    if name == "jemalloc":
        env.setdefault("MALLOC_CONF", MALLOC_CONF)
    else:
        for k, v in MIMALLOC_ENV.items():
            env.setdefault(k, v)
    env[_GUARD] = "1"
    return env


def restored_env(environ: dict, *, loaded: str) -> dict:
    """The re-executed process's environment with the user's own ``LD_PRELOAD`` / allocator settings
    back (the allocator is loaded and configured by then), so programs it starts do not inherit the
    preload; the re-execution guard is dropped too once the allocator is `loaded` (a ``jaxdn`` child
    then chooses for itself), kept when the preload failed (no retry loop)."""
    if _SAVED not in environ:
        return dict(environ)
    env = dict(environ)
    for k, v in json.loads(env.pop(_SAVED)).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    if loaded != "system":
        env.pop(_GUARD, None)
    return env


def maybe_reexec() -> None:
    """Replace this process by itself under jemalloc or mimalloc when `reexec_env` says so (before
    JAX is imported: only the ``jaxdn`` console entry calls it, never library code). In the
    re-executed process, restores the environment its children see (`restored_env`)."""
    if _SAVED in os.environ:
        env = restored_env(dict(os.environ), loaded=loaded_allocator())
        os.environ.clear()
        os.environ.update(env)
        return
    env = reexec_env(dict(os.environ), platform=sys.platform,
                     libraries={"jemalloc": jemalloc_library(), "mimalloc": mimalloc_library()},
                     loaded=loaded_allocator())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:  # could not exec: run on with the system allocator
        return
