"""jaxdn.allocator: when the command re-executes itself under jemalloc, and that it does."""
import os
import subprocess
import sys

import pytest

from jaxdn import allocator, cli

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def _env(**kw):
    return allocator.reexec_env(kw.pop("environ", {}), **{"platform": "linux", "library": LIB,
                                                          "loaded": "system", **kw})


def test_reexec_env_preloads_jemalloc_and_keeps_pages():
    env = _env(environ={"PATH": "/bin"})
    assert env["LD_PRELOAD"] == LIB
    assert env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert env["PATH"] == "/bin" and env["JAXDN_ALLOCATOR_REEXEC"] == "1"


def test_reexec_env_keeps_users_preload_and_malloc_conf():
    env = _env(environ={"LD_PRELOAD": "libfoo.so", "MALLOC_CONF": "narenas:2"})
    assert env["LD_PRELOAD"] == f"{LIB} libfoo.so"
    assert env["MALLOC_CONF"] == "narenas:2"


@pytest.mark.parametrize("kw", [dict(platform="darwin"), dict(library=None), dict(loaded="jemalloc"),
                                dict(environ={"JAXDN_ALLOCATOR": "system"}),
                                dict(environ={"JAXDN_ALLOCATOR_REEXEC": "1"})])
def test_reexec_env_carries_on_when_it_should(kw):
    assert _env(**kw) is None


def test_reexec_env_rejects_unknown_choice():
    with pytest.raises(ValueError, match="JAXDN_ALLOCATOR"):
        _env(environ={"JAXDN_ALLOCATOR": "tcmalloc"})


def test_loaded_allocator_reads_maps():
    assert allocator.loaded_allocator("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libjemalloc.so.2\n") == "jemalloc"
    assert allocator.loaded_allocator("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n") == "system"
    assert allocator.loaded_allocator() == ("jemalloc" if "libjemalloc" in open("/proc/self/maps").read()
                                            else "system")


def test_cli_reexecs_only_as_the_command_process(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "maybe_reexec", lambda: calls.append(1))
    with pytest.raises(SystemExit):
        cli.main(["denoise", "--help"])      # called as a library: never replaces the caller
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["jaxdn", "denoise", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [1]
    monkeypatch.setattr(sys, "argv", ["jaxdn", "info", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [1]                      # `info` does no heavy work: no re-execution


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator.jemalloc_library() is None,
                    reason="libjemalloc not installed (apt install libjemalloc2)")
@pytest.mark.parametrize("choice, expected", [("jemalloc", "jemalloc"), ("system", "system")])
def test_maybe_reexec_runs_the_process_again_under_jemalloc(choice, expected):
    code = ("import os, sys; from jaxdn import allocator; allocator.maybe_reexec(); "
            "print(allocator.loaded_allocator(), os.environ.get('MALLOC_CONF'), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "JAXDN_ALLOCATOR_REEXEC")}
    env["JAXDN_ALLOCATOR"] = choice
    out = subprocess.run([sys.executable, "-c", code, "a b", "c"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split(maxsplit=2)
    assert out[0] == expected
    assert out[1] == ("dirty_decay_ms:-1,muzzy_decay_ms:-1" if expected == "jemalloc" else "None")
    assert out[2].strip() == "['a b', 'c']"   # arguments survive the re-execution unchanged
