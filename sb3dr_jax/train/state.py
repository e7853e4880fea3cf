"""The train state shared by the teacher, the student and the baselines."""

from __future__ import annotations

from typing import Any

import flax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; donated to the step, so updated in place.

    Attributes:
      step: int32 scalar, optimiser steps taken.
      params: trainable parameters.
      opt_state: the optax state.
      extra: method-specific state: EMA target params, BCL loss memory and epoch
        accumulators, SDCLR masks, BatchNorm statistics... (a dict; empty when unused).
    """

    step: jnp.ndarray
    params: Any
    opt_state: Any
    extra: dict[str, Any]

    @classmethod
    def create(cls, params, optimizer, extra: dict[str, Any] | None = None) -> TrainState:
        """A fresh state at step 0."""
        return cls(jnp.zeros((), jnp.int32), params, optimizer.init(params), dict(extra or {}))
