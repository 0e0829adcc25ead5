"""Tests for `jaxdn bench`: statistics, interleaving, memory probe, reporting, and one smoke run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxdn import bench


def test_summarize_known_odd():
    st = bench.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert st == {"n": 5, "median": 3.0, "q1": 2.0, "q3": 4.0, "iqr": 2.0, "min": 1.0, "max": 5.0, "mean": 3.0}


def test_summarize_known_even_linear_quartiles():
    st = bench.summarize([4.0, 1.0, 3.0, 2.0])
    # linear interpolation between order statistics: q1 at rank 0.75, q3 at rank 2.25
    assert st["median"] == pytest.approx(2.5)
    assert st["q1"] == pytest.approx(1.75)
    assert st["q3"] == pytest.approx(3.25)
    assert st["iqr"] == pytest.approx(1.5)


def test_summarize_single_and_empty():
    st = bench.summarize([0.25])
    assert st["median"] == st["min"] == st["max"] == 0.25 and st["iqr"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        bench.summarize([])


def test_interleaved_order():
    assert bench.interleaved_order(["a", "b", "c"], 2) == [
        (0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]
    assert bench.interleaved_order(["a"], 0) == []


def test_run_interleaved_alternates_and_survives_errors():
    calls = []

    def make(name):
        def fn(x):
            calls.append(name)
            return x * 1.0
        return fn

    def broken(x):
        calls.append("bad")
        raise MemoryError("too big")

    cs = [bench.Contender("A", "jaxdn", "f", make("A")),
          bench.Contender("bad", "peer", "f", broken),
          bench.Contender("B", "peer", "f", make("B"))]
    x = np.ones((8, 8), np.float32)
    rows = bench.run_interleaved(cs, x, repeats=3, clean=x)
    # one warm-up each, then A, B, A, B, A, B; the broken one is called once and dropped
    assert calls == ["A", "bad", "B", "A", "B", "A", "B", "A", "B"]
    by = {r["name"]: r for r in rows}
    assert by["bad"]["error"].startswith("MemoryError: too big") and "stats" not in by["bad"]
    for n in "AB":
        assert by[n]["error"] is None
        assert len(by[n]["times_s"]) == 3 and by[n]["stats"]["n"] == 3
        assert by[n]["mpix_per_s"] > 0 and by[n]["frames_per_s"] > 0
        assert np.isinf(by[n]["psnr_db"])  # identity on the clean image


def test_paired_ratios():
    r = bench.paired_ratios([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
    assert r["speedup"] == pytest.approx(3.0)  # median of 2, 4, 3
    assert (r["min"], r["max"], r["n"]) == (2.0, 4.0, 3)
    assert r["ratio_of_medians"] == pytest.approx(4.0 / 1.0)
    assert bench.paired_ratios([], [1.0]) is None


def test_peak_rss_sees_a_temporary_allocation():
    with bench.PeakRSS() as mem:
        a = np.ones(200 * 2**20 // 8)  # 200 MB, touched, then freed inside the block
        del a
    assert mem.delta_bytes >= 150 * 2**20
    with bench.PeakRSS() as small:
        pass
    assert small.delta_bytes < 50 * 2**20


def _fake_doc():
    env = {"command": "jaxdn bench --quick", "date_utc": "2026-01-01 00:00:00 UTC", "backend": "cpu",
           "devices": ["cpu:0"], "cpu_model": "Test CPU", "cpu_affinity": 2, "os_cpu_count": 2,
           "memory_total_gb": 24.0, "loadavg_start": [1.0, 1.0, 1.0], "jaxdn": "0", "jax": "0", "jaxlib": "0",
           "platform_version": "cpu", "flax": "0", "numpy": "0", "scikit_image": "0", "scikit_learn": "0",
           "torch": None, "dtype": "float32", "xla_flags": ""}

    def case(name, kind, size, med):
        st = bench.summarize([med, med * 1.1, med * 0.9])
        return {"name": name, "kind": kind, "family": "reucid", "size": size, "frames": 1, "stats": st,
                "times_s": [med] * 3, "mpix_per_s": size * size / 1e6 / med, "frames_per_s": 1 / med,
                "first_call_s": 2.0, "rss_peak_mb": 10.0, "psnr_db": 30.0, "psnr_noisy_db": 20.0,
                "note": "", "error": None}

    cases = [case("reucid", "jaxdn", 128, 0.004), case("reucid", "jaxdn", 256, 0.01),
             case("reucid-numpy", "peer", 128, 0.1), case("reucid-numpy", "peer", 256, 0.3),
             {"name": "nlm", "kind": "classical", "size": 256, "frames": 1, "error": "boom", "note": ""}]
    ratios = [{"size": 256, "frames": 1, "jaxdn": "reucid", "peer": "reucid-numpy", "peer_kind": "peer",
               "speedup": 30.0, "min": 25.0, "max": 35.0, "n": 3, "ratio_of_medians": 30.0,
               "psnr_jaxdn_db": 30.0, "psnr_peer_db": 30.0}]
    return {"schema": bench.SCHEMA, "env": env, "notes": ["x: skipped"], "paper": [dict(r) for r in bench.PAPER_ROWS],
            "config": {"input": "sim", "dose_e_per_A2": 1000.0, "pixel_size_A": 0.2, "repeats": 3},
            "matmul_peak": [{"dtype": "float32", "n": 64, "flops_per_s": 1e11, "flops_per_s_best": 1.1e11}],
            "cases": cases, "ratios": ratios, "wall_s": 1.0}


def test_markdown_and_plot_from_a_document(tmp_path):
    doc = _fake_doc()
    md = bench.markdown(doc)
    assert "| 256² | reucid | jaxdn | 10.0 ms |" in md
    assert "| 256² | reucid | reucid-numpy (peer) | 30× | 25–35 |" in md
    assert "| 256² | nlm | classical | error |" in md
    assert "other hardware" in md and "1.80 s" in md and "within budget" in md
    assert "`jaxdn bench --quick`" in md
    png = tmp_path / "p.png"
    bench.plot(doc, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = tmp_path / "RESULTS.md"
    res.write_text("# results\n\nold text\n")
    bench.append_results(doc, md, res, plot_path=png)
    text = res.read_text()
    assert text.startswith("# results\n\nold text\n")
    assert "### `jaxdn bench` run, 2026-01-01 00:00:00 UTC" in text and "](p.png)" in text


def test_bench_help_through_the_cli(capsys):
    from jaxdn import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--methods", "--sizes", "--json", "--plot", "--repeats", "--append-results"):
        assert opt in out


def test_bad_arguments_are_input_errors():
    from jaxdn import cli
    assert cli.main(["bench", "--repeats", "0"]) == 2
    assert cli.main(["bench", "--peers", "nonsense"]) == 2


def test_smoke_reduced_quick_run(tmp_path, capsys):
    """A reduced `--quick`: one tiny size, one repeat, REUCID against its NumPy peer and one classical."""
    js, png, res = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "RESULTS.md"
    rc = bench.main(["--quick", "--sizes", "48", "--stack", "none", "--repeats", "1", "--methods", "reucid",
                     "--peers", "reucid-numpy", "gaussian", "--networks", "--peak-size", "128", "-q",
                     "--json", str(js), "--plot", str(png), "--append-results", str(res)])
    assert rc == 0
    doc = json.loads(js.read_text())
    assert doc["schema"] == bench.SCHEMA
    for k in ("backend", "devices", "jax", "jaxlib", "cpu_model", "os_cpu_count", "command", "date_utc"):
        assert k in doc["env"]
    assert doc["env"]["command"].startswith("jaxdn bench --quick")
    assert doc["matmul_peak"][0]["dtype"] == "float32" and doc["matmul_peak"][0]["flops_per_s"] > 0
    names = {c["name"]: c for c in doc["cases"]}
    assert names["reucid"]["error"] is None and names["reucid"]["stats"]["n"] == 1
    assert {"first_call_s", "compile_s", "rss_peak_mb", "psnr_db", "mpix_per_s"} <= set(names["reucid"])
    peers = {r["peer"] for r in doc["ratios"] if r["jaxdn"] == "reucid"}
    assert {"reucid-numpy", "gaussian"} <= peers
    assert all(r["speedup"] > 0 for r in doc["ratios"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "jaxdn bench --quick" in res.read_text()
    assert "| 48² | reucid | jaxdn |" in capsys.readouterr().out
