"""Streaming (issue: Scale): chunked stacks equal the in-memory path byte for byte, bounded memory,
--resume, no partial output on crash/SIGTERM, corrupt files skipped. Stand-in methods only."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from jaxdn import api, batch, cli, io, stream

TESTS = os.path.dirname(__file__)


@pytest.fixture(autouse=True)
def fake_methods(monkeypatch):
    monkeypatch.setitem(api.METHODS, "identity", ("_fake_methods", "identity", {}))
    monkeypatch.setitem(api.METHODS, "smooth", ("_fake_methods", "smooth", {}))
    monkeypatch.setitem(api.METHODS, "crash", ("_fake_methods", "crash", {}))


def write_stack(path, frames=10, h=24, w=20, seed=0, pixel_size=0.07):
    data = np.random.default_rng(seed).random((frames, h, w)).astype(np.float32)
    io.write(path, io.Image(data=data, pixel_size=pixel_size, unit="nm"))
    return data


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_streamed_equals_in_memory_byte_for_byte(tmp_path, suffix):
    data = write_stack(tmp_path / "in.tif", frames=10)
    a = batch.denoise_file(tmp_path / "in.tif", tmp_path / f"a{suffix}", method="smooth", seed=4,
                           batch_frames=3, stream=True)
    b = batch.denoise_file(tmp_path / "in.tif", tmp_path / f"b{suffix}", method="smooth", seed=4, stream=False)
    assert a.streamed and not b.streamed and a.shape == b.shape == (10, 24, 20)
    assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()
    sa = json.loads((tmp_path / f"a{suffix}.json").read_text())
    sb = json.loads((tmp_path / f"b{suffix}.json").read_text())
    for key in ("output_sha256", "pixel_size", "unit", "shape", "dtype"):
        assert sa[key] == sb[key], key
    pa, pb = sa["provenance"], sb["provenance"]
    for key in ("method", "seed", "input_sha256", "parameters", "jaxdn_version", "weights"):
        assert pa[key] == pb[key], key
    out = io.read(tmp_path / f"a{suffix}")
    np.testing.assert_allclose(out.data, ndimage.gaussian_filter(data, (0, 1, 1)), rtol=1e-6)
    if suffix == ".tif":
        assert out.pixel_size == pytest.approx(0.07, rel=1e-6) and out.unit == "nm"
    assert not leftovers(tmp_path)


def test_streamed_stack_report(tmp_path):
    write_stack(tmp_path / "in.tif", frames=5, h=40, w=48)
    res = batch.denoise_file(tmp_path / "in.tif", tmp_path / "o" / "in_denoised.tif", method="smooth",
                             batch_frames=2, report=True)
    assert res.streamed and res.report == tmp_path / "o" / "in_denoised_report.png"
    assert res.report.stat().st_size > 1000


def test_chunks_padded_to_one_shape(tmp_path, monkeypatch):
    write_stack(tmp_path / "in.npy", frames=7)
    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((7, 24, 20)).astype(np.float32))
    shapes = []
    import _fake_methods

    def recording(data, **kw):
        shapes.append(data.shape)
        return data * 2

    monkeypatch.setattr(_fake_methods, "recording", recording, raising=False)
    monkeypatch.setitem(api.METHODS, "recording", ("_fake_methods", "recording", {}))
    batch.denoise_file(tmp_path / "in.npy", tmp_path / "out.npy", method="recording", batch_frames=3)
    assert shapes == [(3, 24, 20)] * 3
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), 2 * np.load(tmp_path / "in.npy"))


def test_stream_options_hook_fixes_stack_wide_parameters(tmp_path, monkeypatch):
    import _fake_methods
    seen = []

    def scaled(data, *, scale=1.0, **kw):
        seen.append(scale)
        return data * scale

    monkeypatch.setattr(_fake_methods, "scaled", scaled, raising=False)
    monkeypatch.setattr(_fake_methods, "stream_options",
                        lambda stack, options: {**options, "scale": float(stack.n_frames)}, raising=False)
    monkeypatch.setitem(api.METHODS, "scaled", ("_fake_methods", "scaled", {}))
    write_stack(tmp_path / "in.tif", frames=5)
    batch.denoise_file(tmp_path / "in.tif", tmp_path / "out.tif", method="scaled", batch_frames=2)
    assert seen == [5.0, 5.0, 5.0]


def test_stream_halo_gives_each_chunk_its_neighbours_and_keeps_its_own_frames(tmp_path, monkeypatch):
    """A method with `stream_halo` (a temporal filter) streamed in chunks of 2 equals the one-call
    result: each call sees `halo` extra frames on either side (never padded) and only its own
    frames are written."""
    import _fake_methods
    calls = []

    def temporal(data, **kw):   # mean of each frame and its neighbours at ±1 (fewer at the ends)
        calls.append(len(data))
        pad = np.concatenate([data[:1] * np.nan, data, data[:1] * np.nan])
        return np.nanmean(np.stack([pad[:-2], pad[1:-1], pad[2:]]), axis=0)

    monkeypatch.setattr(_fake_methods, "temporal", temporal, raising=False)
    monkeypatch.setattr(_fake_methods, "stream_halo", lambda options: 1, raising=False)
    monkeypatch.setitem(api.METHODS, "temporal", ("_fake_methods", "temporal", {}))
    write_stack(tmp_path / "in.npy", frames=7)
    data = np.load(tmp_path / "in.npy")
    batch.denoise_file(tmp_path / "in.npy", tmp_path / "out.npy", method="temporal", batch_frames=2)
    assert calls == [3, 4, 4, 2]        # [0,1]+1 | 1+[2,3]+1 | 3+[4,5]+1 | 5+[6]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), temporal(data), rtol=1e-6)


def test_crash_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    import _fake_methods
    calls = []

    def flaky(data, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in chunk 2")
        return data

    monkeypatch.setattr(_fake_methods, "flaky", flaky, raising=False)
    monkeypatch.setitem(api.METHODS, "flaky", ("_fake_methods", "flaky", {}))
    write_stack(tmp_path / "in.tif", frames=6)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="chunk 2"):
        batch.denoise_file(tmp_path / "in.tif", out / "x.tif", method="flaky", batch_frames=2)
    assert not out.exists() or not any(out.iterdir())


def test_resume_skips_complete_outputs_only(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        write_stack(src / f"s{i}.tif", frames=4, seed=i)
    out = tmp_path / "out"
    assert cli.main(["denoise", str(src), "-o", str(out), "-m", "smooth", "-q"]) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "s1_denoised.tif").unlink()
    time.sleep(0.01)
    assert cli.main(["denoise", str(src), "-o", str(out), "-m", "smooth", "--resume"]) == 0
    text = capsys.readouterr().out
    assert text.count("already complete") == 2
    assert (out / "s1_denoised.tif").exists()
    for name in ("s0_denoised.tif", "s2_denoised.tif", "s0_denoised.tif.json"):
        assert (out / name).stat().st_mtime_ns == stamps[name]
    # A changed input is not "complete": without --overwrite its output is refused, not skipped.
    io.write(src / "s0.tif", io.Image(data=np.zeros((4, 24, 20), np.float32)), overwrite=True)
    assert not stream.is_complete(src / "s0.tif", out / "s0_denoised.tif", method="smooth")
    assert stream.is_complete(src / "s2.tif", out / "s2_denoised.tif", method="smooth")
    assert not stream.is_complete(src / "s2.tif", out / "s2_denoised.tif", method="identity")
    assert cli.main(["denoise", str(src), "-o", str(out), "-m", "smooth", "--resume", "-q"]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["denoise", str(src), "-o", str(out), "-m", "smooth", "--resume", "--overwrite", "-q"]) == 0
    assert np.abs(io.read(out / "s0_denoised.tif").data).max() == 0


def test_folder_with_corrupt_stack_skips_it(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_stack(src / "a.tif", frames=5)
    write_stack(src / "c.tif", frames=5, seed=2)
    good = (src / "a.tif").read_bytes()
    (src / "b.tif").write_bytes(good[: len(good) // 2])   # truncated stack
    (src / "d.npy").write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "out"
    code = cli.main(["denoise", str(src), "-o", str(out), "-m", "identity", "--batch-frames", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "b.tif" in err and "d.npy" in err and "2 of 4 files failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a_denoised.tif", "a_denoised.tif.json",
                                                      "c_denoised.tif", "c_denoised.tif.json"]


_SLOW_METHOD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from jaxdn import api, cli
    import _fake_methods

    def slow(data, **kw):
        time.sleep(0.3)
        return data

    _fake_methods.slow = slow
    api.METHODS["slow"] = ("_fake_methods", "slow", {{}})
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_leaves_no_partial_output(tmp_path, sig):
    write_stack(tmp_path / "in.tif", frames=40)
    script = tmp_path / "run.py"
    script.write_text(_SLOW_METHOD.format(tests=TESTS))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), "denoise", str(tmp_path / "in.tif"), "-o", str(out),
                             "-m", "slow", "--batch-frames", "1", "-q"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and leftovers(out)):
        time.sleep(0.05)
    assert out.exists() and leftovers(out), "temporary output never appeared"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no partial output" in err
    assert list(out.iterdir()) == []


_BLOCKING_METHOD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    from jaxdn import api, cli
    import _fake_methods

    @jax.jit
    def busy(a):  # minutes of work inside one XLA call: Python signal handlers cannot run meanwhile
        return jax.lax.fori_loop(0, 100000, lambda i, m: jnp.tanh(m @ m), a)

    def blocking(data, **kw):
        a = jnp.full((512, 512), 1e-3, jnp.float32)
        return data + 0 * np.asarray(busy(a)).sum()

    _fake_methods.blocking = blocking
    api.METHODS["blocking"] = ("_fake_methods", "blocking", {{}})
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_sigterm_during_a_long_xla_call_exits_promptly_without_output(tmp_path):
    write_stack(tmp_path / "in.tif", frames=4)
    script = tmp_path / "run.py"
    script.write_text(_BLOCKING_METHOD.format(tests=TESTS))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), "denoise", str(tmp_path / "in.tif"), "-o", str(out),
                             "-m", "blocking", "--batch-frames", "1", "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and leftovers(out)):
        time.sleep(0.05)
    assert out.exists() and leftovers(out), "temporary output never appeared"
    time.sleep(1.0)  # well inside the XLA call by now
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=45)  # the computation alone would take many minutes
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, err
    assert "no partial output" in err
    assert list(out.iterdir()) == []


_RSS_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from jaxdn import api, batch
    api.METHODS["identity"] = ("_fake_methods", "identity", {{}})
    for inp, out in zip(sys.argv[1::2], sys.argv[2::2]):
        batch.denoise_file(inp, out, method="identity", batch_frames=8)
    # VmHWM: peak RSS of this program (ru_maxrss would include the parent's RSS at fork time).
    print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
""")


def _peak_rss_kib(script, *paths):
    res = subprocess.run([sys.executable, str(script), *map(str, paths)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for VmHWM")
def test_peak_memory_does_not_grow_with_frames(tmp_path):
    """.npy and .tif stacks of 40 vs 640 frames of 128² (2.5 vs 40 MB each, as much output): the
    peak RSS of a process denoising both differs by less than 12 MB."""
    script = tmp_path / "rss.py"
    script.write_text(_RSS_SCRIPT.format(tests=TESTS))
    rss = {}
    for frames in (40, 640):
        paths = []
        for suffix in (".npy", ".tif"):
            inp = tmp_path / f"in{frames}{suffix}"
            if suffix == ".npy":
                mm = np.lib.format.open_memmap(inp, mode="w+", dtype=np.float32, shape=(frames, 128, 128))
            else:
                mm = tifffile.memmap(inp, shape=(frames, 128, 128), dtype=np.float32, imagej=True,
                                     metadata={"axes": "TYX"})
            mm[:] = 0.5
            mm.flush()
            del mm
            paths += [inp, tmp_path / f"out{frames}{suffix}"]
        rss[frames] = _peak_rss_kib(script, *paths)
        for out in paths[1::2]:
            assert io.open_lazy(out).shape == (frames, 128, 128)
    assert rss[640] - rss[40] < 12 * 1024, rss
