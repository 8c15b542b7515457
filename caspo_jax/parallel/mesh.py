"""The device mesh ('data', 'fsdp', 'tensor'), logical-axis rules, and placing pytrees on it.

Params and activations name their axes logically ('batch', 'embed', 'heads', ...); `LOGICAL_RULES`
maps those names to mesh axes. A mesh axis is dropped from a dimension it does not divide (e.g. 2 KV
heads on an 8-way tensor axis are replicated), so any mesh shape works for any model and the user
only ever loses efficiency, never correctness. Multi-host jobs call `initialize_distributed` first.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from caspo_jax.config import MeshConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
)


def initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when this looks like a multi-process job.

    Must run before anything touches devices or Orbax. CASPO_JAX_DISTRIBUTED=1 (set by launch/tpu_pod.sh)
    asks for it and lets JAX detect the cluster (Cloud TPU VMs, SLURM, Open MPI, GKE); elsewhere set
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID on every
    process.
    """
    if jax.distributed.is_initialized():
        return
    on_tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
    asked = os.environ.get("CASPO_JAX_DISTRIBUTED", "0") == "1"
    if on_tpu_pod or asked or "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize(**_process_settings())


def _process_settings() -> dict[str, int]:
    """num_processes and process_id from JAX_NUM_PROCESSES / JAX_PROCESS_ID (JAX reads only the address)."""
    settings = {}
    for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if name in os.environ:
            try:
                settings[key] = int(os.environ[name])
            except ValueError:
                raise ValueError(f"environment variable {name}: expected an integer, got {os.environ[name]!r}") from None
    return settings


def sync(name: str) -> None:
    """Waits until every process reaches this point (a no-op in a single-process run).

    Use after process 0 writes a file that the others read next: they must not look before it exists.
    """
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolves one -1 axis to the remaining devices and checks the product."""
    sizes = [config.data, config.fsdp, config.tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {config}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise ValueError(f"mesh {config} does not fit {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {tuple(sizes)} needs {math.prod(sizes)} devices, have {num_devices}")
    return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `jax.sharding.Mesh` over all (or the given) devices with axes ('data', 'fsdp', 'tensor')."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(config, len(devices))
    try:  # a topology-aware layout (ICI neighbours on TPU) where JAX knows one for this shape
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError) as e:
        log.warning("mesh %s: no topology-aware layout (%s); using devices in enumeration order", shape, e)
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=LOGICAL_RULES
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec, keeping only mesh axes (>1) that divide the dim."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        targets = table.get(name) if name is not None else None
        targets = (targets,) if isinstance(targets, str) else tuple(targets or ())
        kept = []
        for axis in targets:
            size = mesh.shape[axis]
            if size > 1 and axis not in used and dim % (math.prod(mesh.shape[a] for a in kept) * size) == 0:
                kept.append(axis)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def shardings_for(logical_tree: Any, shape_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree, from matching trees of logical-axis tuples and shapes."""

    def one(axes, leaf):
        return NamedSharding(mesh, logical_to_spec(axes, leaf.shape, mesh))

    return jax.tree.map(one, logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Leading dimension over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def to_host(x: jax.Array) -> np.ndarray:
    """The full array as numpy on every process (gathered when other processes hold parts of it)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def shard(tree: Any, shardings: Any) -> Any:
    """Places a pytree of host or device arrays on the given shardings."""
    return jax.tree.map(jax.device_put, tree, shardings)
