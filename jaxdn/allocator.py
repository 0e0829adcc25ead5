"""Host memory allocator for CPU runs: jemalloc that keeps freed pages, when it is installed.

XLA:CPU allocates each executable's temporary buffers afresh on every call; with glibc's malloc the
big ones are new ``mmap`` regions, so every training step page-faults and zero-fills all of its
scratch memory again (1.6 M minor faults, ~6 s of kernel time per Noise2Atom `paper` step on the
2-core CI machine). jemalloc told never to return dirty pages to the OS (``dirty_decay_ms:-1``)
reuses them: that step runs 15–30 % faster (benchmarks/results/noise2atom.md). An allocator can only
be chosen when a process starts, so the ``jaxdn`` command re-executes itself once with
``LD_PRELOAD`` set (`maybe_reexec`). Linux only; nothing happens without the library
(Debian/Ubuntu: ``apt install libjemalloc2``). ``JAXDN_ALLOCATOR=system`` opts out.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

__all__ = ["jemalloc_library", "loaded_allocator", "reexec_env", "maybe_reexec", "MALLOC_CONF"]

# Keep dirty and muzzy pages for reuse: the process stays at its peak resident size, which for
# training (the same step over and over) is what it needs anyway.
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
_GUARD = "JAXDN_ALLOCATOR_REEXEC"
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def jemalloc_library() -> str | None:
    """Path (or loader name) of an installed libjemalloc shared library, else None."""
    for d in _DIRS:
        p = Path(d) / "libjemalloc.so.2"
        if p.is_file():
            return str(p)
    return ctypes.util.find_library("jemalloc")


def loaded_allocator(maps: str | None = None) -> str:
    """"jemalloc" when libjemalloc is mapped into this process (`maps`: /proc/self/maps text), else "system"."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "system"
    return "jemalloc" if "libjemalloc" in maps else "system"


def reexec_env(environ: dict, *, platform: str, library: str | None, loaded: str) -> dict | None:
    """The environment to re-execute with, or None to carry on in this process.

    None when: not Linux, no library, jemalloc already loaded, ``JAXDN_ALLOCATOR=system``, or this
    process is itself the re-execution (a preload that failed must not loop). A user's own
    ``MALLOC_CONF`` is kept.
    """
    choice = environ.get("JAXDN_ALLOCATOR", "jemalloc").strip().lower()
    if choice not in ("jemalloc", "system"):
        raise ValueError(f"JAXDN_ALLOCATOR must be 'jemalloc' or 'system', got {choice!r}")
    if (choice == "system" or not platform.startswith("linux") or library is None
            or loaded == "jemalloc" or environ.get(_GUARD)):
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    env[_GUARD] = "1"
    return env


def maybe_reexec() -> None:
    """Replace this process by itself under jemalloc when `reexec_env` says so (before JAX is
    imported: only the ``jaxdn`` console entry calls it, never library code)."""
    env = reexec_env(dict(os.environ), platform=sys.platform, library=jemalloc_library(),
                     loaded=loaded_allocator())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:  # could not exec: run on with the system allocator
        return
