"""jaxdn.sharding: mesh, batch split/pad, replication, process shares, distributed init flags."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxdn import sharding as shd
from jaxdn.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_data_mesh_is_one_auto_axis():
    import jax
    from jax.sharding import AxisType
    mesh = shd.data_mesh()
    assert mesh.axis_names == ("data",) and shd.mesh_size(mesh) == jax.device_count()
    assert tuple(mesh.axis_types) == (AxisType.Auto,)
    one = shd.data_mesh(jax.devices()[:1])
    assert shd.mesh_size(one) == 1
    with pytest.raises(InputError, match="no devices"):
        shd.data_mesh([])


def test_shard_replicate_local_copy_one_device():
    import jax
    mesh = shd.data_mesh(jax.devices()[:1])
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    tree = shd.shard_batch({"x": x, "y": x[:, 0]}, mesh)
    assert tree["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(tree["x"]), x)
    rep = shd.replicate({"w": x, "k": jax.random.key(3)}, mesh)
    assert rep["w"].sharding.is_fully_replicated
    assert jax.random.key_data(rep["k"]).tolist() == jax.random.key_data(jax.random.key(3)).tolist()
    np.testing.assert_array_equal(np.asarray(shd.local_copy(rep)["w"]), x)
    g = shd.global_batch_from_local(x, mesh)
    np.testing.assert_array_equal(np.asarray(g), x)
    assert shd.local_batch_size(6, mesh) == 6


def test_process_share_partitions_in_order():
    items = list(range(10))
    shares = [shd.process_share(items, i, 3) for i in range(3)]
    assert sum(shares, []) == items
    assert sorted(len(s) for s in shares) == [3, 3, 4]
    assert [shd.process_share(items[:1], i, 2) for i in range(2)] == [[], [0]] and shd.process_share([], 0, 1) == []
    assert shd.process_share(items) == items  # one process here
    with pytest.raises(InputError):
        shd.process_share(items, 2, 2)


def test_maybe_initialize_distributed_flags(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert shd.maybe_initialize_distributed() is False  # nothing requested: single process
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(InputError, match="coordinator"):
        shd.maybe_initialize_distributed()
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(InputError, match="number of processes"):
        shd.maybe_initialize_distributed()
    with pytest.raises(InputError, match="outside"):
        shd.maybe_initialize_distributed(num_processes=2, process_id=2)


_FOUR_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from jaxdn import sharding as shd
    from jaxdn.errors import InputError
    mesh = shd.data_mesh()
    assert shd.mesh_size(mesh) == 4, jax.devices()
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    a = shd.shard_batch(x, mesh)
    assert [s.data.shape for s in a.addressable_shards] == [(2, 3)] * 4
    assert {s.device for s in a.addressable_shards} == set(jax.devices())
    np.testing.assert_array_equal(np.asarray(a), x)
    f = jax.jit(lambda v: (v ** 2).sum(axis=0), out_shardings=shd.replicated(mesh))
    np.testing.assert_allclose(np.asarray(f(a)), (x ** 2).sum(axis=0), rtol=1e-6)
    try:
        shd.shard_batch(x[:6], mesh)
        raise SystemExit("no error for 6 rows on 4 devices")
    except InputError as err:
        assert "not divisible by the 4 devices" in str(err)
    p = shd.shard_batch(x[:6], mesh, pad=True)
    assert p.shape == (8, 3) and shd.padded_size(6, mesh) == 8
    np.testing.assert_array_equal(np.asarray(p)[:6], x[:6])
    np.testing.assert_array_equal(np.asarray(p)[6:], np.repeat(x[5:6], 2, axis=0))
    r = shd.replicate({"w": x}, mesh)["w"]
    assert len(r.addressable_shards) == 4 and all(s.data.shape == (8, 3) for s in r.addressable_shards)
    loc = shd.local_copy(r)
    assert len(loc.sharding.device_set) == 1
    assert shd.local_batch_size(8, mesh) == 8
    print("ok")
""")


def _run_on_four_cpu_devices(script: str) -> None:
    """Run `script` in a fresh process with 4 forced host devices; it must print "ok"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_four_forced_cpu_devices():
    _run_on_four_cpu_devices(_FOUR_DEVICES)


def test_per_batch_shard_is_the_plain_call_without_a_split_mesh():
    import jax
    import jax.numpy as jnp
    x = jnp.arange(12.0).reshape(4, 3)
    seen = []

    def fn(v, w):
        seen.append(v.shape)
        return v * w

    assert shd.batch_shards(4) == 1                                  # no context mesh
    with jax.set_mesh(shd.data_mesh(jax.devices()[:1])):
        assert shd.batch_shards(4) == 1                              # one device
        out = shd.per_batch_shard(fn, x, jnp.float32(2.0))
    assert seen == [(4, 3)]
    np.testing.assert_array_equal(np.asarray(out), 2 * np.arange(12.0).reshape(4, 3))


_PER_BATCH_SHARD = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jaxdn import sharding as shd
    mesh = shd.data_mesh()
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    seen = []

    def rows_times(v, w):
        seen.append(v.shape[0])
        return v * w

    def row_sum(v, w):
        seen.append(v.shape[0])
        return (v * w).sum(axis=0)

    def both(v, w):
        return shd.per_batch_shard(rows_times, v, w), shd.per_batch_shard(row_sum, v, w, summed=True)

    jitted = jax.jit(both, in_shardings=(shd.batch_sharding(mesh), shd.replicated(mesh)))
    assert shd.batch_shards(8) == 1                                   # outside the mesh
    y, s = shd.calls_in_mesh(jitted, mesh)(shd.shard_batch(x, mesh), np.float32(3))
    assert seen == [2, 2], seen                                       # each device: its 2 rows
    np.testing.assert_array_equal(np.asarray(y), 3 * x)
    np.testing.assert_allclose(np.asarray(s), 3 * x.sum(axis=0), rtol=1e-6)
    assert y.sharding.spec == jax.sharding.PartitionSpec("data") and s.sharding.is_fully_replicated
    with jax.set_mesh(mesh):
        assert shd.batch_shards(8) == 4 and shd.batch_shards(6) == 1  # 6 rows do not split 4 ways
        seen.clear()
        np.testing.assert_array_equal(np.asarray(jax.jit(both)(x[:6], np.float32(3))[0]), 3 * x[:6])
        assert seen == [6, 6], seen
    print("ok")
""")


def test_per_batch_shard_splits_the_batch_over_four_devices():
    _run_on_four_cpu_devices(_PER_BATCH_SHARD)
