"""The teacher's train step in PyTorch and in JAX, timed side by side in one run.

Same model (ResNet view encoder with GroupNorm, max view pooling, LayerNorm MLP projector and
predictor), same BYOL objective with an EMA target, same on-device augmentation (affine
resampling: crop, flip, rotation), same AdamW update and same shapes. PyTorch runs eagerly with
channels-last tensors (its best CPU memory format); JAX runs the jitted pmap step that
`launch.pretrain` uses, with the CPU config's convolutions (oneDNN custom calls when they build,
`sb3dr_jax/kernels`) and again with XLA's own. The ratio is JAX throughput / PyTorch throughput
(>1: JAX is faster). On CPU each framework's step lives in its own process (`_StepServer`) and
the runner alternates ~1 s samples of each, round by round (`_paired`), so the machine's slow
spells hit both sides of a round; the JAX processes run on tcmalloc as the launchers do, and
PyTorch on both the system allocator and tcmalloc, the faster one kept.

On an accelerator (JAX's default backend is a GPU or TPU) the cases are ResNet-18 at 128 px
(the `gpu` config's backbone and resolution) in mixed precision, bf16 compute with float32
parameters (Flax `dtype` against PyTorch autocast), and once in float32; PyTorch runs on CUDA
when it can. Each case also reports model FLOPs utilisation (`peak_flops.py`).

    python benchmarks/torch_reference.py [--quick]
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# On a GPU each worker process allocates what it needs, not 75% of the memory up front: the
# parent and the workers share one device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from benchmarks.flops import step_flops  # noqa: E402
from benchmarks.peak_flops import measure_cpu_peak, mfu, peak_flops  # noqa: E402
from benchmarks.timing import jax_step_runner, on_devices, time_windows  # noqa: E402
from sb3dr_jax import allocator  # noqa: E402

PRESETS = {"resnet_tiny": ((1, 1, 1, 1), 16), "resnet18": ((2, 2, 2, 2), 64)}
DTYPES = ("float32", "bfloat16")
# (preset, global batch, views per branch, px, compute dtype)
CPU_CASES = (
    ("resnet_tiny", 16, 4, 64, "float32"),
    ("resnet_tiny", 32, 4, 64, "float32"),
    ("resnet18", 8, 4, 64, "float32"),
)
ACCEL_CASES = (
    ("resnet18", 64, 4, 128, "bfloat16"),
    ("resnet18", 128, 4, 128, "bfloat16"),
    ("resnet18", 128, 4, 128, "float32"),
)


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

    n, dev = views.shape[0] * views.shape[1], views.device

    def uniform(*shape, lo=-1.0, hi=1.0):
        return torch.empty(*shape, device=dev).uniform_(lo, hi, generator=gen)

    scale = uniform(n, lo=0.6)
    rot = uniform(n) * math.radians(10)
    flip = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    shift = uniform(n, 2) * (1 - scale[:, None] + 0.05)
    theta = torch.zeros(n, 2, 3, device=dev)
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


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; choose from {DTYPES}")


def torch_step_time(
    preset: str,
    batch: int,
    k: int,
    res: int,
    steps: int,
    dtype: str = "float32",
    device: str = "cpu",
    windows: int = 1,
) -> list[float]:
    """Seconds per BYOL step in PyTorch (eager, channels-last), one figure per timing window.

    Args:
      preset: "resnet_tiny" or "resnet18".
      batch: shapes per step; k: views per branch; res: view size in pixels.
      steps: timed steps per window.
      dtype: "float32", or "bfloat16" for autocast mixed precision (float32 parameters).
      device: "cpu" or "cuda".
      windows: timing windows, each of `steps` steps.

    Returns:
      Seconds per step of each window.
    """
    return time_windows(*_torch_step(preset, batch, k, res, dtype, device), steps, windows)


def _torch_step(preset: str, batch: int, k: int, res: int, dtype: str, device: str,
                compile_mode: str | None = None):  # fmt: skip
    """(step, sync): one PyTorch BYOL train step on fixed random views, and a device sync.

    `compile_mode` None runs eagerly; else the forward passes and the loss run under
    `torch.compile(mode=...)` ("default", "max-autotune-no-cudagraphs", ...; its backward is
    compiled with it), the augmentation and the optimiser eagerly. On CUDA the optimiser is
    the fused AdamW and the EMA one `_foreach` call per op (the fast eager forms); the CPU
    path is as it was measured before (a plain AdamW and a loop).
    """
    import copy

    import torch
    import torch.nn.functional as F

    _check_dtype(dtype)
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    else:
        torch.backends.cudnn.benchmark = True  # pick the fastest kernel per shape, as XLA does
    torch.manual_seed(0)
    online, predictor = _torch_model(preset, res, 256, 128)
    online.to(dev, memory_format=torch.channels_last)
    predictor.to(dev)
    target = copy.deepcopy(online).requires_grad_(False)
    params = list(online.parameters()) + list(predictor.parameters())
    cuda = dev.type == "cuda"
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, **({"fused": True} if cuda else {}))
    t_params, o_params = list(target.parameters()), list(online.parameters())
    gen = torch.Generator(device=dev).manual_seed(0)
    views = torch.randint(0, 255, (batch, 12, 3, res, res), dtype=torch.uint8, device=dev)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def loss_fn(p, z):
        return 2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)

    def forward(both):
        with autocast():
            z_on = online["proj"](online["enc"](both))
            p = predictor(z_on)
            with torch.no_grad():
                z_t = target["proj"](target["enc"](both))
        return (loss_fn(p[:batch], z_t[batch:]) + loss_fn(p[batch:], z_t[:batch])).mean()

    if compile_mode:
        forward = torch.compile(forward, mode=None if compile_mode == "default" else compile_mode)

    def step():
        perm = torch.argsort(torch.rand(batch, 12, generator=gen, device=dev), 1)[:, : 2 * k]
        idx = perm[:, :, None, None, None].expand(-1, -1, 3, res, res)
        x = torch.gather(views, 1, idx).float() / 255
        x = _torch_augment(x, gen)
        both = torch.cat([x[:, :k], x[:, k:]], 0)
        loss = forward(both)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if cuda:
                torch._foreach_mul_(t_params, 0.99)
                torch._foreach_add_(t_params, o_params, alpha=0.01)
            else:
                for t, o in zip(t_params, o_params):
                    t.mul_(0.99).add_(o, alpha=0.01)
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step, sync


def jax_step_time(
    preset: str,
    batch: int,
    k: int,
    res: int,
    steps: int,
    conv_impl: str = "auto",
    dtype: str = "float32",
    windows: int = 1,
) -> tuple[list[float], float | None]:
    """Seconds per teacher step in JAX (the jitted pmap step of `launch.pretrain`), and its FLOPs.

    Args:
      preset, batch, k, res, steps, windows: as `torch_step_time`.
      conv_impl: "auto" is the CPU config's default (oneDNN convolutions when they build);
        "xla" times the same step on XLA's own convolution kernels.
      dtype: the model's compute dtype (`model.dtype`; parameters stay float32).

    Returns:
      (seconds per step of each window, FLOPs per step). FLOPs are `flops.step_flops` of the
      step traced on XLA's convolutions (the same maths whatever `conv_impl` runs).
    """
    step, sync, flops = _jax_step(preset, batch, k, res, conv_impl, dtype)
    return time_windows(step, sync, steps, windows), flops


def teacher_config(preset: str, batch: int, k: int, conv_impl: str, dtype: str,
                   overrides: dict | None = None) -> ml_collections.ConfigDict:  # fmt: skip
    """The pretrain config these benchmarks time.

    Args:
      preset: backbone ("resnet_tiny", "resnet18"); the config a user of it gets here.
      batch: global batch (shapes).
      k: views per branch.
      conv_impl: `model.conv_impl` ("auto": oneDNN when it builds, "xla").
      dtype: `model.dtype` (compute dtype).
      overrides: flattened config keys and values applied last, e.g. {"model.view_chunk": 32}.

    Returns:
      The config, with no long-tail term (`SB3DR_BENCH_LONGTAIL` picks one).

    Raises:
      ValueError: an override names a field the config does not have.
    """
    import jax

    from sb3dr_jax.configs.pretrain import get_config

    _check_dtype(dtype)
    c = get_config(f"backbone={preset}")  # the CPU config a user of that backbone gets
    if jax.default_backend() != "cpu":  # batch layout as the `gpu` config has it
        c.model.view_chunk = get_config("gpu").model.view_chunk
    c.ssl.views_per_branch = k
    c.longtail.method = os.environ.get("SB3DR_BENCH_LONGTAIL", "none")
    c.model.update(conv_impl=conv_impl, dtype=dtype)
    c.global_batch = batch
    for key in overrides or {}:  # a typo would silently add a field nothing reads
        node = c
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ValueError(f"config override {key!r}: no field {part!r} in the config")
            node = node[part]
    if overrides:
        c.update_from_flattened_dict(overrides)
    return c


def _jax_step(preset: str, batch: int, k: int, res: int, conv_impl: str, dtype: str,
              overrides: dict | None = None):  # fmt: skip
    """(step, sync, FLOPs per step or None): the `launch.pretrain` step on fixed random views."""
    import jax

    from sb3dr_jax import teacher
    from sb3dr_jax.train import data_parallel

    def build(conv):  # the `launch.pretrain` step (total_steps 1000, an epoch of 100 steps)
        c = teacher_config(preset, batch, k, conv, dtype, overrides)
        c.total_steps = 1000
        return teacher.build(
            c, example_views=views[0, :1], num_shapes=batch, num_views=12, steps_per_epoch=100
        )

    views = np.random.default_rng(0).integers(0, 255, (1, batch, 12, res, res, 3), dtype=np.uint8)
    exp = build(conv_impl)
    state = exp.state
    dp = data_parallel("pmap", jax.devices()[:1])
    step = dp.step(exp.step)
    ds = dp.replicate(state)
    b = {
        "views": views,
        "index": np.zeros((1, batch), np.int32),
        "label": np.zeros((1, batch), np.int32),
    }
    b, rng = on_devices(dp, b), jax.random.key(0)
    # Model FLOPs traced from the same step on XLA's convolutions (`flops.py`: oneDNN's custom
    # calls carry no count), so every backend and conv_impl gets the same figure.
    raw = build("xla").step
    host = jax.tree_util.tree_map(lambda x: x[0], {k: v for k, v in b.items()})
    flops = float(step_flops(raw, state, jax.device_get(host), rng, {}))
    return (*jax_step_runner(step, ds, b, rng, {}), flops)


def _time_in_subprocess(framework: str, case: dict) -> dict:
    """One framework's seconds per step on one case, timed in a fresh Python process.

    A fresh process per measurement keeps the frameworks from slowing each other down: after a
    PyTorch step its OpenMP workers keep spinning for a while, which cost the next JAX
    measurement in the same process 15-20% on 2 cores.

    Returns:
      {"s": [seconds per step of each window], "flops": FLOPs per step or None,
      "device_kind": the chip}.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, json.dumps(case)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_env(framework))
    if out.returncode:
        raise RuntimeError(f"{framework} benchmark worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _step_fns(framework: str, case: dict):
    """(step, sync, {"flops", "device_kind", "allocator"}) of one framework on one case."""
    args = [case[k] for k in ("preset", "batch", "k", "res")]
    info = {"flops": None, "allocator": allocator.active()}
    if framework.startswith("torch"):
        import torch

        dev = case["torch_device"]
        info["device_kind"] = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
        mode = "default" if framework == "torch_compile" else None  # torch.compile's default
        return (*_torch_step(*args, case["dtype"], dev, compile_mode=mode), info)
    import jax

    impl = "xla" if framework == "jax_xla_conv" else "auto"
    step, sync, info["flops"] = _jax_step(*args, impl, case["dtype"], case.get("config"))
    return step, sync, info | {"device_kind": jax.devices()[0].device_kind}


def _env(framework: str) -> dict[str, str]:
    """The environment of a framework's process: the JAX processes preload tcmalloc themselves,
    as the launchers do (`sb3dr_jax/allocator.py`); PyTorch runs on the system allocator
    ("torch") and on tcmalloc ("torch_tcmalloc"), and its row keeps the faster of the two;
    "torch_compile" (`torch.compile`) runs on tcmalloc when it is installed."""
    env = dict(os.environ)
    for var, drop in (("LD_PRELOAD", "tcmalloc"), ("GLIBC_TUNABLES", allocator.HUGETLB)):
        keep = [p for p in env.pop(var, "").split(":") if p and drop not in p]
        if keep:
            env[var] = ":".join(keep)
    if framework in ("torch_tcmalloc", "torch_compile"):
        env = allocator.preload_env({k: v for k, v in env.items() if k != allocator.SWITCH}) or env
    return env


def _worker(framework: str, case: dict) -> dict:
    """Runs one measurement in this process (the `--worker` command line)."""
    step, sync, info = _step_fns(framework, case)
    return {"s": time_windows(step, sync, case["steps"], case["windows"]), **info}


_TAG = "@sb3dr "  # starts the lines of the server protocol; other output on stdout is ignored


def _serve(framework: str, case: dict) -> None:
    """The `--serve` command line: builds and warms up one step, then times it on request.

    Prints {"s": seconds of one step after the warm-up, "flops", "device_kind", "allocator"},
    then reads a step count per line and answers each with {"s": seconds per step}; 0 or EOF
    ends it.
    """
    step, sync, info = _step_fns(framework, case)
    t0 = time.perf_counter()
    s = time_windows(step, sync, 1, 1)[0]
    # The two warm-up steps' time beyond two steps: torch.compile's (or XLA's) compilation.
    info["compile_s"] = round(max(time.perf_counter() - t0 - 3 * s, 0.0), 2)
    print(_TAG + json.dumps({"s": s, **info}), flush=True)
    for line in sys.stdin:
        if int(line) <= 0:
            break
        print(_TAG + json.dumps({"s": time_windows(step, sync, int(line), 1, warmup=0)[0]}),
              flush=True)  # fmt: skip


class _StepServer:
    """One framework's step, built and warmed up in its own process and timed on request.

    The process stays alive between samples, so samples of different frameworks can alternate
    within seconds (see `_paired`).
    """

    def __init__(self, framework: str, case: dict, env: dict[str, str] | None = None,
                 start_timeout_s: float | None = None, script: str | None = None):  # fmt: skip
        self.framework = framework
        self._err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block
        # `script`: another checkout's copy of this file, which serves that checkout's step
        # (it puts its own root first on sys.path); `benchmarks/refactor_ratio.py` pairs two.
        script = os.path.abspath(script or __file__)
        cmd = [sys.executable, script, "--serve", framework, json.dumps(case)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._err, text=True,
                                      env=_env(framework) | (env or {}))  # fmt: skip
        # A start (build, compile, warm-up) that takes longer is ended: its answer then fails.
        timer = threading.Timer(start_timeout_s, self._proc.kill) if start_timeout_s else None
        if timer:
            timer.start()
        try:
            self.info = self._answer()
        finally:
            if timer:
                timer.cancel()

    def _answer(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG) :])
        self._proc.wait()
        self._err.seek(0)
        raise RuntimeError(f"{self.framework} benchmark server failed:\n{self._err.read()[-2000:]}")

    def time(self, steps: int) -> float:
        """Seconds per step over `steps` steps."""
        self._proc.stdin.write(f"{steps}\n")
        self._proc.stdin.flush()
        return self._answer()["s"]

    def close(self) -> None:
        try:
            self._proc.stdin.write("0\n")
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
        self._err.close()


def _paired(case: dict, fws: tuple[str, ...], pairs: int, sample_s: float = 1.0,
            gap_s: float = 0.2) -> tuple[dict, float | None, str, str]:  # fmt: skip
    """Times the frameworks' steps side by side: one live process each, samples alternating.

    Each of `pairs` rounds takes one sample of every framework back to back (the order rotates
    round by round), so a slow spell of a shared machine lands on all of them; the ratio is then
    the median of the per-round ratios. A sample is ~`sample_s` seconds of steps; `gap_s` idles
    before each so the previous framework's OpenMP workers stop spinning first.

    Returns:
      ({framework: [seconds per step, one per round]}, the step's FLOPs (counted on XLA's
      convolutions: custom calls have no cost model), the device kind, the JAX allocator).
    """
    limit = float(os.environ.get("SB3DR_TORCH_COMPILE_TIMEOUT", "900"))

    def start(fw):
        return _StepServer(fw, case, start_timeout_s=limit if fw == "torch_compile" else None)

    skipped: dict = {}
    times, servers = alternate({fw: (lambda fw=fw: start(fw)) for fw in fws}, pairs, sample_s,
                               gap_s, skipped)  # fmt: skip
    info = servers["jax"].info
    flops = next((s.info["flops"] for s in servers.values() if s.info["flops"]), None)  # XLA's
    if "torch_compile" in servers:
        times["torch_compile_compile_s"] = servers["torch_compile"].info.get("compile_s")
    if skipped:
        times["torch_compile_skipped"] = (
            f"not started within SB3DR_TORCH_COMPILE_TIMEOUT={limit:.0f} s or failed: "
            + skipped["torch_compile"]
        )
    return times, flops, info["device_kind"], info["allocator"]


def alternate(starts: dict, rounds: int, sample_s: float = 1.0, gap_s: float = 0.2,
              skipped: dict | None = None) -> tuple[dict[str, list[float]], dict]:  # fmt: skip
    """Times live step servers side by side: `rounds` rounds of one ~`sample_s` sample each,
    the first server rotating round by round, `gap_s` idle before each sample.

    Args:
      starts: {name: a callable returning a started `_StepServer`}; started one after another,
        so no compilation runs beside another's warm-up.
      skipped: receives {"torch_compile": why} when that (optional) server did not start
        (e.g. its compilation outran `SB3DR_TORCH_COMPILE_TIMEOUT`); the others go on.

    Returns:
      ({name: [seconds per step, one per round]}, {name: the closed server, with its `info`}).
    """
    skipped = {} if skipped is None else skipped
    servers: dict = {}
    names = list(starts)
    try:
        for name in list(names):
            try:
                servers[name] = starts[name]()
            except RuntimeError as e:  # only the optional torch.compile server may fail
                if name != "torch_compile":
                    raise
                names.remove(name)
                skipped[name] = str(e)[-500:]
        steps = {n: max(1, min(8, round(sample_s / s.info["s"]))) for n, s in servers.items()}
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(rounds):
            for n in names[i % len(names) :] + names[: i % len(names)]:
                time.sleep(gap_s)
                times[n].append(servers[n].time(steps[n]))
    finally:
        for s in servers.values():
            s.close()
    return times, servers


def _plan(quick: bool, accelerator: bool, torch_device: str | None):
    """(cases, frameworks, rounds, steps, windows) for this machine.

    On CPU `rounds` are the rounds of `_paired` and `steps` is None (each sample ~1 s of
    steps); on an accelerator each framework runs `rounds` fresh processes of `windows` windows.
    """
    if accelerator:
        # No thread pools to contend on a GPU: one process per framework and case, timed in
        # three windows, keeps the device time short.
        fws = ("jax", "torch") if torch_device else ("jax",)
        cases, (rounds, steps, windows) = ACCEL_CASES, ((1, 5, 1) if quick else (1, 20, 3))
    else:
        fws = ("jax", "jax_xla_conv", "torch")
        fws += ("torch_tcmalloc",) if allocator.find_tcmalloc() else ()
        fws += ("torch_compile",)  # torch.compile (default mode), on tcmalloc when installed
        cases, (rounds, steps, windows) = CPU_CASES, (2 if quick else 16, None, 1)
    return (cases[:1] if quick else cases), fws, rounds, steps, windows


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def per_round_ratios(num, den) -> tuple[float, list[float], list[float]]:
    """(median, [25th, 75th percentile], every ratio) of the per-round ratios num / den, each
    rounded to 3 digits: the figures a paired run reports."""
    r = np.asarray(num) / np.asarray(den)
    quartiles = [round(float(q), 3) for q in np.percentile(r, [25, 75])]
    return round(float(np.median(r)), 3), quartiles, [round(float(x), 3) for x in r]


def _summary(
    case: dict,
    times: dict,
    flops: float | None,
    kind: str,
    jax_alloc: str = "",
    cpu_peak: float | None = None,
) -> dict:
    """The JSON row of one case from its per-framework times (one per round or window).

    Times are medians; the ratios are the medians of the per-round ratios (with their quartiles),
    which a slow spell that hits both frameworks of a round leaves alone. MFU uses the chip's
    table peak (or `SB3DR_PEAK_TFLOPS`), else `cpu_peak` (FLOP/s measured on this CPU) for a
    float32 case.
    """
    extra = {k: times.pop(k) for k in ("torch_compile_compile_s", "torch_compile_skipped")
             if k in times}  # fmt: skip
    med = {fw: float(np.median(ts)) for fw, ts in times.items()}
    best = min((fw for fw in med if fw.startswith("torch")), key=med.get, default=None)
    j, t, x = med["jax"], med.get(best), med.get("jax_xla_conv")
    peak = peak_flops(kind, case["dtype"]) or (cpu_peak if case["dtype"] == "float32" else None)
    row = {
        "preset": case["preset"],
        "batch": case["batch"],
        "views_per_shape": 2 * case["k"],
        "res": case["res"],
        "dtype": case["dtype"],
        "device_kind": kind,
        "jax_s_per_step": round(j, 4),
        "jax_shapes_per_s": round(case["batch"] / j, 2),
        "jax_views_per_s": round(case["batch"] * 2 * case["k"] / j, 1),
        "gflop_per_step": flops and round(flops / 1e9, 1),  # the same model maths in both
        "jax_gflops_per_s": flops and round(flops / 1e9 / j, 1),
        "peak_tflops": peak and round(peak / 1e12, 4 if peak < 1e12 else 1),
        "jax_mfu": _round(mfu(flops, j, peak), 4),
    }
    if jax_alloc:
        row["jax_allocator"] = jax_alloc
    if x is not None:
        row["jax_xla_conv_s_per_step"] = round(x, 4)
    if t is not None:
        ratio, quartiles, per_round = per_round_ratios(times[best], times["jax"])
        row |= {
            "torch_s_per_step": round(t, 4),
            "torch_variant": best,  # the fastest PyTorch variant measured: the ratio's reference
            "torch_allocator": "tcmalloc"
            if best == "torch_tcmalloc" or (best == "torch_compile" and allocator.find_tcmalloc())
            else "system",
            "torch_shapes_per_s": round(case["batch"] / t, 2),
            "ratio_jax_over_torch": ratio,
            "ratio_quartiles": quartiles,
            "ratios_per_round": per_round,
            "torch_gflops_per_s": flops and round(flops / 1e9 / t, 1),
            "torch_mfu": _round(mfu(flops, t, peak), 4),
        }
        if x is not None:
            xla_ratio, _, _ = per_round_ratios(times[best], times["jax_xla_conv"])
            row["ratio_xla_conv_over_torch"] = xla_ratio
        if "torch_compile" in med:
            row["torch_compile_s_per_step"] = round(med["torch_compile"], 4)
        if "torch_tcmalloc" in med:  # both PyTorch figures
            row["torch_system_s_per_step"] = round(med["torch"], 4)
            row["torch_tcmalloc_s_per_step"] = round(med["torch_tcmalloc"], 4)
    return row | extra


def run(quick: bool = False) -> dict:
    """Times both frameworks on the same configurations.

    On CPU each framework's step lives in its own process and the samples alternate round by
    round (`_paired`), so slow spells of a shared machine hit both. On an accelerator each
    framework runs once per case, timed in several windows.

    Returns:
      {"cases": [{preset, batch, views_per_shape, res, dtype, device_kind, jax_s_per_step,
      torch_s_per_step, *_shapes_per_s, ratio_jax_over_torch (median of the per-round ratios),
      ratio_quartiles, ratios_per_round, gflop_per_step
      (`flops.step_flops`: traced, the same on every backend), *_gflops_per_s, peak_tflops, jax_mfu, torch_mfu, and
      on CPU jax_xla_conv_s_per_step, ratio_xla_conv_over_torch}], "ratio_default": the first
      case's ratio}.
    """
    import jax

    try:
        import torch
    except ImportError:
        torch = None
    accelerator = jax.default_backend() != "cpu"
    if not accelerator:
        if torch is None:
            return {"skipped": "PyTorch is not installed: pip install -e '.[torch]'"}
        torch_device = "cpu"
    else:  # None, e.g. on a TPU: JAX's figures and MFU alone
        torch_device = "cuda" if torch and torch.cuda.is_available() else None
    cases, fws, rounds, steps, windows = _plan(quick, accelerator, torch_device)
    # Measured before any timing process starts, while nothing else computes.
    cpu = None if accelerator or peak_flops("cpu", "float32") else measure_cpu_peak()
    cpu_peak = cpu["tflops"] * 1e12 if cpu and "tflops" in cpu else None
    out = []
    for preset, batch, k, res, dtype in cases:
        case = dict(preset=preset, batch=batch, k=k, res=res, dtype=dtype, steps=steps,
                    windows=windows, torch_device=torch_device)  # fmt: skip
        if not accelerator:
            out.append(_summary(case, *_paired(case, fws, rounds), cpu_peak=cpu_peak))
            continue
        times, flops, kind = {fw: [] for fw in fws}, None, "cpu"
        for _ in range(rounds):
            for fw in fws:
                r = _time_in_subprocess(fw, case)
                times[fw] += r["s"]
                flops = flops or r["flops"]
                kind = r["device_kind"] if fw == "jax" else kind
        out.append(_summary(case, times, flops, kind))
    from sb3dr_jax.models.resnet import resolve_conv_impl

    return {
        "cases": out,
        **({"cpu_peak": cpu} if cpu else {}),
        "jax_conv_impl": resolve_conv_impl("auto"),
        "ratio_default": out[0].get("ratio_jax_over_torch"),
        "note": "ratio > 1: JAX faster; same model, loss, augmentation and optimiser; on CPU "
        "JAX with the config's convolutions (jax_conv_impl) and with XLA's own, on tcmalloc as "
        "the launchers run it (jax_allocator), PyTorch eager on the system allocator and "
        "on tcmalloc and under torch.compile (default mode), the ratio against the fastest "
        "(torch_variant, torch_allocator); one live process per framework, ~1 s samples "
        "alternating round by round, ratio = median of the per-round ratios; on an accelerator "
        "one process per framework, timing windows paired by index; MFU = the step's model FLOPs (flops.py) "
        "the step / time / the chip's dense peak for the dtype (peak_flops.py; on CPU the "
        "float32 FMA peak measured at the start of the run, cpu_peak)",
    }


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] in ("--worker", "--serve"):
        fw, case = sys.argv[2], json.loads(sys.argv[3])
        if fw.startswith("jax"):
            allocator.reexec_with_tcmalloc()  # the JAX step as the launchers run it
        if sys.argv[1] == "--worker":
            print(json.dumps(_worker(fw, case)))
        else:
            _serve(fw, case)
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
