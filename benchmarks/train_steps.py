"""Train-step throughput: teacher shapes/s and views/s, distill sketches/s, cached vs online.

    python -m benchmarks.train_steps [--quick]

Runs the real step functions (`make_step` + the teacher / student loss) on random batches over
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
from sb3dr_jax import distill, pretrain
from sb3dr_jax.configs import distill as distill_config
from sb3dr_jax.configs import pretrain as pretrain_config
from sb3dr_jax.models import build_model, feature_dim
from sb3dr_jax.train import TrainState, data_parallel, make_optimizer, make_step
from sb3dr_jax.train.teacher_cache import class_members

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
    model, opt = pretrain.teacher_model(cfg), make_optimizer(cfg.optim, 100)
    rs, n = np.random.RandomState(0), 4 * batch_size
    batch = {
        "views": rs.randint(0, 255, (batch_size, V, res, res, C)).astype(np.uint8),
        "label": rs.randint(0, K, (batch_size,)).astype(np.int32),
        "index": rs.permutation(n)[:batch_size].astype(np.int32),
    }
    state = pretrain.init_state(cfg, model, batch["views"][:1], n, opt)
    post = pretrain.make_post_update(cfg, 100, steps_per_epoch=4)
    sec = _time(dp, make_step(pretrain.make_loss_fn(cfg, model, V), opt, post_update=post),
                state, batch, {}, iters)  # fmt: skip
    views = 2 * cfg.ssl.views_per_branch
    return {"global_batch": batch_size, "shapes_per_s": batch_size / sec,
            "views_per_s": batch_size * views / sec}  # fmt: skip


def student_inputs(f: int, batch_size: int, res: int, seed: int = 1):
    """Synthetic distill inputs: a cached teacher table of 4 x `batch_size` random unit
    features [n, f] over K classes, and one batch of random uint8 sketches [b, res, res, 1].

    Returns:
      (consts, batch, rs): host dicts, and the RandomState for any further draws.
    """
    rs, n = np.random.RandomState(seed), 4 * batch_size
    feats = rs.randn(n, f).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    members, counts = class_members(np.arange(n) % K, K)
    consts = {"features": feats, "centres": feats[:K], "members": members, "counts": counts}
    batch = {
        "image": rs.randint(0, 255, (batch_size, res, res, 1)).astype(np.uint8),
        "label": (np.arange(batch_size) % K).astype(np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
    }
    return consts, batch, rs


def student(dp, batch_size: int, res: int, iters: int, online: bool) -> dict:
    """Distill step throughput (cached table or online teacher) for one global batch size."""
    tcfg = pretrain_config.get_config(_config_arg(res))
    cfg = distill_config.get_config(_config_arg(res))
    f = feature_dim(**tcfg.model.to_dict())
    model = build_model("sketch_student", **distill.student_model_kwargs(cfg, f))
    opt = make_optimizer(cfg.optim, 100)
    consts, batch, rs = student_inputs(f, batch_size, res)
    teacher_model = None
    if online:  # the host supplies the paired shapes' views; the frozen teacher runs in step
        teacher_model = pretrain.teacher_model(tcfg)
        batch["views"] = rs.randint(0, 255, (batch_size, V, res, res, C)).astype(np.uint8)
        consts["teacher_params"] = teacher_model.init(jax.random.key(0), batch["views"][:1])[
            "params"
        ]
        consts["mean"] = np.zeros((f,), np.float32)
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]
    state = jax.device_get(TrainState.create(params, opt))
    step = make_step(distill.make_loss_fn(cfg, model, teacher_model), opt)
    sec = _time(dp, step, state, batch, consts, iters)
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
