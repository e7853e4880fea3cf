"""The accelerator benchmarks: the `gpu` teacher and distill steps under each optimisation
variant, the PyTorch twin eager and under torch.compile, model FLOPs and MFU for every row, and
a kernel profile of the first step.

    python benchmarks/accel.py --out DIR [--quick] [--budget 400] [--concurrent]

By default (`sequential`) the plan's processes run one at a time, in order of what they tell
(`SEQUENTIAL_PLAN`): JAX config variants share a process (compiled one after another; XLA's
autotuning results carry over), each XLA flag set gets its own (XLA reads its flags once per
process), each PyTorch mode its own. Every process writes its rows as they are measured and the
merged files are rewritten after each, so the budget's end keeps what came before.
`--concurrent` (`orchestrate`) runs the lanes side by side with only the timed windows
serialised (a file lock): faster, but one lane's autotuning on the device then slows another
lane's windows (measured: `benchmarks/README.md`), so its rows are for triage only.

A row: {"name", "kind", "batch", "s_per_step" (the fastest of 5 windows), "s_windows",
"compile_s", "shapes_per_s" (or "sketches_per_s"), "views_per_s", "gflop_per_step"
(`flops.step_flops`: traced, the same count on every backend), "tflops_per_s", "peak_tflops",
"mfu", "overrides", "xla_flags"}.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # lanes share the device

WIN = 0.02  # a variant is adopted into "combined" when it is this much faster than baseline
K = 4  # views per branch: 8 views per shape, as the goal states it
V = 12  # views rendered per shape

# The JAX config variants of the `gpu` teacher, in order of what they tell: the baseline first
# (today's settings), then one change each. "ablate" rows are not options (they leave work
# out): they measure what a part of the step costs.
# (name, kind, global batch, config overrides), measured in this order in one process.
JAX_VARIANTS = (
    ("gpu", "teacher", 128, {}),
    # The PyTorch twin's config (AdamW, 256-wide heads, no BCL): the JAX/PyTorch ratio row.
    ("ref", "teacher", 128, {}),
    ("gpu_aug_rows", "teacher", 128, {"augment.impl": "rows"}),
    ("distill_gpu", "distill", 256, {}),
    ("gpu_b256", "teacher", 256, {}),  # the `gpu` config's own global batch
    ("gpu_norm_batch", "teacher", 128, {"model.norm": "batch", "model.axis_name": "data"}),
    ("gpu_shard_map", "teacher", 128, {"parallel": "shard_map"}),
    ("distill_aug_rows", "distill", 256, {"augment_impl": "rows"}),
    ("gpu_norm_flax", "teacher", 128, {"model.norm": "group_flax"}),
    ("gpu_b64", "teacher", 64, {}),
    ("distill_b512", "distill", 512, {}),
    ("ablate_no_bcl", "teacher", 128, {"longtail.method": "none"}),  # what BCL costs
    ("ablate_f32", "teacher", 128, {"model.dtype": "float32"}),  # what bf16 gives
)
# The config variants "combined" waits for (the adoptable ones).
ADOPTABLE = ("gpu_aug_rows", "gpu_b256", "gpu_norm_batch", "gpu_shard_map", "gpu_norm_flax")
# XLA GPU flags, one process each, on the `gpu` teacher at batch 128.
FLAG_VARIANTS = (
    ("xla_no_triton_gemm", "--xla_gpu_enable_triton_gemm=false"),
    ("xla_nhwc", "--xla_gpu_force_conv_nhwc=true"),
    ("xla_no_command_buffer", "--xla_gpu_enable_command_buffer="),
    ("xla_conv_fusion", "--xla_gpu_experimental_enable_conv_fusion=true"),
    ("xla_autotune_0", "--xla_gpu_autotune_level=0"),
)
TORCH_MODES = ("eager", "default", "max-autotune-no-cudagraphs")


@contextlib.contextmanager
def _gpu_lock():
    """Exclusive use of the device while timing (a no-op unless SB3DR_GPU_LOCK names a file)."""
    path = os.environ.get("SB3DR_GPU_LOCK")
    if not path:
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _timed(step, sync, quick: bool) -> dict:
    """Compile time (first two calls), then windows of steps under the device lock.

    Returns:
      {"compile_s", "s_per_step" (the fastest window: another lane's compile can only slow a
      window down), "s_windows"}.
    """
    t0 = time.perf_counter()
    step()
    sync()
    step()  # the second call sees the step's own (donated) outputs
    sync()
    compile_s = time.perf_counter() - t0
    from benchmarks.timing import time_windows

    with _gpu_lock():
        t0 = time.perf_counter()
        for _ in range(2):
            step()
        sync()
        est = (time.perf_counter() - t0) / 2
        n, windows = (1, 1) if quick else (max(3, min(30, round(0.25 / est))), 5)
        out = time_windows(step, sync, steps=n, windows=windows, warmup=0)
    return {"compile_s": round(compile_s, 2), "s_per_step": min(out),
            "s_windows": [round(x, 5) for x in out], "steps_per_window": n}  # fmt: skip


def _override(c, overrides: dict) -> None:
    """Applies flattened overrides, refusing names the config lacks (a typo would be silent)."""
    for key, val in overrides.items():
        node, parts = c, key.split(".")
        for p in parts[:-1]:
            node = node[p]
        if parts[-1] not in node and key != "model.axis_name":
            raise ValueError(f"override {key!r}: no such field in the config")
        node[parts[-1]] = val


def teacher_parts(which: str, batch: int, res: int, overrides: dict, quick: bool):
    """(config, per-device step, host state, host batch) of the teacher step.

    Args:
      which: "gpu" (the `gpu` config; `smoke` at `quick`) or "ref" (the PyTorch twin's config,
        `torch_reference.teacher_config`).
      batch: global batch (shapes); res: view size.
      overrides: flattened config overrides.
      quick: tiny model (CPU check).
    """
    import numpy as np

    from sb3dr_jax import teacher
    from sb3dr_jax.configs.pretrain import get_config

    if which == "ref":
        from benchmarks.torch_reference import teacher_config

        preset = "resnet_tiny" if quick else "resnet18"
        c = teacher_config(preset, batch, K, "xla", "float32" if quick else "bfloat16")
    else:
        c = get_config("smoke,gpu" if quick else "gpu")
        c.ssl.views_per_branch = 3 if quick else K
        c.global_batch = batch
        if quick:  # the CPU check: the gpu config's paths on a model XLA:CPU compiles fast
            c.model.update(backbone="resnet_tiny", dtype="float32")
    _override(c, overrides)
    c.total_steps = 1000
    rs = np.random.RandomState(0)
    host = {
        "views": rs.randint(0, 255, (batch, V, res, res, 3)).astype(np.uint8),
        "index": rs.permutation(4 * batch)[:batch].astype(np.int32),
        "label": np.zeros((batch,), np.int32),
    }
    exp = teacher.build(
        c, example_views=host["views"][:1], num_shapes=4 * batch, num_views=V, steps_per_epoch=4
    )
    return c, exp.step, exp.state, host


def distill_parts(batch: int, res: int, overrides: dict, quick: bool):
    """(config, per-device step, host state, host batch, consts) of the `gpu` distill step
    (cached teacher table), as `train_steps.student` builds it."""
    from benchmarks.train_steps import student_parts
    from sb3dr_jax.configs import distill as distill_config
    from sb3dr_jax.configs import pretrain as pretrain_config

    arg = "smoke,gpu" if quick else "gpu"
    tcfg, c = pretrain_config.get_config(arg), distill_config.get_config(arg)
    c.global_batch = batch
    if quick:  # as in `teacher_parts`
        for cfg in (tcfg, c):
            cfg.model.update(backbone="resnet_tiny", dtype="float32")
    _override(c, overrides)
    c.total_steps = 100
    exp, host = student_parts(tcfg, c, batch, res)
    return c, exp.step, exp.state, host, exp.consts


def measure_jax(name: str, kind: str, batch: int, overrides: dict, quick: bool,
                profile_dir: str | None = None) -> dict:  # fmt: skip
    """Builds, compiles and times one JAX variant; FLOPs from its jaxpr.

    Returns:
      The variant's row (module docstring).
    """
    import jax
    import numpy as np

    from benchmarks.flops import step_flops
    from benchmarks.peak_flops import mfu, peak_flops
    from benchmarks.timing import jax_step_runner, on_devices
    from sb3dr_jax.train import data_parallel

    res = 32 if quick else 128
    t_build = time.perf_counter()
    if kind == "teacher":
        which = "ref" if name.startswith("ref") else "gpu"
        c, step, state, host = teacher_parts(which, batch, res, overrides, quick)
        consts, per_item = {}, 2 * int(c.ssl.views_per_branch)
    else:
        c, step, state, host, consts = distill_parts(batch, res, overrides, quick)
        per_item = 1
    flops = step_flops(step, state, host, jax.random.key(0), consts)  # traced, not compiled
    if c.model.get("stem") == "s2d":  # the model's maths, not the zero taps of the 8x8 kernel
        conv = {**overrides, "model.stem": "conv"}
        parts = (teacher_parts(which, batch, res, conv, quick) if kind == "teacher"
                 else distill_parts(batch, res, conv, quick))  # fmt: skip
        flops = step_flops(parts[1], parts[2], parts[3], jax.random.key(0), consts)
    dp = data_parallel(c.get("parallel", "pmap"), jax.devices()[:1])
    lead = lambda x: np.asarray(x)[None]  # [1, b, ...]: one device
    b = on_devices(dp, dp.shard(jax.tree_util.tree_map(lead, host)))
    run, sync = jax_step_runner(dp.step(step), dp.replicate(state), b, jax.random.key(0),
                                dp.replicate(consts))  # fmt: skip
    build_s = time.perf_counter() - t_build
    t = _timed(run, sync, quick)
    if profile_dir:
        _profile(run, sync, profile_dir)
    s = t["s_per_step"]
    kind_name = jax.devices()[0].device_kind
    peak = peak_flops(kind_name, c.model.dtype) if jax.default_backend() != "cpu" else None
    unit = "shapes_per_s" if kind == "teacher" else "sketches_per_s"
    return {
        "name": name,
        "kind": kind,
        "batch": batch,
        "views_per_item": per_item,
        **t,
        "build_s": round(build_s, 2),
        unit: round(batch / s, 1),
        "views_per_s": round(batch * per_item / s, 1),
        "gflop_per_step": round(flops / 1e9, 2),
        "tflops_per_s": round(flops / s / 1e12, 2),
        "peak_tflops": peak and round(peak / 1e12, 1),
        "mfu": peak and round(mfu(flops, s, peak), 4),
        "dtype": c.model.dtype,
        "device_kind": kind_name,
        "overrides": overrides,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _profile(run, sync, out_dir: str, steps: int = 3) -> None:
    """Traces `steps` steps (`jax.profiler`) and writes the device time per kernel and per
    category to `out_dir`/profile.json."""
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        with _gpu_lock():
            jax.profiler.start_trace(tmp)
            for _ in range(steps):
                run()
            sync()
            jax.profiler.stop_trace()
        paths = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        summary = summarize_trace(paths[0], steps) if paths else {"error": "no xplane.pb"}
    with open(os.path.join(out_dir, "profile.json"), "w") as f:
        json.dump(summary, f, indent=1)


CATEGORIES = (  # (category, substrings of a kernel name); the first match wins
    ("conv_wgrad", ("wgrad",)),
    ("conv_dgrad", ("dgrad",)),
    ("conv_fprop", ("fprop", "implicit_convolve", "conv2d", "convolution")),
    ("gemm", ("gemm", "nvjet", "cublas", "matmul", "dot")),
    ("cudnn_other", ("cudnn", "xmma", "cutlass")),
    ("gather", ("gather", "scatter", "dynamic_slice")),
    ("reduce", ("reduce", "reduction")),
    ("copy", ("memcpy", "memset", "copy", "transpose")),
    ("fusion", ("fusion", "loop_", "input_", "triton")),
)


def categorize(name: str) -> str:
    """A kernel's category by its name (`CATEGORIES`), "other" when nothing matches."""
    low = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")


def summarize_trace(path: str, steps: int, top: int = 40) -> dict:
    """Device time per step by kernel and by category, from a `jax.profiler` xplane file.

    Args:
      path: the `.xplane.pb` file.
      steps: how many steps the trace holds.
      top: kernels listed.

    Returns:
      {"plane", "ms_per_step" (busy time summed over the plane's streams), "by_category":
      {category: ms per step}, "top": [[kernel, ms per step, calls per step, category]]}.
    """
    from jax.profiler import ProfileData

    data = ProfileData.from_file(path)
    planes = list(data.planes)
    gpu = [p for p in planes if p.name.startswith("/device:GPU")]
    chosen = gpu or [p for p in planes if p.name.startswith("/host:CPU")]
    per: dict[str, list[float]] = {}
    hlo: dict[str, str] = {}
    lines = [ln for p in chosen for ln in p.lines]
    if gpu and any("Stream" in ln.name for ln in lines):  # the raw kernel lines (CUPTI)
        lines = [ln for ln in lines if "Stream" in ln.name]
    for line in lines:
        for ev in line.events:
            stats = dict(ev.stats)
            if not gpu and "hlo_op" not in stats:  # CPU: XLA's ops, not Python frames
                continue
            rec = per.setdefault(ev.name, [0.0, 0])
            rec[0] += ev.duration_ns / 1e6 / steps
            rec[1] += 1
            hlo.setdefault(ev.name, str(stats.get("hlo_op", stats.get("tf_op", ""))))
    by_cat: dict[str, float] = {}
    for name, (ms, _) in per.items():
        cat = categorize(name)
        by_cat[cat] = by_cat.get(cat, 0.0) + ms
    ranked = sorted(per.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "plane": chosen[0].name if chosen else None,
        "lines": sorted({ln.name for p in chosen for ln in p.lines})[:20],
        "ms_per_step": round(sum(ms for ms, _ in per.values()), 3),
        "by_category": {k: round(v, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top": [
            [n[:160], round(ms, 4), round(c / steps, 1), categorize(n), hlo.get(n, "")[:80]]
            for n, (ms, c) in ranked
        ],  # fmt: skip
    }


def _write(path: str, rows: list, extra: dict | None = None) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"rows": rows, **(extra or {})}, f, indent=1)
    os.replace(tmp, path)


def jax_lane(variants: list, out: str, quick: bool, profile_dir: str | None) -> None:
    """Measures `variants` [(name, kind, batch, overrides)] in this process, writing `out`
    after each row; a failing variant is recorded with its error."""
    import jax

    rows: list = []
    env = {"backend": jax.default_backend(), "jax": jax.__version__,
           "devices": [str(d) for d in jax.devices()]}  # fmt: skip
    for i, (name, kind, batch, ov) in enumerate(variants):
        t0 = time.perf_counter()
        try:
            prof = profile_dir if (i == 0 and profile_dir) else None
            row = measure_jax(name, kind, batch, ov, quick, prof)
        except Exception as e:  # noqa: BLE001 - one variant's failure must not end the lane
            row = {"name": name, "kind": kind, "batch": batch, "overrides": ov,
                   "error": f"{type(e).__name__}: {e}"[:2000],
                   "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        _write(out, rows, {"environment": env})
        print(f"[accel] {name}: {row.get('s_per_step', row.get('error'))}", flush=True)
        jax.clear_caches()


def torch_lane(mode: str, out: str, quick: bool) -> None:
    """The PyTorch twin of the `ref` teacher row, eager or under torch.compile, one mode."""
    import torch

    from benchmarks.peak_flops import mfu, peak_flops
    from benchmarks.torch_reference import _torch_step

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    preset, dtype, batch, res = ("resnet_tiny", "float32", 4, 32) if quick else (
        "resnet18", "bfloat16", 128, 128)  # fmt: skip
    t0 = time.perf_counter()
    step, sync = _torch_step(preset, batch, K, res, dtype, dev,
                             compile_mode=None if mode == "eager" else mode)  # fmt: skip
    row = {"name": f"torch_{mode}", "kind": "teacher", "batch": batch, "mode": mode,
           "device": dev, "torch": torch.__version__}  # fmt: skip
    row |= _timed(step, sync, quick)
    row["build_s"] = round(time.perf_counter() - t0 - row["compile_s"], 2)
    kind = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    flops = _ref_flops(quick)
    peak = peak_flops(kind, dtype) if dev == "cuda" else None
    s = row["s_per_step"]
    row |= {"shapes_per_s": round(batch / s, 1), "views_per_s": round(batch * 2 * K / s, 1),
            "gflop_per_step": round(flops / 1e9, 2), "tflops_per_s": round(flops / s / 1e12, 2),
            "peak_tflops": peak and round(peak / 1e12, 1),
            "mfu": peak and round(mfu(flops, s, peak), 4), "device_kind": kind}  # fmt: skip
    _write(out, [row])


def _ref_flops(quick: bool) -> float:
    """The `ref` teacher step's model FLOPs (the same maths as the PyTorch twin), traced on
    JAX's CPU backend in a child process, so this PyTorch process never initialises JAX's GPU."""
    code = ("import jax, json, sys; sys.path.insert(0, %r); from benchmarks import accel, flops; "
            "c, s, st, h = accel.teacher_parts('ref', %d, %d, {}, %s); "
            "print(flops.step_flops(s, st, h, jax.random.key(0), {}))")  # fmt: skip
    batch, res = (4, 32) if quick else (128, 128)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code % (ROOT, batch, res, quick)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def _spawn(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _rows(path: str) -> list:
    try:
        with open(path) as f:
            return json.load(f)["rows"]
    except (OSError, ValueError, KeyError):
        return []


def winners(rows: list, flag_rows: list) -> tuple[dict, list[str], int]:
    """The config overrides, XLA flags and batch that beat the `gpu` baseline by more than
    `WIN` per shape.

    Only the `ADOPTABLE` config rows and the flag rows count (not the ablations, not the `ref`
    config, not autotuning off). Overrides are merged in order; flags are joined; the batch is
    the baseline's unless a bigger one was faster per shape.

    Returns:
      (overrides, flags, global batch).
    """
    base = next((r for r in rows if r.get("name") == "gpu" and "s_per_step" in r), None)
    if base is None:
        return {}, [], 128
    per_shape = lambda r: r["s_per_step"] / r["batch"]
    fast = lambda r: "s_per_step" in r and per_shape(r) < (1 - WIN) * per_shape(base)
    ov: dict = {}
    batch = base["batch"]
    for r in rows:
        if r.get("name") in ADOPTABLE and fast(r):
            if r["batch"] != base["batch"]:
                batch = r["batch"]
            else:
                ov.update(r["overrides"])
    flags = [r["xla_flags"] for r in flag_rows if fast(r) and r.get("batch") == base["batch"]
             and "autotune_level=0" not in r["xla_flags"]]  # fmt: skip
    return ov, flags, batch


def orchestrate(out_dir: str, quick: bool, budget_s: float) -> dict:
    """Runs every lane within `budget_s` seconds and returns the merged results (also written
    to `out_dir`/accel_sweep.json)."""
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.perf_counter()
    lock = os.path.join(tempfile.gettempdir(), "sb3dr_gpu.lock")
    env = dict(os.environ, SB3DR_GPU_LOCK=lock, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    log = open(os.path.join(out_dir, "accel.log"), "a")
    f_jax, f_flags = (
        os.path.join(out_dir, "jax_variants.json"),
        os.path.join(out_dir, "jax_flags.json"),
    )
    variants = list(JAX_VARIANTS)
    if quick:  # tiny batches; one variant of each kind of change exercises every path
        keep = ("gpu", "ref", "gpu_aug_rows", "distill_aug_rows")
        variants = [(n, k, 8 if b > 128 else 4, ov) for n, k, b, ov in variants if n in keep]
    lanes: list[tuple[str, subprocess.Popen, float]] = []

    def deadline(frac: float) -> float:
        return t_start + frac * budget_s

    names_run = {v[0] for v in variants}
    variants = json.dumps(variants)
    lanes.append(("jax", _spawn(["--lane", "jax", "--variants", variants, "--out", f_jax,
                                 "--profile", out_dir] + (["--quick"] if quick else []), env, log),
                  deadline(0.80)))  # fmt: skip
    # PyTorch: one process per mode, one after another, beside the JAX lanes.
    tmp = tempfile.mkdtemp(prefix="sb3dr_accel_")
    torch_files = {m: os.path.join(tmp, f"torch_{m.split('-')[0]}.json") for m in TORCH_MODES}
    f_torch = os.path.join(out_dir, "torch.json")
    torch_limits = {"eager": 0.25, "default": 0.55, "max-autotune-no-cudagraphs": 0.92}
    flag_rows: list = []
    flags = list(FLAG_VARIANTS[:1] if quick else FLAG_VARIANTS)
    # On CPU, max-autotune only autotunes Triton GPU kernels: the CPU check skips it.
    pending_torch = list(TORCH_MODES[:2] if quick else TORCH_MODES)
    torch_proc = None
    flag_proc, flag_name = None, None
    combined_done = False
    while True:
        now = time.perf_counter()
        # PyTorch lane: start the next mode when the previous one ended.
        if torch_proc is None and pending_torch and importable("torch"):
            mode = pending_torch.pop(0)
            torch_proc = (mode, _spawn(["--lane", "torch", "--mode", mode, "--out",
                                        torch_files[mode]] + (["--quick"] if quick else []),
                                       env, log), deadline(torch_limits[mode]))  # fmt: skip
        if torch_proc is not None:
            mode, p, dl = torch_proc
            if p.poll() is not None or now > dl:
                _stop(p, torch_files[mode], f"torch_{mode}")
                _write(f_torch, [r for m in TORCH_MODES for r in _rows(torch_files[m])])
                torch_proc = None
        # XLA flag lane: one process per flag set, then the combination.
        if flag_proc is None and flags:
            flag_name, flag = flags.pop(0)
            fenv = dict(env, XLA_FLAGS=(env.get("XLA_FLAGS", "") + " " + flag).strip())
            f_one = os.path.join(tmp, f"sb3dr_{flag_name}.json")
            var = json.dumps([(flag_name, "teacher", 4 if quick else 128, {})])
            flag_proc = (_spawn(["--lane", "jax", "--variants", var, "--out", f_one]
                                + (["--quick"] if quick else []), fenv, log),
                         f_one, min(deadline(0.75), now + (600 if quick else 100)))  # fmt: skip
        elif flag_proc is None and not flags and not combined_done:
            jax_lane_done = lanes[0][1].poll() is not None
            base_rows = _rows(f_jax)
            names = {r.get("name") for r in base_rows}
            if jax_lane_done or all(n in names for n in ADOPTABLE if n in names_run):
                combined_done = True
                ov, fl, batch = winners(base_rows, flag_rows)
                if ov or fl or batch != 128:
                    fenv = dict(env, XLA_FLAGS=" ".join([env.get("XLA_FLAGS", "")] + fl).strip())
                    f_one = os.path.join(tmp, "sb3dr_combined.json")
                    var = json.dumps([("gpu_combined", "teacher", batch, ov)])
                    flag_proc = (_spawn(["--lane", "jax", "--variants", var, "--out", f_one]
                                        + (["--quick"] if quick else []), fenv, log),
                                 f_one, min(deadline(0.97), now + (600 if quick else 130)))  # fmt: skip
        if flag_proc is not None:
            p, f_one, dl = flag_proc
            if p.poll() is not None or now > dl:
                _stop(p, f_one, os.path.basename(f_one)[6:-5])
                flag_rows += _rows(f_one)
                _write(f_flags, flag_rows)
                flag_proc = None
        p_jax, dl_jax = lanes[0][1], lanes[0][2]
        if p_jax.poll() is None and now > dl_jax:
            p_jax.kill()
        done = (p_jax.poll() is not None and torch_proc is None and not pending_torch
                and flag_proc is None and not flags and combined_done)  # fmt: skip
        if done or now > deadline(1.0):
            break
        time.sleep(0.5)
    for p in (p_jax, *(x[1] for x in [torch_proc] if x), *(x[0] for x in [flag_proc] if x)):
        if p.poll() is None:
            p.kill()
    log.close()
    torch_rows = [r for m in TORCH_MODES for r in _rows(torch_files[m])]
    _write(f_torch, torch_rows)
    result = summarize(_rows(f_jax), flag_rows, torch_rows)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    _write(os.path.join(out_dir, "accel_sweep.json"), result.pop("rows"), result)
    return result


def importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _stop(p: subprocess.Popen, out: str, name: str) -> None:
    """Ends a lane process at its deadline; a lane killed before its first row gets an error
    row so the JSON says what happened."""
    if p.poll() is None:
        p.kill()
        p.wait()
        if not _rows(out):
            _write(out, [{"name": name, "error": "timed out (lane deadline)"}])
    elif p.returncode and not _rows(out):
        _write(out, [{"name": name, "error": f"process exited with {p.returncode}"}])


def summarize(jax_rows: list, flag_rows: list, torch_rows: list) -> dict:
    """Every row in one list, with each row's speed-up over the `gpu` baseline and the
    teacher ratios against the fastest PyTorch variant."""
    rows = jax_rows + flag_rows + torch_rows
    base = next((r for r in jax_rows if r.get("name") == "gpu" and "s_per_step" in r), None)
    ref = next((r for r in jax_rows if r.get("name") == "ref" and "s_per_step" in r), None)
    for r in rows:
        if base and "s_per_step" in r and r.get("kind") == "teacher" and r["name"] != "ref":
            if not r["name"].startswith("torch"):
                r["speedup_vs_gpu"] = round(base["s_per_step"] / r["s_per_step"]
                                            * r["batch"] / base["batch"], 3)  # fmt: skip
    timed = [r for r in torch_rows if "s_per_step" in r]
    fastest = min(timed, key=lambda r: r["s_per_step"], default=None)
    out: dict = {"rows": rows, "win_threshold": WIN}
    if fastest:
        out["fastest_torch"] = fastest["name"]
        if ref:
            out["ratio_ref_over_fastest_torch"] = round(
                fastest["s_per_step"] / ref["s_per_step"], 3
            )
        best = min((r for r in rows if r.get("kind") == "teacher" and "s_per_step" in r
                    and not r["name"].startswith(("torch", "ablate", "ref"))),
                   key=lambda r: r["s_per_step"] / r["batch"], default=None)  # fmt: skip
        if best:
            out["best_gpu_variant"] = best["name"]
            out["best_gpu_shapes_per_s"] = best.get("shapes_per_s")
            out["ratio_best_gpu_over_fastest_torch_per_shape"] = round(
                (fastest["s_per_step"] / fastest["batch"]) / (best["s_per_step"] / best["batch"]), 3
            )
    return out


# The default plan (`sequential`), one process at a time and in order of what it tells: the
# first run of the concurrent sweep (`orchestrate`) showed one lane's autotuning on the device
# slowing another lane's timed windows (the `ref` step read 31.3 ms there, 25.6 ms alone). Each
# entry: ("jax", variants[, XLA_FLAGS]) or ("torch", mode); what the budget does not reach is
# left out of the JSON (the README says which rows were measured).
SEQUENTIAL_PLAN = (
    ("jax", [("gpu", "teacher", 128, {}),  # today's `gpu` config (stem="s2d" since 2026-12-04)
             ("gpu_stem_conv", "teacher", 128, {"model.stem": "conv"}),  # the morning's step
             ("ref", "teacher", 128, {}), ("ref_s2d", "teacher", 128, {"model.stem": "s2d"}),
             ("gpu_b256", "teacher", 256, {})]),
    ("torch", "default"),
    ("torch", "eager"),
    ("jax", [("distill_gpu", "distill", 256, {}),
             ("distill_s2d", "distill", 256, {"model.stem": "s2d"}),
             ("gpu_aug_rows", "teacher", 128, {"augment.impl": "rows"}),
             ("gpu_pool_slices", "teacher", 128, {"model.pool": "slices"}),
             ("gpu_norm_batch", "teacher", 128, {"model.norm": "batch", "model.axis_name": "data"}),
             ("gpu_norm_flax", "teacher", 128, {"model.norm": "group_flax"}),
             ("gpu_shard_map", "teacher", 128, {"parallel": "shard_map"}),
             ("gpu_b64", "teacher", 64, {})]),
    ("jax", [("xla_autotune_0", "teacher", 128, {})], "--xla_gpu_autotune_level=0"),
    ("jax", [("xla_conv_fusion", "teacher", 128, {})],
     "--xla_gpu_experimental_enable_conv_fusion=true"),
    ("torch", "max-autotune-no-cudagraphs"),
)  # fmt: skip


# `--quick` (the CPU check): one of each kind of row, on tiny models.
QUICK_PLAN = (
    ("jax", [("gpu", "teacher", 4, {}), ("ref", "teacher", 4, {}),
             ("gpu_aug_rows", "teacher", 4, {"augment.impl": "rows"}),
             ("distill_gpu", "distill", 8, {})]),
    ("torch", "eager"),
)  # fmt: skip


def sequential(out_dir: str, quick: bool, budget_s: float, plan=None) -> dict:
    """Runs `plan` [("jax", variants[, XLA flags]) | ("torch", mode)] one process at a time
    within `budget_s`, each process killed at the budget's end; writes jax_variants.json,
    torch.json, profile.json (of the first JAX variant) and accel_sweep.json to `out_dir`,
    each after every process."""
    plan = plan or (QUICK_PLAN if quick else SEQUENTIAL_PLAN)
    os.makedirs(out_dir, exist_ok=True)
    t_end = time.perf_counter() + budget_s
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    tmp = tempfile.mkdtemp(prefix="sb3dr_accel_")
    jax_rows: list = []
    torch_rows: list = []
    with open(os.path.join(out_dir, "accel.log"), "a") as log:
        for i, (lane, what, *flags) in enumerate(plan):
            f = os.path.join(tmp, f"part{i}.json")
            penv = dict(env, XLA_FLAGS=" ".join([env.get("XLA_FLAGS", ""), *flags]).strip())
            if lane == "jax":
                args = ["--lane", "jax", "--variants", json.dumps(what), "--out", f]
                args += ["--profile", out_dir] if i == 0 else []
            else:
                args = ["--lane", "torch", "--mode", what, "--out", f]
            p = _spawn(args + (["--quick"] if quick else []), penv, log)
            try:
                p.wait(timeout=max(1.0, t_end - time.perf_counter()))
            except subprocess.TimeoutExpired:
                pass
            _stop(p, f, f"part{i}_{lane}")
            (jax_rows if lane == "jax" else torch_rows).extend(_rows(f))
            _write(os.path.join(out_dir, "jax_variants.json"), jax_rows)
            _write(os.path.join(out_dir, "torch.json"), torch_rows)
            if time.perf_counter() > t_end:
                break
    base = next((r for r in jax_rows if r.get("name") == "gpu"), None)
    result = summarize(jax_rows, [], torch_rows)
    result["note"] = "sequential plan" + ("" if base else "; no `gpu` baseline in this run")
    _write(os.path.join(out_dir, "accel_sweep.json"), result.pop("rows"), result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "accel"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all lanes")
    ap.add_argument("--lane", choices=("jax", "torch"))
    ap.add_argument("--variants", default="[]")
    ap.add_argument("--mode", default="eager")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--concurrent", action="store_true",
                    help="the lanes side by side (`orchestrate`) instead of SEQUENTIAL_PLAN")  # fmt: skip
    args = ap.parse_args()
    if args.lane == "jax":
        jax_lane([tuple(v) for v in json.loads(args.variants)], args.out, args.quick,
                 args.profile)  # fmt: skip
    elif args.lane == "torch":
        try:
            torch_lane(args.mode, args.out, args.quick)
        except Exception as e:  # noqa: BLE001 - recorded in the lane's JSON
            _write(args.out, [{"name": f"torch_{args.mode}", "error": f"{type(e).__name__}: {e}"[:2000],
                               "traceback": traceback.format_exc()[-3000:]}])  # fmt: skip
    else:
        run = orchestrate if args.concurrent else sequential
        res = run(args.out, args.quick, args.budget)
        print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
