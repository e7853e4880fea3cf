"""Train-step throughput: teacher shapes/s and views/s, distill sketches/s, cached vs online.

    python -m benchmarks.train_steps [--quick]

Runs the real steps (`teacher.build` / `student.build`, as the trainers do) on random batches over
all local devices (pmap); compile time is excluded. On CPU the configs are the default ones at
64 px (`smoke` at 32 px with `--quick`); on an accelerator the `gpu` configs (ResNet-18, bf16,
128 px) at batches of 64-256 per device.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from benchmarks.timing import on_devices, time_jax_step
from sb3dr_jax import student as student_lib
from sb3dr_jax import teacher as teacher_lib
from sb3dr_jax.configs import distill as distill_config
from sb3dr_jax.configs import pretrain as pretrain_config
from sb3dr_jax.train import data_parallel

V, C, K = 12, 3, 10  # views, channels, classes


def _time(dp, step, state, batch, consts, iters: int, windows: int = 3) -> float:
    """Seconds per step, the median of `windows` windows of `iters` steps (compile and warm-up
    excluded): a single window on a shared machine can land in a slow spell (one figure read
    67.6 shapes/s where the runs before and after read 93.3 and 88.5)."""
    d = dp.num_devices
    local = dp.shard(jax.tree_util.tree_map(lambda x: x.reshape((d, -1) + x.shape[1:]), batch))
    args = (dp.replicate(state), on_devices(dp, local), jax.random.key(0), dp.replicate(consts))
    return float(np.median(time_jax_step(dp.step(step), *args, steps=iters, windows=windows)))


def _config_arg(res: int) -> str:
    """The config variant these benchmarks time: `gpu` on accelerators, else CPU ones."""
    if jax.default_backend() != "cpu":
        return "gpu"
    return "smoke" if res <= 32 else ""


def teacher(dp, batch_size: int, res: int, iters: int) -> dict:
    """Teacher (BYOL + BCL) step throughput for one global batch size."""
    cfg = pretrain_config.get_config(_config_arg(res))
    cfg.total_steps = 100
    rs, n = np.random.RandomState(0), 4 * batch_size
    batch = {
        "views": rs.randint(0, 255, (batch_size, V, res, res, C)).astype(np.uint8),
        "label": rs.randint(0, K, (batch_size,)).astype(np.int32),
        "index": rs.permutation(n)[:batch_size].astype(np.int32),
    }
    exp = teacher_lib.build(
        cfg, example_views=batch["views"][:1], num_shapes=n, num_views=V, steps_per_epoch=4
    )
    sec = _time(dp, exp.step, exp.state, batch, exp.consts, iters)
    views = 2 * cfg.ssl.views_per_branch
    return {"global_batch": batch_size, "shapes_per_s": batch_size / sec,
            "views_per_s": batch_size * views / sec}  # fmt: skip


def student_parts(tcfg, cfg, batch_size: int, res: int, online: bool = False, seed: int = 1):
    """`student.build` on a random teacher table of 4 x `batch_size` shapes over K classes, and
    one batch of random uint8 sketches [b, res, res, 1] (with the paired shapes' views
    [b, V, res, res, C] for the online teacher).

    Returns:
      (experiment, host batch).
    """
    rs = np.random.RandomState(seed)
    views = rs.randint(0, 255, (batch_size, V, res, res, C)).astype(np.uint8)
    t = teacher_lib.untrained(tcfg, views[:1])
    table = student_lib.random_table(t, 4 * batch_size, K, seed)
    cfg.online_teacher = online
    exp = student_lib.build(cfg, table, sketch_size=res, view_channels=("depth", "shade", "line"))
    batch = {
        "image": rs.randint(0, 255, (batch_size, res, res, 1)).astype(np.uint8),
        "label": (np.arange(batch_size) % K).astype(np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
    }
    if online:  # the host supplies the paired shapes' views; the frozen teacher runs in step
        batch["views"] = views
    return exp, batch


def student(dp, batch_size: int, res: int, iters: int, online: bool) -> dict:
    """Distill step throughput (cached table or online teacher) for one global batch size."""
    tcfg = pretrain_config.get_config(_config_arg(res))
    cfg = distill_config.get_config(_config_arg(res))
    cfg.total_steps = 100
    exp, batch = student_parts(tcfg, cfg, batch_size, res, online)
    sec = _time(dp, exp.step, exp.state, batch, exp.consts, iters)
    return {
        "global_batch": batch_size,
        "online_teacher": online,
        "sketches_per_s": batch_size / sec,
    }


def run(quick: bool = False) -> dict:
    """Measures the steps; `quick` uses smaller inputs (CPU) and fewer sizes/iterations.

    Returns:
      {"devices", "resolution", "teacher": [...], "distill": [...], "cached_vs_online": [...]}.
    """
    dp = data_parallel("pmap")
    d = dp.num_devices
    if jax.default_backend() != "cpu":
        res, iters = 128, (3 if quick else 10)
        sizes = [64 * d] if quick else [64 * d, 128 * d, 256 * d]
    else:
        res, iters = (32, 2) if quick else (64, 5)
        sizes = [4 * d, 8 * d] if quick else [8 * d, 16 * d, 32 * d]
    out = {"devices": d, "platform": jax.devices()[0].platform, "resolution": res,
           "config": _config_arg(res) or "default"}  # fmt: skip
    out["teacher"] = [teacher(dp, b, res, iters) for b in sizes]
    out["distill"] = [student(dp, 2 * b, res, iters, online=False) for b in sizes]
    b = 2 * sizes[0]
    cached = student(dp, b, res, iters, online=False)["sketches_per_s"]
    online = student(dp, b, res, iters, online=True)["sketches_per_s"]
    out["cached_vs_online"] = {"global_batch": b, "cached_sketches_per_s": cached,
                               "online_sketches_per_s": online, "speedup": cached / online}  # fmt: skip
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
