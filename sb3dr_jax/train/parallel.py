"""Data parallelism: one per-device step function under `jax.pmap` or `jax.shard_map`.

Both dispatchers see the per-device view: a batch slice [b, ...] and a replicated state, with
collectives over the axis named "data". The host pipeline delivers [D, b, ...] per process;
`shard` turns it into what the dispatcher takes (the leading device axis for pmap, a global
array sharded over a `Mesh(('data',))` for shard_map; across hosts too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sb3dr_jax.train.step import AXIS

MODES = ("pmap", "shard_map")


@dataclasses.dataclass
class DataParallel:
    """How arrays are placed and functions dispatched for one data-parallel mode."""

    mode: str
    mesh: Mesh

    @property
    def pmap_devices(self) -> list:
        """Every device of the mesh, on all hosts: pmap's collectives then span the hosts,
        and each process feeds its local ones (a single-process sub-mesh works too)."""
        return list(self.mesh.devices.flat)

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def replicate(self, tree):
        """Host pytree (identical on all processes) -> replicated device pytree."""
        if not jax.tree_util.tree_leaves(tree):
            return tree
        if self.mode == "pmap":
            d = len(self.mesh.local_devices)  # a sub-mesh (tests: 1 of 8 devices) works too
            # The step's axis name: the arrays then carry the sharding the step returns, so
            # the step's second call hits the first call's compilation (without it, a second
            # trace and compile of the whole step).
            return jax.pmap(lambda x: x, axis_name=AXIS, devices=self.pmap_devices)(
                jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * d), tree)
            )
        sharding = NamedSharding(self.mesh, P())
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_callback(
                np.shape(x), sharding, lambda idx, x=x: np.asarray(x)[idx]
            ),
            tree,
        )

    def unreplicate(self, tree):
        """Replicated device pytree -> host numpy pytree (this process's copy)."""
        # pmap shards keep a leading axis of 1; shard_map replicas are the whole array.
        drop = (lambda a: a[0]) if self.mode == "pmap" else (lambda a: a)
        return jax.tree_util.tree_map(lambda x: drop(np.asarray(x.addressable_data(0))), tree)

    def shard(self, batch):
        """Host batch [D, b, ...] -> what the dispatched function takes."""
        if self.mode == "pmap":
            return batch
        sharding = NamedSharding(self.mesh, P(AXIS))
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(
                sharding, np.reshape(x, (-1,) + x.shape[2:])
            ),
            batch,
        )

    def gather_outputs(self, tree):
        """Per-device outputs of `map_fn` -> this process's numpy rows [D * b, ...]."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(
                lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree
            )
        return jax.tree_util.tree_map(
            lambda x: np.concatenate([np.asarray(s.data) for s in x.addressable_shards]), tree
        )

    def step(self, fn: Callable, *, donate: bool = True) -> Callable:
        """Dispatches `fn(state, batch, rng, consts) -> (state, metrics)` over devices.

        State, rng and consts are replicated; the batch is split. The state is donated.
        """
        if self.mode == "pmap":
            return jax.pmap(
                fn,
                axis_name=AXIS,
                in_axes=(0, 0, None, 0),
                donate_argnums=(0,) if donate else (),
                devices=self.pmap_devices,
            )
        body = jax.shard_map(
            fn,
            mesh=self.mesh,
            in_specs=(P(), P(AXIS), P(), P()),
            out_specs=(P(), P()),
            check_vma=False,
        )
        return jax.jit(body, donate_argnums=(0,) if donate else ())

    def map_fn(self, fn: Callable) -> Callable:
        """Dispatches a per-device `fn(replicated, batch) -> outputs [b, ...]` (evaluation)."""
        if self.mode == "pmap":
            return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0), devices=self.pmap_devices)
        return jax.jit(
            jax.shard_map(
                fn, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS), check_vma=False
            )
        )

    def first(self, metrics) -> dict[str, Any]:
        """Replicated metrics -> host floats."""
        if self.mode == "pmap":
            metrics = jax.tree_util.tree_map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}


def data_parallel(mode: str = "pmap", devices=None) -> DataParallel:
    """The data-parallel setup over all devices of all processes.

    Args:
      mode: "pmap" or "shard_map".
      devices: the devices to use (default: `jax.devices()`; tests pass a subset).

    Returns:
      The `DataParallel` helper.
    """
    if mode not in MODES:
        raise ValueError(f"parallel: unknown {mode!r}; choose from {MODES}")
    devices = jax.devices() if devices is None else list(devices)
    return DataParallel(mode, Mesh(np.asarray(devices), (AXIS,)))
