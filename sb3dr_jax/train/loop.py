"""The training loop shared by the teacher, the student and the baselines.

`fit` runs a step function built by `make_step` over a batch iterator with: automatic resume
from the newest orbax checkpoint in the workdir, periodic checkpoints (keep N), metric writers
(TensorBoard via clu, plus `metrics.jsonl`, process 0 only), a progress bar, periodic
evaluation, and a guard that stops with a clear message and never saves a non-finite or
diverged state (the last good checkpoint stays).

Resume rewrites the logs first: records of steps after the restored checkpoint are dropped
from `metrics.jsonl` and the TensorBoard event files, so the redone steps appear once.
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


DEFAULT_MAX_ABS = 1e6  # config.max_abs_state: |param| beyond this is divergence, not learning


def state_problem(state, max_abs: float = DEFAULT_MAX_ABS) -> str | None:
    """What makes a train state unfit to save, or None.

    Every floating array of the state (params, optimiser state, extras such as the EMA
    target or the BCL memory) must be finite; params and extras must also stay within
    `max_abs` in magnitude (a huge learning rate drives them to ~1e38 while still finite).

    Args:
      state: a host `TrainState`.
      max_abs: the divergence bound (0 disables it).

    Returns:
      A message naming the first bad array, or None.
    """
    tree = flax.serialization.to_state_dict(state)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
            continue
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        if not np.isfinite(a).all():
            return f"non-finite {name}"
        top = float(np.abs(a).max())
        if max_abs and name.split("/")[0] in ("params", "extra") and top > max_abs:
            return f"diverged {name} (max |x| = {top:.3g} > config.max_abs_state = {max_abs:g})"
    return None


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
    return rows


def read_metrics(workdir: str) -> list[dict]:
    """The run's `metrics.jsonl`, one record per step (later values of a step win).

    Args:
      workdir: the run folder.

    Returns:
      [{"step": int, name: value, ...}] by step; lines cut short by a crash are skipped.
    """
    merged: dict[int, dict] = {}
    for row in _read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        if isinstance(row.get("step"), int):
            merged.setdefault(row["step"], {}).update(row)
    return [merged[k] for k in sorted(merged)]


def prune_logs(workdir: str, drop: Callable[[int, str], bool]) -> None:
    """Removes the scalars `drop(step, name)` selects from the run's logs (process 0 only).

    Rewrites `metrics.jsonl` and every TensorBoard event file in `workdir` (records of
    other steps and names are kept byte for byte). Used before logging steps again (resume)
    or a value again (a final evaluation rerun), so each (step, name) is logged once.

    Args:
      workdir: the run folder.
      drop: predicate on (step, scalar name).
    """
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        rows = []
        for row in _read_jsonl(path):
            step = row.get("step")
            kept = {k: v for k, v in row.items() if k == "step" or not drop(step, k)}
            if len(kept) > 1:
                rows.append(kept)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(path + ".tmp", path)
    for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        if name.startswith("events.out.tfevents") and not name.endswith(".tmp"):
            _prune_events(os.path.join(workdir, name), drop)


def _prune_events(path: str, drop: Callable[[int, str], bool]) -> None:
    """`prune_logs` for one TensorBoard event file (TFRecords of `Event` protos)."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    records = []
    try:
        for r in tf.data.TFRecordDataset(path):
            records.append(r.numpy())
    except tf.errors.DataLossError:
        pass  # a record cut short by a crash: drop it
    out, changed = [], False
    for raw in records:
        ev = event_pb2.Event.FromString(raw)
        if not ev.HasField("summary"):
            out.append(raw)
            continue
        keep = [v for v in ev.summary.value if not drop(int(ev.step), v.tag)]
        if len(keep) == len(ev.summary.value):
            out.append(raw)
            continue
        changed = True
        if keep:
            del ev.summary.value[:]
            ev.summary.value.extend(keep)
            out.append(ev.SerializeToString())
    if changed or len(out) != len(records):
        with tf.io.TFRecordWriter(path + ".tmp") as w:
            for raw in out:
                w.write(raw)
        os.replace(path + ".tmp", path)


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
      NonFiniteError: a metric or the state became non-finite, or the state diverged
        (`config.max_abs_state`, default `DEFAULT_MAX_ABS`); nothing bad is ever saved.
    """
    lead = jax.process_index() == 0
    mngr = checkpoint_manager(workdir, int(config.keep_ckpts))
    state, start = restore_latest(mngr, state)
    start = int(start or 0)
    max_abs = float(config.get("max_abs_state", DEFAULT_MAX_ABS))
    if start and lead:
        print(f"[train] resumed from {mngr.directory} at step {start}", flush=True)
    prune_logs(workdir, lambda s, name: s > start)  # the steps about to be redone
    for _ in range(start):  # fast-forward the data so resume == uninterrupted
        next(batches)
    writer = _metric_writer(workdir, just_logging=not lead)
    jsonl = _JsonlWriter(os.path.join(workdir, "metrics.jsonl") if lead else None)
    pstep = dp.step(step_fn)
    dstate, dconsts = dp.replicate(state), dp.replicate(consts)
    rng = jax.random.key(int(config.seed))
    log_every, ckpt_every = int(config.log_every), int(config.ckpt_every)
    eval_every = int(config.get("eval_every", 0) or 0)
    bar = None  # created after the first step, so its estimate leaves out the compilation
    if lead and start < total_steps:
        print(f"[{prefix}] compiling the step (the first one takes longer) ...", flush=True)
    last_good = mngr.latest_step()
    t0, metrics = time.perf_counter(), None

    def stop(what: str, done: int):
        kept = sorted(mngr.all_steps())
        earlier = (
            f" To resume from an earlier kept checkpoint ({', '.join(map(str, kept[:-1]))}), "
            f"delete the newer step folders in {mngr.directory} first."
            if len(kept) > 1
            else ""
        )
        return NonFiniteError(
            f"{what} at step {done}: stopping. The last good checkpoint is step {last_good} in "
            f"{mngr.directory} (not overwritten); rerunning with the same workdir resumes from "
            f"it (lower optim.lr first).{earlier}"
        )

    try:
        for step in range(start, total_steps):
            dstate, metrics = pstep(dstate, dp.shard(next(batches)), rng, dconsts)
            done = step + 1
            if bar is None:
                jax.block_until_ready(metrics)
                bar = tqdm(
                    total=total_steps,
                    initial=done,
                    disable=not lead,
                    desc=prefix,
                    dynamic_ncols=True,
                )
                t0 = time.perf_counter()
            else:
                bar.update(1)
            is_last = done == total_steps
            if done % log_every == 0 or is_last or done % ckpt_every == 0:
                scalars = dp.first(metrics)
                if not all(math.isfinite(v) for v in scalars.values()):
                    bad = [k for k, v in scalars.items() if not math.isfinite(v)]
                    bad.sort(key=lambda k: k != "loss")  # name the loss first when it is bad
                    raise stop(f"non-finite {prefix}/{bad[0]}", done)
                scalars = {f"{prefix}/{k}": v for k, v in scalars.items()}
                if done > start + 1:  # timed from the end of the first (compiling) step
                    scalars[f"{prefix}/steps_per_s"] = (done - start - 1) / max(
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
                problem = state_problem(host, max_abs)
                if problem:
                    raise stop(problem, done)
                mngr.save(done, args=ocp.args.StandardSave(flax.serialization.to_state_dict(host)))
                mngr.wait_until_finished()
                last_good = done
    finally:
        if bar is not None:
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
    """Logs scalars (e.g. a final evaluation) to the run's TensorBoard and JSONL logs, in
    place of the same names at the same step (a rerun evaluation is logged once)."""
    if jax.process_index() != 0:
        return
    prune_logs(workdir, lambda s, name: s == step and name in scalars)
    writer = _metric_writer(workdir, just_logging=False)
    writer.write_scalars(step, scalars)
    writer.close()
    jsonl = _JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    jsonl.write(step, scalars)
    jsonl.close()
