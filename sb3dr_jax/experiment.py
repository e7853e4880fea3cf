"""What `build(config, ...)` returns for every trainer: no disk, no dataset.

`run()` is data -> `build` -> `fit` -> export; tests and `benchmarks/` call the same `build()`
and never assemble a step of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sb3dr_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A built trainer.

    Attributes:
      model: the network trained (a flax module; for two-encoder methods, the joint module).
      state: the initial host `TrainState` (params, optimiser state, the method's extras).
      step: the per-device step `(state, batch, rng, consts) -> (state, metrics)`, to be wrapped
        by `sb3dr_jax.train.parallel` (pmap or shard_map).
      consts: frozen, non-donated inputs of the step (a teacher table, centres), host arrays.
      info: small JSON-able facts for the run's log (sizes, method names).
    """

    model: Any
    state: TrainState
    step: Callable
    consts: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)

    def fit_args(self) -> dict:
        """The keyword arguments `train.fit` takes from a built trainer: `state`, `step_fn`,
        `consts` (the run adds its config, workdir, devices, batches and step count)."""
        return {"state": self.state, "step_fn": self.step, "consts": self.consts}
