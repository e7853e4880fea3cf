"""One step factory for every method: `(state, batch, rng, consts) -> (state, metrics)`.

The caller supplies
- `loss_fn(params, state, batch, rng, consts) -> (loss, (metrics, aux))`: the method's
  forward pass and objective, per device. Terms over the global batch gather across the `data`
  axis inside it; their gradients flow back through the gather (see `gather`).
- `post_update(state, aux, consts) -> state` (optional): what happens after the optimiser
  update: the EMA target, the BCL memory, SDCLR masks. Not a second step.
`consts` holds frozen, non-donated data (a teacher feature table); it is never differentiated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from sb3dr_jax.train.state import TrainState

AXIS = "data"


def gather(x: jnp.ndarray, axis_name: str = AXIS) -> jnp.ndarray:
    """All-gathers the per-device batch into the global batch, [b, ...] -> [D * b, ...].

    Its transpose is a reduce-scatter, so a loss over the global batch computed identically on
    every device, followed by the `pmean` of gradients, gives the exact global gradient.
    """
    return jax.lax.all_gather(x, axis_name, tiled=True)


def sample_keys(rng, b: int, axis_name: str = AXIS) -> jnp.ndarray:
    """One PRNG key per local sample, keyed by its position in the GLOBAL batch.

    Randomness drawn per sample from these keys does not depend on how the global batch is
    split over devices, so 1 device and D devices compute the same step.

    Args:
      rng: the step's key (already folded with the step).
      b: per-device batch size.
      axis_name: the data-parallel axis.

    Returns:
      [b] keys.
    """
    first = jax.lax.axis_index(axis_name) * b
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(b))


def make_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    post_update: Callable | None = None,
    axis_name: str = AXIS,
) -> Callable:
    """Builds the per-device train step.

    Args:
      loss_fn: see the module docstring.
      optimizer: the optax optimiser the state was created with.
      post_update: see the module docstring.
      axis_name: the data-parallel axis.

    Returns:
      `step(state, batch, rng, consts) -> (state, metrics)`, to be wrapped by
      `sb3dr_jax.train.parallel.parallelize`.
    """

    def step(state: TrainState, batch, rng, consts):
        # A different key per step, reproducible from the run's seed. Not folded with the device:
        # losses derive per-sample keys from global positions (`sample_keys`), so the result
        # does not depend on the device count.
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, aux)), grads = grad_fn(state.params, state, batch, rng, consts)
        grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        metrics = jax.lax.pmean(metrics, axis_name)
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if post_update is not None:
            state = post_update(state, aux, consts)
        return state, metrics

    return step
