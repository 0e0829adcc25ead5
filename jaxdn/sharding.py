"""Device meshes and shardings: the only module in jaxdn that builds them.

Data parallelism is a 1-axis mesh named ``'data'`` over every device (of every process): the
leading (batch) axis of an array is split over it, model and optimizer state are replicated.
Everything goes through `jax.jit` with `NamedSharding`s; there is no `pmap`. The one per-device
code path is `per_batch_shard`, for hand-written kernels that flatten the batch into rows (GSPMD
cannot split those by itself); it needs the mesh in context (`calls_in_mesh`). With one device
(the usual CPU case) every function here is a cheap no-op wrapper.

Multi-host: call `maybe_initialize_distributed()` first (flags or the standard environment
variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). Then
`data_mesh()` spans the devices of all processes, `process_share` splits files or frames between
processes, and `shard_batch` / `global_batch_from_local` build global arrays.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .errors import InputError

DATA_AXIS = "data"

_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"


def data_mesh(devices: Sequence[Any] | None = None):
    """A 1-axis ``'data'`` mesh over `devices` (default: all devices of all processes).

    Args:
      devices: explicit device list, e.g. ``jax.local_devices()[:1]`` for single-device work.
    Returns:
      `jax.sharding.Mesh` of shape ``(len(devices),)`` with an `AxisType.Auto` axis.
    """
    import jax
    from jax.sharding import AxisType
    if devices is None:
        devices = jax.devices()
    devices = list(devices)
    if not devices:
        raise InputError("data_mesh: no devices given")
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def calls_in_mesh(fn, mesh):
    """`fn` wrapped to run with `mesh` as JAX's context mesh (``jax.set_mesh``), so that
    `per_batch_shard` inside the functions it traces sees the mesh. Wrap jitted callables."""
    import functools
    import jax

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)
    return call


def batch_shards(n: int) -> int:
    """How many pieces `per_batch_shard` splits a batch of `n` rows into: the size of the context
    mesh's ``'data'`` axis (automatic sharding only) when it divides `n`, else 1."""
    import jax
    from jax.sharding import AxisType
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return 1
    if dict(zip(mesh.axis_names, mesh.axis_types))[DATA_AXIS] != AxisType.Auto:
        return 1  # already inside a shard_map over 'data' (or explicit sharding): leave it
    d = int(mesh.shape[DATA_AXIS])
    return d if d > 1 and n % d == 0 else 1


def per_batch_shard(fn, *args, batched: int = 1, summed: bool = False):
    """``fn(*args)`` computed by each device on its own rows of the batch.

    For kernels that flatten (N, H, W, C) into N·H·W rows and loop over blocks of them: GSPMD
    cannot keep such a loop split over the batch, so it gathers the whole batch on every device and
    each computes the whole layer. Under a context mesh (`calls_in_mesh`) whose ``'data'`` axis
    splits N (`batch_shards`), this runs `fn` in a ``shard_map`` on each device's N/d rows instead.

    Args:
      fn: pure function of arrays; the first `batched` args have the batch on axis 0, the rest are
        replicated (e.g. weights).
      summed: `fn` returns a sum over the batch (e.g. a filter gradient): the per-device results
        are added (``psum``) and the total is replicated. Otherwise its output has the batch on
        axis 0 and stays split.
    Returns:
      ``fn(*args)``, to float reassociation when `summed`.
    """
    import jax
    from jax.sharding import PartitionSpec as P
    if batch_shards(args[0].shape[0]) == 1:
        return fn(*args)

    def local(*local_args):
        out = fn(*local_args)
        return jax.lax.psum(out, DATA_AXIS) if summed else out

    specs = tuple(P(DATA_AXIS) if i < batched else P() for i in range(len(args)))
    return jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(), in_specs=specs,
                         out_specs=P() if summed else P(DATA_AXIS), check_vma=False)(*args)


def batch_sharding(mesh, *, spec=None):
    """`NamedSharding` splitting the leading axis over ``'data'`` (or `spec`, a `PartitionSpec`)."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    return NamedSharding(mesh, P(DATA_AXIS) if spec is None else spec)


def replicated(mesh):
    """`NamedSharding` that keeps a full copy on every device of `mesh`."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    return NamedSharding(mesh, P())


def mesh_size(mesh) -> int:
    """Number of devices along the ``'data'`` axis."""
    return int(mesh.shape[DATA_AXIS])


def padded_size(n: int, mesh) -> int:
    """Smallest multiple of the mesh size that is >= `n` (batch size after `shard_batch(pad=True)`)."""
    d = mesh_size(mesh)
    return -(-int(n) // d) * d


def _is_local(mesh) -> bool:
    """True when every device of `mesh` belongs to this process (plain `device_put` works)."""
    import jax
    me = jax.process_index()
    return all(d.process_index == me for d in mesh.devices.flat)


def _pad_leading(x: np.ndarray, target: int) -> np.ndarray:
    if x.shape[0] == target:
        return x
    reps = np.repeat(x[-1:], target - x.shape[0], axis=0)  # edge padding: finite, same dtype
    return np.concatenate([x, reps], axis=0)


def shard_batch(tree, mesh, *, pad: bool = False, spec=None):
    """Place a global batch (a pytree of arrays with the batch on axis 0) split over ``'data'``.

    With a mesh of this process's devices (e.g. ``data_mesh(jax.local_devices())``) this is a
    plain `device_put`. With a mesh spanning several processes, every process must pass the same
    full global batch (host NumPy); each process keeps only the rows of its own devices. When the batch size is not a multiple of the mesh size,
    `pad=False` raises `InputError`; `pad=True` repeats the last row up to `padded_size(n, mesh)` —
    the caller crops the result back to ``n`` rows.

    Args:
      tree: pytree of arrays, each (B, ...).
      mesh: a `data_mesh()`.
      pad: pad instead of refusing a batch size that the mesh does not divide.
      spec: optional `PartitionSpec` overriding ``P('data')``.
    Returns:
      The same pytree of global `jax.Array`s sharded over the mesh.
    """
    import jax
    sharding = batch_sharding(mesh, spec=spec)
    d = mesh_size(mesh)
    local = _is_local(mesh)

    def put(x):
        if isinstance(x, jax.Array) and local and x.ndim and x.shape[0] % d == 0:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        if x.ndim == 0:
            raise InputError("shard_batch: every array needs a leading batch axis")
        if x.shape[0] % d:
            if not pad:
                raise InputError(
                    f"batch size {x.shape[0]} is not divisible by the {d} devices of the mesh; "
                    f"use a multiple of {d} (or pad=True)")
            x = _pad_leading(x, padded_size(x.shape[0], mesh))
        if local:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def replicate(tree, mesh):
    """Copy every array leaf of `tree` onto all devices of `mesh` (replicated sharding)."""
    import jax
    sharding = replicated(mesh)
    if _is_local(mesh):
        return jax.device_put(tree, sharding)

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x if x.sharding == sharding else jax.jit(lambda a: a, out_shardings=sharding)(x)
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = put(jax.random.key_data(x))
            return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl), out_shardings=sharding)(data)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def local_copy(tree):
    """Replicated global arrays -> arrays on this process's first local device (for host-side work).

    Under multi-process training a replicated `jax.Array` spans devices of other processes and
    cannot be read with `np.asarray`; its local shard holds the full value.
    """
    import jax

    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable and len(x.sharding.device_set) == 1:
            return x
        shard = x.addressable_shards[0]
        if shard.data.shape != x.shape:
            raise InputError("local_copy expects replicated arrays; got a sharded one")
        return shard.data

    return jax.tree.map(one, tree)


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Call `jax.distributed.initialize` when a multi-process run is requested.

    A run is multi-process when `coordinator` (``'host:port'``) is given or the environment sets
    ``JAX_COORDINATOR_ADDRESS``; process count and id come from the arguments or
    ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``. Must run before any other JAX call. Calling it
    twice is harmless.

    Returns:
      True when this process is now part of a multi-process run.
    """
    import jax
    coordinator = coordinator or os.environ.get(_ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(_ENV_NUM_PROCESSES):
        num_processes = int(os.environ[_ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(_ENV_PROCESS_ID):
        process_id = int(os.environ[_ENV_PROCESS_ID])
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise InputError("multi-process run needs a coordinator address "
                             f"(--coordinator HOST:PORT or {_ENV_COORDINATOR})")
        return False
    if num_processes is None or process_id is None:
        raise InputError("multi-process run needs both the number of processes and this process's id "
                         f"(flags or {_ENV_NUM_PROCESSES} / {_ENV_PROCESS_ID})")
    if not 0 <= process_id < num_processes:
        raise InputError(f"process id {process_id} is outside 0..{num_processes - 1}")
    from jax._src import distributed as _dist  # only to make a second call a no-op
    if getattr(_dist.global_state, "client", None) is not None:
        return jax.process_count() > 1
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return jax.process_count() > 1


def process_share(items: Sequence[Any], process_index: int | None = None,
                  process_count: int | None = None) -> list:
    """This process's contiguous share of `items` (files, frame indices), balanced to within one.

    Args:
      items: any sequence; the order is kept.
      process_index, process_count: default `jax.process_index()` / `jax.process_count()`.
    Returns:
      ``items[start:stop]`` for this process; the shares of all processes concatenate to `items`.
    """
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise InputError(f"process index {process_index} outside 0..{process_count - 1}")
    n = len(items)
    start = (n * process_index) // process_count
    stop = (n * (process_index + 1)) // process_count
    return list(items[start:stop])


def local_batch_size(global_batch: int, mesh) -> int:
    """Rows of a global batch held by this process (for `global_batch_from_local`)."""
    import jax
    d = mesh_size(mesh)
    if global_batch % d:
        raise InputError(f"global batch {global_batch} is not divisible by the {d} devices of the mesh")
    local_devices = sum(1 for dev in mesh.devices.flat if dev.process_index == jax.process_index())
    return global_batch // d * local_devices


def global_batch_from_local(tree, mesh, *, spec=None):
    """Assemble global arrays from each process's local rows (`jax.make_array_from_process_local_data`).

    Each process passes its own share, ``local_batch_size(global_batch, mesh)`` rows per leaf; the
    global array concatenates the shares in process order. With one process this equals
    `shard_batch`.
    """
    import jax
    sharding = batch_sharding(mesh, spec=spec)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
