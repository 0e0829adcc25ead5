"""The shared training loop: configs, one trace, 1 vs 4 devices, SIGKILL + resume, logs, CLI.

Subprocess runs share one persistent XLA compilation cache (per test session) so that only the
first run of each device count pays for compilation.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from jaxdn.errors import InputError
from jaxdn.train import config as cfg_lib

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.py")
RUNNER = "import sys; from jaxdn.train.cli import main; sys.exit(main(sys.argv[1:]))"


# ---- configs ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 1e-3
    name: Literal["adam", "sgd"] = "adam"
    sizes: tuple[int, ...] = (8, 10, 12)


@dataclasses.dataclass(frozen=True)
class _Outer:
    steps: int = 10
    flag: bool = False
    tag: str = "x"
    scale: float | None = None
    pair: tuple[float, float] = (1.0, 2.0)
    inner: _Inner = _Inner()


def test_load_config_variant_and_overrides():
    c = cfg_lib.load_config(f"{TOY}:tiny", ["optim.lr=1e-4", "steps=7", "compute_dtype=bfloat16"])
    assert c.steps == 7 and isinstance(c.steps, int)
    assert c.optim.lr == pytest.approx(1e-4) and isinstance(c.optim.lr, float)
    assert c.compute_dtype == "bfloat16"
    assert c.size == 16  # from the tiny variant
    base = cfg_lib.load_config(TOY)
    assert base.steps == 200  # no variant -> "default"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.steps = 3


def test_override_type_coercion():
    c = cfg_lib.apply_overrides(_Outer(), ["flag=true", "scale=0.5", "pair=3,4", "inner.sizes=(1,2)",
                                           "inner.name=sgd", "tag=hello world", "steps=1e3"])
    assert c.flag is True and c.scale == 0.5 and c.pair == (3.0, 4.0) and c.inner.sizes == (1, 2)
    assert c.inner.name == "sgd" and c.tag == "hello world" and c.steps == 1000
    assert cfg_lib.apply_overrides(c, ["scale=none"]).scale is None


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown config key 'nope'"),
    ("inner.nope=1", "unknown config key 'inner.nope'"),
    ("steps=abc", "expected an integer"),
    ("flag=maybe", "expected true or false"),
    ("inner.name=rmsprop", "choose one of"),
    ("pair=1,2,3", "expected 2"),
    ("inner=3", "is a section"),
    ("steps", "key=value"),
])
def test_override_errors(override, message):
    with pytest.raises(InputError, match=message):
        cfg_lib.apply_overrides(_Outer(), [override])


def test_config_json_round_trip():
    c = cfg_lib.apply_overrides(_Outer(), ["scale=2", "inner.sizes=5"])
    d = json.loads(json.dumps(cfg_lib.to_dict(c)))
    assert d["inner"]["sizes"] == [5]
    assert cfg_lib.from_dict(_Outer, d) == c
    toy = cfg_lib.load_config(f"{TOY}:tiny")
    assert cfg_lib.from_dict(type(toy), json.loads(json.dumps(cfg_lib.to_dict(toy)))) == toy
    assert cfg_lib.config_diff(cfg_lib.to_dict(c), cfg_lib.to_dict(_Outer()), ignore=["steps"]) == \
        ["inner.sizes: [5] -> [8, 10, 12]", "scale: 2.0 -> None"]


def test_fields_added_after_a_run_at_their_defaults_do_not_block_its_resume():
    """A run written before `scale` and `inner.sizes` existed: at their declared defaults now they
    are no difference; set to anything else, or a field without a default, they are."""
    new = cfg_lib.to_dict(_Outer())
    old = json.loads(json.dumps(new))
    del old["scale"], old["inner"]["sizes"]
    defaults = cfg_lib.field_defaults(_Outer())
    assert defaults["inner"]["sizes"] == [8, 10, 12] and defaults["scale"] is None
    assert cfg_lib.config_diff(old, new, defaults=defaults) == []
    assert cfg_lib.config_diff(old, new) == ["inner.sizes: '<missing>' -> [8, 10, 12]", "scale: '<missing>' -> None"]
    changed = cfg_lib.to_dict(cfg_lib.apply_overrides(_Outer(), ["inner.sizes=5"]))
    assert cfg_lib.config_diff(old, changed, defaults=defaults) == ["inner.sizes: '<missing>' -> [5]"]
    # a key the run had and the new config dropped is still a difference
    old["gone"] = 1
    assert cfg_lib.config_diff(old, new, defaults=defaults) == ["gone: 1 -> '<missing>'"]


def test_missing_config_file_and_variant():
    with pytest.raises(InputError, match="not found"):
        cfg_lib.load_config("configs/does_not_exist.py")
    with pytest.raises(InputError, match="unknown variant"):
        cfg_lib.load_config(f"{TOY}:nonsense")


# ---- fit in-process on a linear regression (dict state, hand-written step) --------------------------

def _linreg(n_features=3, batch=8):
    import jax
    import jax.numpy as jnp
    import optax

    true_w = jnp.arange(1.0, n_features + 1.0)
    tx = optax.sgd(0.1)
    traces = []

    def init_state():
        w = jnp.zeros(n_features)
        return {"w": w, "opt": tx.init(w)}

    def make_batch(key, step):
        x = jax.random.normal(key, (batch, n_features))
        return {"x": x, "y": x @ true_w}

    def train_step(state, batch, key):
        traces.append(1)

        def loss(w):
            return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

        value, g = jax.value_and_grad(loss)(state["w"])
        updates, opt = tx.update(g, state["opt"], state["w"])
        return {"w": optax.apply_updates(state["w"], updates), "opt": opt}, {"loss": value}

    return init_state, make_batch, train_step, traces, true_w


def test_fit_traces_once_logs_and_exports(tmp_path):
    from jaxdn.train.loop import fit
    init_state, make_batch, train_step, traces, true_w = _linreg()
    exported, hook_steps = [], []
    res = fit(init_state=init_state, train_step=train_step, make_batch=make_batch, steps=30,
              workdir=tmp_path, config={"kind": "linreg"}, log_every=10, checkpoint_every=10, keep_checkpoints=2,
              eval_fn=lambda s, k: {"err": np.abs(np.asarray(s["w"]) - np.asarray(true_w)).max()},
              eval_every=15, export_fn=lambda s: exported.append(np.asarray(s["w"])),
              hooks=[lambda step, s: hook_steps.append(step)], quiet=True)
    assert len(traces) == 1  # one trace for 30 steps
    assert res.steps_run == 30 and res.resumed_from is None and res.step == 30
    assert hook_steps == list(range(1, 31))
    np.testing.assert_allclose(exported[0], np.asarray(true_w), atol=1e-2)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30]
    assert train[0]["loss"] > train[-1]["loss"] and all(r["steps_per_s"] > 0 for r in train)
    assert res.first_step_s > 0
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30]
    # wall time to each logged state, in log order: after the compiling first step, never decreasing
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls) and walls[0] >= res.first_step_s > 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text()) == {"kind": "linreg"}
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [20, 30]
    assert res.metrics["loss"] == pytest.approx(train[-1]["loss"]) and "eval_err" in res.metrics

    # Re-running the finished run resumes at the end: nothing to train, same state.
    init_state2, make_batch2, train_step2, traces2, _ = _linreg()
    again = fit(init_state=init_state2, train_step=train_step2, make_batch=make_batch2, steps=30,
                workdir=tmp_path, config={"kind": "linreg"}, quiet=True)
    assert again.resumed_from == 30 and again.steps_run == 0
    np.testing.assert_array_equal(np.asarray(again.state["w"]), exported[0])

    # Extending `steps` is allowed; changing anything else is refused.
    more = fit(init_state=init_state2, train_step=train_step2, make_batch=make_batch2, steps=35,
               workdir=tmp_path, config={"kind": "linreg"}, quiet=True)
    assert more.resumed_from == 30 and more.steps_run == 5
    with pytest.raises(InputError, match="different config.*kind"):
        fit(init_state=init_state2, train_step=train_step2, make_batch=make_batch2, steps=40,
            workdir=tmp_path, config={"kind": "other"}, quiet=True)


def test_cpu_updates_run_one_at_a_time(tmp_path, monkeypatch):
    """XLA:CPU takes a step's scratch memory when the call is dispatched, so on CPU `fit` waits for
    each update before the next; without the wait the hooks would see a state still being computed."""
    import types
    import jax
    import jax.numpy as jnp
    from jaxdn.train import loop

    n = 3000

    def train_step(state, batch, key):  # ~0.1 s of work on a (n, n) scratch array
        a = jnp.sin(jnp.outer(state["w"], batch["x"]))
        g = a @ jnp.cos(a[:, :1])
        return {"w": state["w"] - 1e-9 * g[:, 0]}, {"g": jnp.mean(g)}

    def run(workdir):
        ready = []
        loop.fit(init_state=lambda: {"w": jnp.linspace(0.1, 1.0, n)}, train_step=train_step,
                 make_batch=lambda key, step: {"x": jax.random.normal(key, (n,))}, steps=6, workdir=workdir,
                 config={}, log_every=100, quiet=True,
                 hooks=[lambda step, s: ready.append(all(x.is_ready() for x in jax.tree.leaves(s)))])
        return ready

    assert loop.waits_for_each_step(jax.sharding.Mesh(np.array(jax.devices()), ("data",)))
    assert run(tmp_path / "cpu") == [True] * 6
    monkeypatch.setattr(loop, "waits_for_each_step", lambda mesh: False)  # as on an accelerator
    if jax.config.read("jax_cpu_enable_async_dispatch"):  # (off: every call returns finished)
        assert not all(run(tmp_path / "queued")[1:])  # the check above can fail
    gpu = types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform="gpu")]))
    assert not loop.waits_for_each_step(gpu)


_INLINE = """
import os, sys, time, jax, jax.numpy as jnp
from jaxdn.train.loop import run_computations_inline_on_cpu
if sys.argv[1] == "late":
    jnp.ones(2).block_until_ready()  # the backend has started: too late to change
applied = run_computations_inline_on_cpu()
f = jax.jit(lambda x: jnp.sin(jnp.outer(x, x)) @ jnp.cos(x))  # ~0.1 s of work
x = jnp.linspace(0.0, 1.0, 3000)
f(x).block_until_ready()
y = f(x)
print(applied, jax.config.read("jax_cpu_enable_async_dispatch"), y.is_ready())
"""


@pytest.mark.parametrize("case, expected", [("fresh", "True False True"), ("late", "False True False"),
                                            ("user", "False True False")])
def test_training_processes_run_cpu_computations_inline(case, expected):
    """`jaxdn train` turns XLA:CPU's asynchronous dispatch off before the backend starts, so a call
    returns only when its computation (and its scratch memory) is done; never late or over the user."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_CPU_ENABLE_ASYNC_DISPATCH"}
    env.update({"JAX_PLATFORMS": "cpu", **({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "1"} if case == "user" else {})})
    out = subprocess.run([sys.executable, "-c", _INLINE, case], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert " ".join(out) == expected


def test_train_command_asks_for_inline_computations_first(tmp_path, monkeypatch):
    from jaxdn.train import cli, loop
    calls = []
    monkeypatch.setattr(loop, "run_computations_inline_on_cpu", lambda: calls.append(1))
    assert cli.main(["toy", "--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path)]) == 2
    assert calls == [1]  # before the config is even read


def test_host_batches_and_data_match_device_batches(tmp_path):
    import jax
    import jax.numpy as jnp
    from jaxdn.train.loop import fit
    init_state, make_batch, train_step, _, _ = _linreg()
    a = fit(init_state=init_state, train_step=train_step, make_batch=make_batch, steps=5,
            workdir=tmp_path / "a", config={}, quiet=True)
    b = fit(init_state=init_state, train_step=train_step, make_batch=jax.jit(make_batch), steps=5,
            workdir=tmp_path / "b", config={}, host_batches=True, quiet=True)
    np.testing.assert_allclose(np.asarray(a.state["w"]), np.asarray(b.state["w"]), rtol=1e-6)

    pool = {"x": jax.random.normal(jax.random.key(1), (64, 3))}

    def from_pool(key, step, data):  # sample rows of a fixed dataset
        x = data["x"][jax.random.randint(key, (8,), 0, 64)]
        return {"x": x, "y": x @ jnp.arange(1.0, 4.0)}

    c = fit(init_state=init_state, train_step=train_step, make_batch=from_pool, steps=5,
            workdir=tmp_path / "c", config={}, data=pool, quiet=True)
    assert np.all(np.isfinite(np.asarray(c.state["w"])))

    # Batch axis second (e.g. a GAN's (n_critic, B, ...) stack): same data, same result as `a`.
    from jax.sharding import PartitionSpec as P
    stacked = fit(init_state=init_state, train_step=lambda st, b, k: train_step(st, jax.tree.map(lambda v: v[0], b), k),
                  make_batch=lambda k, i: jax.tree.map(lambda v: v[None], make_batch(k, i)), steps=5,
                  workdir=tmp_path / "d", config={}, batch_spec=P(None, "data"), quiet=True)
    np.testing.assert_allclose(np.asarray(stacked.state["w"]), np.asarray(a.state["w"]), rtol=1e-6)


# ---- subprocess runs of the toy trainer: 1 vs 4 devices, SIGKILL + resume, multi-process -------------

def _env(cache: Path, devices: int = 1) -> dict:
    """CPU, `devices` forced host devices, a shared compilation cache and quick (-O0) XLA codegen
    (halves compile time; every compared run uses the same flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONPATH=str(REPO),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0")
    return env


def _toy_cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", RUNNER, "toy", "--config", f"{TOY}:tiny", "--workdir", str(workdir),
            "-q", *extra]


def _run(cmd, env, timeout=300) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _weights(workdir: Path) -> dict[str, np.ndarray]:
    with np.load(workdir / "toy.npz") as f:
        return {k: f[k] for k in f.files if k != "__meta__"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir):
    """The uninterrupted 1-device toy run (20 steps) every comparison is made against."""
    workdir = tmp_path_factory.mktemp("ref")
    out = _run(_toy_cmd(workdir), _env(cache_dir, 1))
    return workdir, json.loads(out.stdout.strip().splitlines()[-1])


def test_same_params_on_one_and_four_devices(reference_run, cache_dir, tmp_path):
    ref_dir, ref = reference_run
    assert ref["steps_run"] == 20 and ref["resumed_from"] is None
    _run(_toy_cmd(tmp_path), _env(cache_dir, 4))
    a, b = _weights(ref_dir), _weights(tmp_path)
    assert a.keys() == b.keys() and len(a) >= 6  # conv/bn params and batch stats
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_sigkill_then_resume_matches_uninterrupted(reference_run, cache_dir, tmp_path):
    ref_dir, _ = reference_run
    cmd = _toy_cmd(tmp_path, "--step-delay", "0.15")
    cmd.remove("-q")  # the resumed run must say that it resumed
    env = _env(cache_dir, 1)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    ckpt = tmp_path / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "toy.npz").exists()
    out = _run(cmd, env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "resuming from checkpoint at step" in out.stderr
    assert 5 <= result["resumed_from"] < 20 and result["steps_run"] == 20 - result["resumed_from"]
    a, b = _weights(ref_dir), _weights(tmp_path)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == [5, 10, 15, 20]  # no duplicates from the killed run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(reference_run, cache_dir, tmp_path):
    ref_dir, _ = reference_run
    port = _free_port()
    procs = [subprocess.Popen(
        _toy_cmd(tmp_path, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                 "--process-id", str(i)),
        env=_env(cache_dir, 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert json.loads(outs[0][0].strip().splitlines()[-1])["steps_run"] == 20
    a, b = _weights(ref_dir), _weights(tmp_path)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_end_to_end(reference_run, capsys):
    """`jaxdn.train.cli.main` (run in a subprocess by `reference_run`): files, metrics, BatchNorm."""
    ref_dir, result = reference_run
    assert result["steps_run"] == 20 and np.isfinite(result["loss"]) and "eval_mse" not in result
    for name in ("toy.npz", "loss.png", "metrics.jsonl", "config.json"):
        assert (ref_dir / name).is_file(), name
    assert json.loads((ref_dir / "config.json").read_text())["steps"] == 20
    records = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]
    w = _weights(ref_dir)
    # BatchNorm statistics (non-param state) were updated by the step: init is mean 0, var 1.
    assert np.abs(w["norm/mean"]).max() > 1e-3 and np.abs(w["norm/var"] - 1).max() > 1e-3
    # Same workdir, different config: refused with exit code 2 and one line, before any work.
    from jaxdn.train.cli import main
    rc = main(["toy", "--config", f"{TOY}:tiny", "--workdir", str(ref_dir), "-q", "--set", "optim.lr=0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "different config" in err and "optim.lr" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["nonsense", "--workdir", "w"], "unknown trainer method 'nonsense'"),
    (["toy", "--workdir", "w", "--bogus", "1"], "unknown options --bogus"),
    (["toy", "--workdir", "w", "--config", "configs/none.py"], "config file not found"),
    (["toy", "--workdir", "w", "--set", "nope=1"], "unknown config key 'nope'"),
])
def test_cli_refusals(argv, message, capsys, tmp_path, monkeypatch):
    from jaxdn.train.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_module(capsys, monkeypatch):
    from jaxdn.train import cli
    monkeypatch.setitem(cli.TRAINERS, "ghost", "jaxdn.train.ghost_trainer:train")
    assert cli.main(["ghost", "--workdir", "w"]) == 2
    assert "not implemented" in capsys.readouterr().err


def test_evaluate_cli_dispatch(capsys, monkeypatch, tmp_path):
    from jaxdn import evaluate
    monkeypatch.setitem(evaluate.EVALUATORS, "ghost", "jaxdn.ghost_eval:evaluate")
    assert evaluate.main(["ghost"]) == 2 and "not implemented" in capsys.readouterr().err
    assert evaluate.main(["nonsense"]) == 2 and "unknown evaluator method" in capsys.readouterr().err
    calls = {}

    def fake(*, method, weights=None, data=None, outdir, quick=False, seed=0, quiet=False, report=False):
        calls.update(method=method, outdir=outdir, quick=quick, seed=seed, report=report)
        return {"psnr": 30.0}

    import types
    module = types.ModuleType("jaxdn_fake_eval")
    module.evaluate = fake
    monkeypatch.setitem(sys.modules, "jaxdn_fake_eval", module)
    monkeypatch.setitem(evaluate.EVALUATORS, "fake", "jaxdn_fake_eval:evaluate")
    assert evaluate.main(["fake", "-o", str(tmp_path), "--quick", "--seed", "3", "--report"]) == 0
    assert calls == {"method": "fake", "outdir": tmp_path, "quick": True, "seed": 3, "report": True}
    assert json.loads(capsys.readouterr().out)["psnr"] == 30.0


def test_interrupt_saves_checkpoint_and_bad_batch_refused(tmp_path):
    from jaxdn.train.loop import fit
    init_state, make_batch, train_step, _, _ = _linreg()

    def stop_at_7(step, state):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(init_state=init_state, train_step=train_step, make_batch=make_batch, steps=20,
            workdir=tmp_path, config={}, checkpoint_every=5, hooks=[stop_at_7], quiet=True)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()} == {"5", "7"}
    res = fit(init_state=init_state, train_step=train_step, make_batch=make_batch, steps=9,
              workdir=tmp_path, config={}, quiet=True)
    assert res.resumed_from == 7 and res.steps_run == 2

    import jax
    from jaxdn import sharding as shd

    class FakeMesh:  # a 3-device 'data' axis, only for the divisibility check
        shape = {"data": 3}

    from jaxdn.train.loop import _check_batch
    with pytest.raises(InputError, match="global batch size 8 .* not divisible by the 3 devices"):
        _check_batch(jax.eval_shape(make_batch, jax.random.key(0), 0), FakeMesh(), None)
    _check_batch(jax.eval_shape(make_batch, jax.random.key(0), 0), shd.data_mesh(), None)
