"""Mesh construction, the logical-axis rules table, and batch / state shardings.

The mesh has three axes:

    data    pure data parallelism (parameters replicated)
    fsdp    data parallelism with parameters and optimizer state sharded over it (ZeRO-3)
    tensor  tensor (model) parallelism over heads, kv heads, mlp and vocab

Every parameter carries `logical_axes` (vocab, embed, heads, kv_heads, head_dim, mlp, layers);
RULES maps each logical name to a mesh axis, and batches shard their leading axis over
(data, fsdp). A dimension that its mesh axis does not divide (e.g. 3 kv heads on tensor=2) is
replicated instead, so any model runs on any mesh; `spec_for` never uses one mesh axis twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# The one rules table: logical axis name -> mesh axis (or axes, or None: replicated).
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "length": None,
    "lora_rank": None,  # LoRA adapters' rank axis (cotjax.lora): small, replicated
}


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes from a config's `mesh` section; one entry may be -1 (the rest)."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: each must be >= 1, "
                         "and at most one may be -1 (all remaining devices)")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                             f"divisible by {fixed}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def optional_mesh(mesh_cfg) -> Mesh | None:
    """The config's mesh over all devices, or None on one device (where a mesh only adds
    sharding annotations that change nothing)."""
    return make_mesh(mesh_cfg) if jax.device_count() > 1 else None


def axis_size(mesh: Mesh, axes) -> int:
    """Devices along a mesh axis name, or a tuple of names together (1 for None)."""
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def spec_for(logical_axes: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh,
             rules: dict = RULES) -> P:
    """PartitionSpec of an array with these logical axes (and shape, to check divisibility)."""
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical_axes):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no entry in the sharding rules "
                           f"({sorted(rules)})")
        axes = rules.get(name) if name is not None else None
        if axes is not None:
            tup = (axes,) if isinstance(axes, str) else tuple(axes)
            tup = tuple(a for a in tup if a not in used and mesh.shape.get(a, 1) > 1)
            size = axis_size(mesh, tup) if tup else 1
            if not tup or (shape is not None and shape[i] % size):
                axes = None
            else:
                used.update(tup)
                axes = tup[0] if len(tup) == 1 else tup
        out.append(axes)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def host_array(x) -> np.ndarray:
    """A numpy copy of an array, gathered from every process when it is sharded across hosts
    (each process then holds the whole array: for hashing and exporting, not for training)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def logical_sharding(mesh: Mesh, rules: dict = RULES):
    """`fn(logical_axes, shape=None) -> NamedSharding` (what `weights.load_model` takes)."""
    def fn(logical_axes, shape=None):
        return NamedSharding(mesh, spec_for(logical_axes, shape, mesh, rules))
    return fn


def param_shardings(abstract_params, logical_axes, mesh: Mesh, rules: dict = RULES):
    """NamedShardings for a params pytree, from a matching pytree of logical-axis tuples."""
    return jax.tree.map(
        lambda x, axes: NamedSharding(mesh, spec_for(axes, x.shape, mesh, rules)),
        abstract_params, logical_axes, is_leaf=lambda x: isinstance(x, tuple))


def batch_spec(ndim: int = 2) -> P:
    return P(RULES["batch"], *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, batch_spec(ndim))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return axis_size(mesh, RULES["batch"])


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global jax.Arrays from this process's rows of a batch (its slice of data x fsdp).

    Each process passes its own rows (the pipeline's per-process batch); the global batch is
    their concatenation in process order.
    """
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        sharding = batch_sharding(mesh, v.ndim)
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, sharding)
        else:
            out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{name}={size}" for name, size in mesh.shape.items())


# ----------------------------------------------------------------------------------------------
# Multi-host start-up.


def maybe_initialize_distributed() -> bool:
    """Join a multi-process run before JAX starts its backends; True if one was joined.

    Explicit: COTJAX_COORDINATOR=host:port, COTJAX_NUM_PROCESSES, COTJAX_PROCESS_ID (CPU
    processes use gloo collectives). Otherwise JAX's auto-detection, but only on a multi-host
    TPU slice or under SLURM / Open MPI with more than one task. A lone process does nothing.
    """
    import os

    if jax.distributed.is_initialized():
        return True
    env = os.environ
    if env.get("COTJAX_COORDINATOR"):
        missing = [k for k in ("COTJAX_NUM_PROCESSES", "COTJAX_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"COTJAX_COORDINATOR is set but {', '.join(missing)} is not")
        if env.get("JAX_PLATFORMS", "").startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=env["COTJAX_COORDINATOR"],
                                   num_processes=int(env["COTJAX_NUM_PROCESSES"]),
                                   process_id=int(env["COTJAX_PROCESS_ID"]))
        return True
    tpu_hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    multi_tpu = len([h for h in tpu_hosts.split(",") if h]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env
    mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
    if multi_tpu or slurm or mpi:
        jax.distributed.initialize()
        return True
    return False
