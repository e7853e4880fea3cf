"""Per-layer convolution time: XLA:CPU's kernels, the oneDNN custom calls, and PyTorch.

    python benchmarks/conv_kernels.py [--quick]

1. Every distinct convolution of the CPU teacher (resnet_tiny on 64 px views, one 16-view chunk
   as `view_chunk=16` runs it), XLA's kernels against the oneDNN custom calls: forward alone,
   and forward + input gradient + weight gradient (a `jax.vjp` whose output is also returned, so
   the forward is not dropped), each jitted, side by side in one process. The stem's input
   gradient is not needed in training but is timed like every other layer's.
2. Every distinct convolution of ResNet-18 on 64 px views, 64 views per call (the unchunked
   `backbone=resnet18` step at batch 8), the oneDNN custom calls (threads by size, as in the
   step) against PyTorch's channels-last `conv2d` and its backward (oneDNN inside PyTorch, all
   cores), PyTorch in a child process so neither framework's threads spin beside the other's.
   Summed as a teacher step runs them (online forward + backward, target forward), this is the
   convolution time the two frameworks' ResNet-18 steps cannot go below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.peak_flops import cpu_count  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
# (name, input [N, H, W, C], kernel [KH, KW, C, O], stride): resnet_tiny at 64 px, 16 views.
LAYERS = [
    ("stem 3x3/2, 64 px, 3->16", (16, 64, 64, 3), (3, 3, 3, 16), 2),
    ("3x3, 32 px, 16->16", (16, 32, 32, 16), (3, 3, 16, 16), 1),
    ("3x3/2, 32 px, 16->32", (16, 32, 32, 16), (3, 3, 16, 32), 2),
    ("1x1/2 shortcut, 32 px, 16->32", (16, 32, 32, 16), (1, 1, 16, 32), 2),
    ("3x3, 16 px, 32->32", (16, 16, 16, 32), (3, 3, 32, 32), 1),
    ("3x3, 8 px, 64->64", (16, 8, 8, 64), (3, 3, 64, 64), 1),
    ("3x3, 4 px, 128->128", (16, 4, 4, 128), (3, 3, 128, 128), 1),
]
# (name, input, kernel, stride, convolutions of this shape in one ResNet-18 encoder): 64 views.
RESNET18_LAYERS = [
    ("stem 3x3/2, 64 px, 3->64", (64, 64, 64, 3), (3, 3, 3, 64), 2, 1),
    ("3x3, 32 px, 64->64", (64, 32, 32, 64), (3, 3, 64, 64), 1, 4),
    ("3x3/2, 32 px, 64->128", (64, 32, 32, 64), (3, 3, 64, 128), 2, 1),
    ("1x1/2, 32 px, 64->128", (64, 32, 32, 64), (1, 1, 64, 128), 2, 1),
    ("3x3, 16 px, 128->128", (64, 16, 16, 128), (3, 3, 128, 128), 1, 3),
    ("3x3/2, 16 px, 128->256", (64, 16, 16, 128), (3, 3, 128, 256), 2, 1),
    ("1x1/2, 16 px, 128->256", (64, 16, 16, 128), (1, 1, 128, 256), 2, 1),
    ("3x3, 8 px, 256->256", (64, 8, 8, 256), (3, 3, 256, 256), 1, 3),
    ("3x3/2, 8 px, 256->512", (64, 8, 8, 256), (3, 3, 256, 512), 2, 1),
    ("1x1/2, 8 px, 256->512", (64, 8, 8, 256), (1, 1, 256, 512), 2, 1),
    ("3x3, 4 px, 512->512", (64, 4, 4, 512), (3, 3, 512, 512), 1, 3),
]


def _ms(fn, *args, iters: int, sync=None) -> float:
    """Mean milliseconds per call after one warm-up call."""
    sync = sync or (lambda out: out)
    sync(fn(*args))
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    sync(out)
    return (time.perf_counter() - t0) / iters * 1e3


def jax_layer_fns(conv, stride: int):
    """(forward, forward + both gradients) of one convolution as jitted JAX functions.

    The second returns the output with the gradients: a vjp whose output is unused lets XLA
    drop the forward (custom calls and convolutions alike), timing the gradients alone.
    """
    import jax

    def f(x, w):
        return conv(x, w, (stride, stride), "SAME", dimension_numbers=DN)

    def fwd_bwd(x, w, g):
        y, vjp = jax.vjp(f, x, w)
        return y, vjp(g)

    return jax.jit(f), jax.jit(fwd_bwd)


def _jax_times(conv, xs, ws, s, iters: int) -> dict:
    import jax

    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
    fwd, fwd_bwd = jax_layer_fns(conv, s)
    g = jax.random.normal(kg, jax.eval_shape(fwd, x, w).shape)
    sync = jax.block_until_ready
    return {
        "fwd_ms": round(_ms(fwd, x, w, iters=iters, sync=sync), 3),
        "fwd_bwd_ms": round(_ms(fwd_bwd, x, w, g, iters=iters, sync=sync), 3),
    }


def _torch_times(layers: list, iters: int) -> list[dict]:
    """PyTorch channels-last forward and forward + backward of each layer (this process)."""
    import torch

    torch.set_num_threads(cpu_count())
    out = []
    for _, xs, ws, s, _ in layers:
        n, h, w_, c = xs
        x = torch.randn(n, c, h, w_).contiguous(memory_format=torch.channels_last)
        w = torch.randn(ws[3], ws[2], ws[0], ws[1]).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        w.requires_grad_(True)
        pad = ws[0] // 2

        def fwd():
            with torch.no_grad():
                return torch.nn.functional.conv2d(x, w, stride=s, padding=pad)

        g = torch.randn_like(fwd())

        def fwd_bwd():
            y = torch.nn.functional.conv2d(x, w, stride=s, padding=pad)
            y.backward(g)
            return y

        out.append({"fwd_ms": round(_ms(fwd, iters=iters), 3),
                    "fwd_bwd_ms": round(_ms(fwd_bwd, iters=iters), 3)})  # fmt: skip
    return out


def _resnet18_vs_torch(quick: bool) -> dict:
    """ResNet-18's layers: oneDNN custom calls here, PyTorch in a child; per layer the fastest
    of 4 rounds (the order alternating), since a slow spell of a shared machine can last a
    whole round of one framework."""
    from sb3dr_jax.kernels import onednn

    layers = RESNET18_LAYERS[:2] if quick else RESNET18_LAYERS
    iters, rounds = (2, 1) if quick else (10, 4)
    best: dict[str, list[dict]] = {}
    for r in range(rounds):
        for fw in ("torch", "onednn") if r % 2 == 0 else ("onednn", "torch"):
            if fw == "torch":
                cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker",
                       json.dumps(layers), str(iters)]  # fmt: skip
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode:
                    return {"skipped": f"PyTorch worker failed: {res.stderr[-500:]}"}
                times = json.loads(res.stdout.strip().splitlines()[-1])
            else:
                times = [_jax_times(onednn.conv_general_dilated, xs, ws, s, iters)
                         for _, xs, ws, s, _ in layers]  # fmt: skip
            prev = best.get(fw, times)
            best[fw] = [{k: min(a[k], b[k]) for k in a} for a, b in zip(prev, times)]
    rows, step = [], {"onednn": 0.0, "torch": 0.0}
    for (name, *_, count), o, t in zip(layers, best["onednn"], best["torch"]):
        rows.append({"name": name, "count": count,
                     **{f"onednn_{k}": v for k, v in o.items()},
                     **{f"torch_{k}": v for k, v in t.items()}})  # fmt: skip
        for fw, tt in (("onednn", o), ("torch", t)):  # online fwd + bwd, target fwd
            step[fw] += count * (tt["fwd_bwd_ms"] + tt["fwd_ms"])
    return {
        "layers": rows,
        "step_conv_ms": {k: round(v, 1) for k, v in step.items()},
        "torch_over_onednn": round(step["torch"] / step["onednn"], 3),
        "views_per_call": layers[0][1][0],
        "iters": iters,
        "rounds": rounds,
    }


def run(quick: bool = False) -> dict:
    """Times each layer with each kernel.

    Returns:
      {"layers": [{name, xla_fwd_ms, onednn_fwd_ms, xla_fwd_bwd_ms, onednn_fwd_bwd_ms,
      onednn_kernels}], "total_fwd_bwd_ms": {"xla", "onednn"}, "speedup", "threads_per_call",
      "resnet18_vs_torch": {"layers": [{name, count, onednn_*_ms, torch_*_ms}],
      "step_conv_ms": {"onednn", "torch"}, "torch_over_onednn"} (or {"skipped"} without
      PyTorch)}, or {"skipped"} without the oneDNN kernels.
    """
    from jax import lax

    from sb3dr_jax.kernels import onednn

    if not onednn.available():
        return {"skipped": f"oneDNN kernels unavailable: {onednn.unavailable_reason()}"}
    iters = 5 if quick else 30
    rows, totals = [], {"xla": 0.0, "onednn": 0.0}
    for name, xs, ws, s in LAYERS[:2] if quick else LAYERS:
        row = {"name": name}
        for impl, conv in (
            ("xla", lax.conv_general_dilated),
            ("onednn", onednn.conv_general_dilated),
        ):
            for k, v in _jax_times(conv, xs, ws, s, iters).items():
                row[f"{impl}_{k}"] = v
            totals[impl] += row[f"{impl}_fwd_bwd_ms"]
        row["onednn_kernels"] = {
            op: onednn.impl_info(op, xs, ws, (s, s)) for op in ("fwd", "bwd_data", "bwd_w")
        }
        rows.append(row)
    try:
        import torch  # noqa: F401

        vs_torch = _resnet18_vs_torch(quick)
    except ImportError:
        vs_torch = {"skipped": "PyTorch is not installed: pip install -e '.[torch]'"}
    return {
        "layers": rows,
        "total_fwd_bwd_ms": {k: round(v, 2) for k, v in totals.items()},
        "speedup": round(totals["xla"] / totals["onednn"], 2),
        "threads_per_call": os.environ.get(
            "SB3DR_ONEDNN_THREADS", "1 (every layer here is under SB3DR_ONEDNN_PARALLEL_MACS)"
        ),
        "resnet18_vs_torch": vs_torch,
    }


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--torch-worker":
        print(json.dumps(_torch_times(json.loads(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
