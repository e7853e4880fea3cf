"""The teacher's train step in PyTorch and in JAX, timed side by side in one run.

Same model (ResNet view encoder with GroupNorm, max view pooling, LayerNorm MLP projector and
predictor), same BYOL objective with an EMA target, same on-device augmentation (affine
resampling: crop, flip, rotation), same AdamW update and same shapes. PyTorch runs eagerly with
channels-last tensors (its best CPU memory format); JAX runs the jitted pmap step that
`launch.pretrain` uses, with the CPU config's convolutions (oneDNN custom calls when they build,
`sb3dr_jax/kernels`) and again with XLA's own. The ratio is JAX throughput / PyTorch throughput
(>1: JAX is faster).

    python benchmarks/torch_reference.py [--quick]
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PRESETS = {"resnet_tiny": ((1, 1, 1, 1), 16), "resnet18": ((2, 2, 2, 2), 64)}


def _torch_model(preset: str, res: int, proj_hidden: int, proj_dim: int):
    import torch
    from torch import nn

    stages, width = PRESETS[preset]

    def gn(c):
        return nn.GroupNorm(8, c)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.n1 = gn(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.n2 = gn(cout)
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), gn(cout))

        def forward(self, x):
            y = self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))
            return torch.relu(y + (x if self.proj is None else self.proj(x)))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            if res >= 96:
                stem = [
                    nn.Conv2d(3, width, 7, 2, 3, bias=False),
                    gn(width),
                    nn.ReLU(),
                    nn.MaxPool2d(3, 2, 1),
                ]
            else:
                stem = [
                    nn.Conv2d(3, width, 3, 2 if res >= 48 else 1, 1, bias=False),
                    gn(width),
                    nn.ReLU(),
                ]
            layers, cin = [], width
            for i, n in enumerate(stages):
                for j in range(n):
                    cout = width * 2**i
                    layers.append(Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                    cin = cout
            self.net = nn.Sequential(*stem, *layers)
            self.dim = cin

        def forward(self, views):  # [B, K, C, H, W]
            b, k = views.shape[:2]
            f = self.net(views.flatten(0, 1).contiguous(memory_format=torch.channels_last))
            return f.mean((2, 3)).view(b, k, -1).amax(1)

    def mlp(i, h, o):
        return nn.Sequential(nn.Linear(i, h), nn.LayerNorm(h), nn.ReLU(), nn.Linear(h, o))

    enc = Encoder()
    online = nn.ModuleDict({"enc": enc, "proj": mlp(enc.dim, proj_hidden, proj_dim)})
    predictor = mlp(proj_dim, proj_hidden, proj_dim)
    return online, predictor


def _torch_augment(views, gen):
    import torch
    import torch.nn.functional as F

    n = views.shape[0] * views.shape[1]
    scale = torch.empty(n).uniform_(0.6, 1.0, generator=gen)
    rot = torch.empty(n).uniform_(-1, 1, generator=gen) * math.radians(10)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = torch.empty(n, 2).uniform_(-1, 1, generator=gen) * (1 - scale[:, None] + 0.05)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * torch.cos(rot) * flip
    theta[:, 0, 1] = -scale * torch.sin(rot)
    theta[:, 1, 0] = scale * torch.sin(rot) * flip
    theta[:, 1, 1] = scale * torch.cos(rot)
    theta[:, :, 2] = shift
    x = views.flatten(0, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).view_as(views)


def torch_step_time(preset: str, batch: int, k: int, res: int, steps: int) -> float:
    """Seconds per BYOL step in PyTorch (eager, channels-last)."""
    import copy

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    online, predictor = _torch_model(preset, res, 256, 128)
    target = copy.deepcopy(online).requires_grad_(False)
    params = list(online.parameters()) + list(predictor.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    views = torch.randint(0, 255, (batch, 12, 3, res, res), dtype=torch.uint8)

    def loss_fn(p, z):
        return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)

    def step():
        perm = torch.argsort(torch.rand(batch, 12, generator=gen), 1)[:, : 2 * k]
        x = (
            torch.gather(views, 1, perm[:, :, None, None, None].expand(-1, -1, 3, res, res)).float()
            / 255
        )
        x = _torch_augment(x, gen)
        both = torch.cat([x[:, :k], x[:, k:]], 0)
        z_on = online["proj"](online["enc"](both))
        p = predictor(z_on)
        with torch.no_grad():
            z_t = target["proj"](target["enc"](both))
        loss = (loss_fn(p[:batch], z_t[batch:]) + loss_fn(p[batch:], z_t[:batch])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, o in zip(target.parameters(), online.parameters()):
                t.mul_(0.99).add_(o, alpha=0.01)
        return loss

    step()
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def _step_flops(step, *args) -> float | None:
    """FLOPs of one step by XLA's cost analysis of the lowered program (None if unavailable).

    Custom calls carry no cost, so this is only meaningful for the step on XLA's convolutions.
    """
    try:
        cost = step.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001 - the figure is optional; the timing stands without it
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0)) or None


def jax_step_time(
    preset: str, batch: int, k: int, res: int, steps: int, conv_impl: str = "auto"
) -> tuple[float, float | None]:
    """Seconds per teacher step in JAX (the jitted pmap step of `launch.pretrain`), and its FLOPs.

    `conv_impl` "auto" is the CPU config's default (oneDNN convolutions when they build);
    "xla" times the same step on XLA's own convolution kernels, and only then are the step's
    FLOPs counted (XLA's cost analysis; the oneDNN custom calls have no cost model).
    """
    import jax

    from sb3dr_jax import pretrain
    from sb3dr_jax.configs.pretrain import get_config
    from sb3dr_jax.train import data_parallel, make_optimizer, make_step

    c = get_config(f"backbone={preset}")  # the CPU config a user of that backbone gets
    c.ssl.views_per_branch = k
    c.longtail.method = os.environ.get("SB3DR_BENCH_LONGTAIL", "none")
    c.model.conv_impl = conv_impl
    c.global_batch = batch
    model = pretrain.teacher_model(c)
    opt = make_optimizer(c.optim, 1000)
    views = np.random.default_rng(0).integers(0, 255, (1, batch, 12, res, res, 3), dtype=np.uint8)
    state = pretrain.init_state(c, model, views[0, :1], batch, opt)
    dp = data_parallel("pmap", jax.devices()[:1])
    step = dp.step(
        make_step(
            pretrain.make_loss_fn(c, model, 12),
            opt,
            post_update=pretrain.make_post_update(c, 1000, 100),
        )
    )
    ds = dp.replicate(state)
    b = {
        "views": views,
        "index": np.zeros((1, batch), np.int32),
        "label": np.zeros((1, batch), np.int32),
    }
    rng = jax.random.key(0)
    flops = _step_flops(step, ds, b, rng, {}) if conv_impl == "xla" else None
    for _ in range(2):
        ds, m = step(ds, b, rng, {})
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        ds, m = step(ds, b, rng, {})
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / steps, flops


def _time_in_subprocess(framework: str, preset: str, batch: int, k: int, res: int, steps: int):
    """Seconds per step of one framework, timed in a fresh Python process.

    A fresh process per measurement keeps the frameworks from slowing each other down: after a
    PyTorch step its OpenMP workers keep spinning for a while, which cost the next JAX
    measurement in the same process 15-20% on 2 cores.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework]
    cmd += [preset, str(batch), str(k), str(res), str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{framework} benchmark worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # {"s": seconds, "flops": ...}


def run(quick: bool = False) -> dict:
    """Times both frameworks on the same configurations.

    Each case alternates JAX and PyTorch measurements (`rounds` of each, every one in a fresh
    process) and keeps the median per framework, so slow spells of a shared machine hit both.

    Returns:
      {"cases": [{preset, batch, views, res, jax_s, torch_s, jax_shapes_per_s,
      torch_shapes_per_s, ratio, ratios_per_round, gflop_per_step (XLA's cost analysis of the
      step), jax_gflops_per_s, torch_gflops_per_s}], "ratio_default": the CPU default config's
      ratio}.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "PyTorch is not installed: pip install -e '.[torch]'"}
    from sb3dr_jax.models.resnet import resolve_conv_impl

    cases = [("resnet_tiny", 16, 4, 64), ("resnet_tiny", 32, 4, 64), ("resnet18", 8, 4, 64)]
    if quick:
        cases = cases[:1]
    steps, rounds = (3, 1) if quick else (8, 3)
    out = []
    for preset, batch, k, res in cases:
        times, flops = {"jax": [], "jax_xla_conv": [], "torch": []}, None
        for _ in range(rounds):
            for fw, ts in times.items():
                r = _time_in_subprocess(fw, preset, batch, k, res, steps)
                ts.append(r["s"])
                flops = flops or r.get("flops")
        j, x, t = (float(np.median(times[f])) for f in ("jax", "jax_xla_conv", "torch"))
        gf = flops / 1e9 if flops else None  # the same model maths in both frameworks
        out.append(
            {
                "preset": preset,
                "batch": batch,
                "views_per_shape": 2 * k,
                "res": res,
                "jax_conv_impl": resolve_conv_impl("auto"),
                "jax_s_per_step": round(j, 4),
                "jax_xla_conv_s_per_step": round(x, 4),
                "torch_s_per_step": round(t, 4),
                "jax_shapes_per_s": round(batch / j, 2),
                "torch_shapes_per_s": round(batch / t, 2),
                "jax_views_per_s": round(batch * 2 * k / j, 1),
                "ratio_jax_over_torch": round(t / j, 3),
                "ratio_xla_conv_over_torch": round(t / x, 3),
                "ratios_per_round": [round(b / a, 3) for a, b in zip(times["jax"], times["torch"])],
                "gflop_per_step": gf and round(gf, 1),
                "jax_gflops_per_s": gf and round(gf / j, 1),
                "torch_gflops_per_s": gf and round(gf / t, 1),
            }
        )
    return {
        "cases": out,
        "ratio_default": out[0]["ratio_jax_over_torch"],
        "note": "ratio > 1: JAX faster; same model, loss, augmentation and optimiser; JAX with "
        "the CPU config's convolutions (jax_conv_impl) and with XLA's own; each measurement in "
        "a fresh process, median of alternating rounds",
    }


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        fw, preset, *nums = sys.argv[2:]
        if fw == "torch":
            print(json.dumps({"s": torch_step_time(preset, *map(int, nums))}))
        else:
            impl = "xla" if "xla" in fw else "auto"
            sec, flops = jax_step_time(preset, *map(int, nums), conv_impl=impl)
            print(json.dumps({"s": sec, "flops": flops}))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
