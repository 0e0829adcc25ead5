"""Multi-process `jaxdn denoise` (issue: Scale): two processes on 127.0.0.1 (CPU, gloo collectives)
split the files of a folder between them and write exactly what one process writes."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxdn import io

TESTS = os.path.dirname(__file__)

WRAPPER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from jaxdn import api, cli
    api.METHODS["smooth"] = ("_fake_methods", "smooth", {{}})
    sys.exit(cli.main(sys.argv[1:]))
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three JAX processes: ~10-25 s on 2 shared cores
def test_two_processes_split_files_and_match_one_process(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        io.write(src / f"s{i}.tif", io.Image(data=rng.random((3, 24, 20)).astype(np.float32), pixel_size=0.1,
                                             unit="nm"))
    script = tmp_path / "jaxdn_fake.py"
    script.write_text(WRAPPER.format(tests=TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu")

    one = subprocess.run([sys.executable, str(script), "denoise", str(src), "-o", str(tmp_path / "one"),
                          "-m", "smooth", "--batch-frames", "2"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script), "denoise", str(src), "-o", str(tmp_path / "two"),
                               "-m", "smooth", "--batch-frames", "2", "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "process 0 of 2: 2 files" in outs[0][1] and "process 1 of 2: 3 files" in outs[1][1]
    written = [line for out, _ in outs for line in out.splitlines() if "->" in line]
    assert len(written) == 5  # every file once, by one process

    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 10
    for name in names:
        if name.endswith(".tif"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.slow  # three JAX processes
def test_two_processes_share_the_frames_of_one_stack(tmp_path):
    rng = np.random.default_rng(1)
    io.write(tmp_path / "movie.tif", io.Image(data=rng.random((7, 24, 20)).astype(np.float32), pixel_size=0.2,
                                              unit="nm"))
    script = tmp_path / "jaxdn_fake.py"
    script.write_text(WRAPPER.format(tests=TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu")
    base = [sys.executable, str(script), "denoise", str(tmp_path / "movie.tif"), "-m", "smooth", "--batch-frames", "2"]
    one = subprocess.run(base + ["-o", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = free_port()
    procs = [subprocess.Popen(base + ["-o", str(tmp_path / "two"), "--coordinator", f"127.0.0.1:{port}",
                                      "--num-processes", "2", "--process-id", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "share the frames" in outs[0][1]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["movie_denoised.tif", "movie_denoised.tif.json"]
    assert (tmp_path / "one" / "movie_denoised.tif").read_bytes() == (tmp_path / "two" / "movie_denoised.tif").read_bytes()
    side = json.loads((tmp_path / "two" / "movie_denoised.tif.json").read_text())
    assert side["provenance"]["parameters"]["processes"] == 2 and side["shape"] == [7, 24, 20]


def test_incomplete_multiprocess_settings_are_refused(tmp_path, monkeypatch, capsys):
    from jaxdn import api, cli
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(api.METHODS, "smooth", ("_fake_methods", "smooth", {}))
    io.write(tmp_path / "a.tif", io.Image(data=np.zeros((20, 20), np.float32)))
    base = ["denoise", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o"), "-m", "smooth"]
    for extra, expect in ((["--num-processes", "2"], "coordinator"),
                          (["--coordinator", "127.0.0.1:1", "--num-processes", "2"], "id"),
                          (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "outside")):
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
