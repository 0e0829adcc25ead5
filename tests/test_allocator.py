"""jaxdn.allocator: when the command re-executes itself under jemalloc or mimalloc, and that it does."""
import os
import subprocess
import sys

import pytest

from jaxdn import allocator, cli

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
MILIB = "/site-packages/cmeel.prefix/lib/libmimalloc.so"


def _env(**kw):
    libraries = {"jemalloc": kw.pop("library", LIB), "mimalloc": kw.pop("mimalloc", None)}
    return allocator.reexec_env(kw.pop("environ", {}), **{"platform": "linux", "libraries": libraries,
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


def test_reexec_env_falls_back_to_mimalloc_and_keeps_pages():
    env = _env(library=None, mimalloc=MILIB, environ={"MALLOC_CONF": "narenas:2"})
    assert env["LD_PRELOAD"] == MILIB and env["MIMALLOC_PURGE_DELAY"] == "1000"
    assert env["MIMALLOC_ARENA_MAX_OBJECT_SIZE"] == "1TiB"
    assert env["MALLOC_CONF"] == "narenas:2"         # jemalloc's settings left as the user had them
    assert _env(mimalloc=MILIB)["LD_PRELOAD"] == LIB  # jemalloc first when both are there
    env = _env(mimalloc=MILIB, environ={"JAXDN_ALLOCATOR": "mimalloc", "MIMALLOC_PURGE_DELAY": "10"})
    assert env["LD_PRELOAD"] == MILIB and env["MIMALLOC_PURGE_DELAY"] == "10" and "MALLOC_CONF" not in env


@pytest.mark.parametrize("kw", [dict(platform="darwin"), dict(library=None), dict(loaded="jemalloc"),
                                dict(loaded="mimalloc", mimalloc=MILIB),
                                dict(environ={"JAXDN_ALLOCATOR": "mimalloc"}),
                                dict(environ={"JAXDN_ALLOCATOR": "system"}),
                                dict(environ={"JAXDN_ALLOCATOR_REEXEC": "1"})])
def test_reexec_env_carries_on_when_it_should(kw):
    assert _env(**kw) is None


def test_reexec_env_rejects_unknown_choice():
    with pytest.raises(ValueError, match="JAXDN_ALLOCATOR"):
        _env(environ={"JAXDN_ALLOCATOR": "tcmalloc"})


def test_loaded_allocator_reads_maps():
    assert allocator.loaded_allocator("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libjemalloc.so.2\n") == "jemalloc"
    assert allocator.loaded_allocator("7f00-7f01 r-xp 0 08:01 1 /x/cmeel.prefix/lib/libmimalloc.so\n") == "mimalloc"
    assert allocator.loaded_allocator("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n") == "system"
    maps = open("/proc/self/maps").read()
    assert allocator.loaded_allocator() == ("jemalloc" if "libjemalloc" in maps
                                            else "mimalloc" if "libmimalloc" in maps else "system")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cmeel-mimalloc is a Linux dependency")
def test_mimalloc_library_comes_from_the_installed_wheel():
    lib = allocator.mimalloc_library()
    if lib is None:
        pytest.skip("cmeel-mimalloc not installed (no wheel for this platform)")
    assert os.path.isfile(lib) and os.path.basename(lib).startswith("libmimalloc.so")


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


_LIBS = {"jemalloc": allocator.jemalloc_library, "mimalloc": allocator.mimalloc_library}
_SETTING = {"jemalloc": ("MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1"),
            "mimalloc": ("MIMALLOC_PURGE_DELAY", "1000")}


def _user_env(choice):
    """This process's environment without any allocator settings, asking for allocator `choice`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "MALLOC_CONF", "JAXDN_ALLOCATOR_REEXEC") and not k.startswith("MIMALLOC_")}
    env["JAXDN_ALLOCATOR"] = choice
    return env


@pytest.mark.parametrize("choice", ["jemalloc", "mimalloc", "system"])
def test_maybe_reexec_runs_the_process_again_under_the_allocator(choice):
    """The process runs again under the allocator with its arguments; the programs it starts see
    the user's environment (no preload, no allocator settings) and run under the system allocator."""
    if not sys.platform.startswith("linux") or (choice != "system" and _LIBS[choice]() is None):
        pytest.skip(f"{choice} not installed")
    setting = _SETTING.get(choice, ("MALLOC_CONF", None))[0]
    child = "from jaxdn import allocator; print(allocator.loaded_allocator())"
    code = ("import os, subprocess, sys; from jaxdn import allocator; allocator.maybe_reexec(); "
            f"grandchild = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout; "
            f"print(allocator.loaded_allocator(), os.environ.get({setting!r}), os.environ.get('LD_PRELOAD'), "
            "os.environ.get('JAXDN_ALLOCATOR_REEXEC'), grandchild.strip(), sys.argv[1:])")
    env = _user_env(choice)
    out = subprocess.run([sys.executable, "-c", code, "a b", "c"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split(maxsplit=5)
    assert out[0] == choice
    assert out[1:4] == ["None", "None", "None"]     # restored: the user had none of them
    assert out[4] == "system"                       # a child program is not preloaded
    assert out[5].strip() == "['a b', 'c']"         # arguments survive the re-execution unchanged


def test_restored_env_gives_back_the_users_values():
    env = _env(environ={"LD_PRELOAD": "libfoo.so", "PATH": "/bin"})
    back = allocator.restored_env(env, loaded="jemalloc")
    assert back == {"LD_PRELOAD": "libfoo.so", "PATH": "/bin"}
    failed = allocator.restored_env(env, loaded="system")    # preload failed: keep the guard, no loop
    assert failed["JAXDN_ALLOCATOR_REEXEC"] == "1" and failed["LD_PRELOAD"] == "libfoo.so"
    assert allocator.restored_env({"PATH": "/bin"}, loaded="system") == {"PATH": "/bin"}


@pytest.mark.parametrize("choice", ["jemalloc", "mimalloc"])
def test_a_block_over_2_gib_is_reused_not_faulted_in_again(choice):
    """XLA:CPU allocates an executable's temporaries as one block (5.7 GB for the Noise2Atom `paper`
    step). Under the allocator `maybe_reexec` sets up, freeing and allocating that block again must
    reuse its pages: mimalloc 3 by default unmaps objects over 2 GiB, so every step faulted them in."""
    if not sys.platform.startswith("linux") or _LIBS[choice]() is None:
        pytest.skip(f"{choice} not installed")
    code = ("import resource, numpy as np; from jaxdn import allocator; allocator.maybe_reexec()\n"
            "faults = []\n"
            "for _ in range(2):\n"
            "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    a = np.empty((2200 << 20) // 4, np.float32); a[::1024] = 1.0; del a\n"  # one write per 4 KiB page
            "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
            "print(allocator.loaded_allocator(), *faults)")
    env = _user_env(choice)
    name, first, second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                         timeout=120, check=True).stdout.split()
    assert name == choice
    assert int(first) >= 1000              # the first touch does fault (2 MiB pages at the least)
    assert int(second) < int(first) // 20  # the second reuses those pages
