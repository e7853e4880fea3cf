"""Step timing shared by the train-step benchmarks (`train_steps.py`, `torch_reference.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_windows(step: Callable[[], object], sync: Callable[[], object], steps: int,
                 windows: int, warmup: int = 2) -> list[float]:  # fmt: skip
    """Seconds per step in each of `windows` windows of `steps` steps, after `warmup` steps.

    Two warm-up steps by default: the first call sees the inputs as placed, the second the
    step's own outputs, and each may compile (JAX) or pick kernels (cuDNN). `sync` waits for
    the device.
    """
    for _ in range(warmup):
        step()
    sync()
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out.append((time.perf_counter() - t0) / steps)
    return out


def jax_step_runner(pstep, state, batch, rng, consts):
    """(run, sync) for a dispatched `(state, batch, rng, consts) -> (state, metrics)` step.

    The state is donated, so each step's output state feeds the next; the batch stays where it
    is (see `on_devices`). JAX is imported here so PyTorch-only workers never load it.
    """
    import jax

    carry = [state, None]

    def run():
        carry[:] = pstep(carry[0], batch, rng, consts)

    return run, lambda: jax.block_until_ready(carry[1])


def time_jax_step(pstep, state, batch, rng, consts, steps: int, windows: int = 1) -> list[float]:
    """`time_windows` of a dispatched step (see `jax_step_runner`)."""
    return time_windows(*jax_step_runner(pstep, state, batch, rng, consts), steps, windows)


def on_devices(dp, batch):
    """A dispatch-ready batch placed on the local devices once (as PyTorch's tensors are), so
    the timing is of the step, not the host-to-device copy."""
    import jax

    return jax.pmap(lambda x: x)(batch) if dp.mode == "pmap" else batch  # shard_map: placed
