"""The training loop shared by the teacher, the student and the baselines.

`fit` runs a step function built by `make_step` over a batch iterator with: automatic resume
from the newest orbax checkpoint in the workdir, periodic checkpoints (keep N), metric writers
(TensorBoard via clu, plus `metrics.jsonl`, process 0 only), a progress bar, periodic
evaluation, and a NaN/Inf guard that stops with a clear message and never saves a
non-finite state (the last good checkpoint stays).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from sb3dr_jax.train.parallel import DataParallel


class NonFiniteError(FloatingPointError):
    """A metric or the parameters became NaN/Inf; the run stopped."""


def save_config(config, workdir: str) -> None:
    """Writes the resolved config as `<workdir>/config.json` (process 0 only)."""
    if jax.process_index() == 0:
        pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str):
    """Reads `<workdir>/config.json` back as a ConfigDict."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no config.json; is this a workdir of a finished run?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def checkpoint_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
    """The orbax manager of `<workdir>/checkpoints`."""
    path = os.path.abspath(os.path.join(workdir, "checkpoints"))
    return ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    )


def restore_latest(mngr: ocp.CheckpointManager, template):
    """Restores the newest checkpoint into the structure of `template` (host numpy pytree).

    Returns:
      (state, step) or (template, None) when there is no checkpoint.
    """
    step = mngr.latest_step()
    if step is None:
        return template, None
    target = flax.serialization.to_state_dict(template)
    restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
    return flax.serialization.from_state_dict(template, restored), step


def _all_finite(tree) -> bool:
    return all(
        np.all(np.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.floating)
    )


class _JsonlWriter:
    def __init__(self, path: str | None):
        self._f = open(path, "a") if path else None  # noqa: SIM115 - closed in close()

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._f:
            self._f.write(json.dumps({"step": step, **scalars}) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()


def fit(
    *,
    config,
    workdir: str,
    dp: DataParallel,
    state,
    step_fn: Callable,
    batches: Iterator[dict[str, np.ndarray]],
    consts: Any,
    total_steps: int,
    eval_fn: Callable[[Any, int], dict[str, float]] | None = None,
    prefix: str = "train",
):
    """Trains until `total_steps`, resuming from the workdir when possible.

    Args:
      config: the run config (`seed`, `log_every`, `ckpt_every`, `keep_ckpts`, `eval_every`).
      workdir: where checkpoints and metrics go.
      dp: the data-parallel setup.
      state: the initial host `TrainState` (numpy, identical on every process).
      step_fn: per-device step from `make_step`.
      batches: host batches [D, b, ...]; on resume, the batches of finished steps are skipped
        so a resumed run sees exactly the data an uninterrupted one would.
      consts: frozen host data for the step (replicated once, not donated).
      total_steps: stop after this many steps.
      eval_fn: `eval_fn(device_state, step) -> {name: value}` (names are prefixed `eval/`).
      prefix: metric name prefix for train metrics.

    Returns:
      The final host state.

    Raises:
      NonFiniteError: a metric or the parameters became non-finite.
    """
    lead = jax.process_index() == 0
    mngr = checkpoint_manager(workdir, int(config.keep_ckpts))
    state, start = restore_latest(mngr, state)
    start = int(start or 0)
    if start and lead:
        print(f"[train] resumed from {mngr.directory} at step {start}", flush=True)
    for _ in range(start):  # fast-forward the data so resume == uninterrupted
        next(batches)
    writer = _metric_writer(workdir, just_logging=not lead)
    jsonl = _JsonlWriter(os.path.join(workdir, "metrics.jsonl") if lead else None)
    pstep = dp.step(step_fn)
    dstate, dconsts = dp.replicate(state), dp.replicate(consts)
    rng = jax.random.key(int(config.seed))
    log_every, ckpt_every = int(config.log_every), int(config.ckpt_every)
    eval_every = int(config.get("eval_every", 0) or 0)
    bar = tqdm(total=total_steps, initial=start, disable=not lead, desc=prefix, dynamic_ncols=True)
    last_good = mngr.latest_step()
    t0, metrics = time.perf_counter(), None
    try:
        for step in range(start, total_steps):
            dstate, metrics = pstep(dstate, dp.shard(next(batches)), rng, dconsts)
            done = step + 1
            bar.update(1)
            is_last = done == total_steps
            if done % log_every == 0 or is_last or done % ckpt_every == 0:
                scalars = dp.first(metrics)
                if not all(math.isfinite(v) for v in scalars.values()):
                    bad = [k for k, v in scalars.items() if not math.isfinite(v)]
                    bad.sort(key=lambda k: k != "loss")  # name the loss first when it is bad
                    raise NonFiniteError(
                        f"non-finite {prefix}/{bad[0]} at step {done}: stopping. The last good "
                        f"checkpoint is step {last_good} in {mngr.directory} (not overwritten)."
                    )
                scalars = {f"{prefix}/{k}": v for k, v in scalars.items()}
                scalars[f"{prefix}/steps_per_s"] = (done - start) / max(
                    time.perf_counter() - t0, 1e-9
                )
                writer.write_scalars(done, scalars)
                jsonl.write(done, scalars)
                bar.set_postfix(loss=f"{scalars[f'{prefix}/loss']:.4f}")
            if eval_fn is not None and eval_every and (done % eval_every == 0 or is_last):
                ev = {
                    k if k.startswith("eval/") else f"eval/{k}": v
                    for k, v in eval_fn(dstate, done).items()
                }
                writer.write_scalars(done, ev)
                jsonl.write(done, ev)
                if lead:
                    tqdm.write(
                        f"[eval] step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in ev.items())
                    )
            if done % ckpt_every == 0 or is_last:
                host = dp.unreplicate(dstate)
                if not _all_finite(host.params):
                    raise NonFiniteError(
                        f"non-finite parameters at step {done}: stopping. The last good checkpoint "
                        f"is step {last_good} in {mngr.directory} (not overwritten)."
                    )
                mngr.save(done, args=ocp.args.StandardSave(flax.serialization.to_state_dict(host)))
                mngr.wait_until_finished()
                last_good = done
    finally:
        bar.close()
        writer.flush()
        jsonl.close()
        mngr.close()
    return dp.unreplicate(dstate)


def _metric_writer(workdir: str, *, just_logging: bool):
    """clu's TensorBoard + logging writer.

    Imported here, not at the top: clu loads TensorFlow, and the step machinery (`make_step`,
    the data-parallel dispatch, the models) must import without it, so hosts that only time
    steps (an accelerator machine with JAX and PyTorch but no TensorFlow) can run them.
    """
    from clu import metric_writers

    return metric_writers.create_default_writer(
        workdir, just_logging=just_logging, asynchronous=False
    )


def write_metrics(workdir: str, step: int, scalars: dict[str, float]) -> None:
    """Appends scalars (e.g. a final evaluation) to the run's TensorBoard and JSONL logs."""
    if jax.process_index() != 0:
        return
    writer = _metric_writer(workdir, just_logging=False)
    writer.write_scalars(step, scalars)
    writer.close()
    jsonl = _JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    jsonl.write(step, scalars)
    jsonl.close()
