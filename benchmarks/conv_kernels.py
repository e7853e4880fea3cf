"""Per-layer convolution time: XLA:CPU's own kernels against the oneDNN custom calls.

    python benchmarks/conv_kernels.py [--quick]

Every distinct convolution of the CPU teacher (resnet_tiny on 64 px views, one 16-view chunk as
`view_chunk=16` runs it): forward alone, and forward + input gradient + weight gradient (a
`jax.vjp`), each jitted, timed side by side in one process. The stem's input gradient is not
needed in training (XLA drops it) but is timed here like every other layer's.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
from jax import lax  # noqa: E402

from sb3dr_jax.kernels import onednn  # noqa: E402

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


def _ms(fn, *args, iters: int) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters * 1e3


def run(quick: bool = False) -> dict:
    """Times each layer with both kernels.

    Returns:
      {"layers": [{name, xla_fwd_ms, onednn_fwd_ms, xla_fwd_bwd_ms, onednn_fwd_bwd_ms,
      onednn_kernels}], "total_fwd_bwd_ms": {"xla", "onednn"}, "speedup"} or {"skipped"}.
    """
    if not onednn.available():
        return {"skipped": f"oneDNN kernels unavailable: {onednn.unavailable_reason()}"}
    iters = 5 if quick else 30
    rows, totals = [], {"xla": 0.0, "onednn": 0.0}
    for name, xs, ws, s in LAYERS[:2] if quick else LAYERS:
        kx, kw, kg = jax.random.split(jax.random.key(0), 3)
        x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
        row = {"name": name}
        for impl, conv in (
            ("xla", lax.conv_general_dilated),
            ("onednn", onednn.conv_general_dilated),
        ):
            f = lambda x, w, conv=conv: conv(x, w, (s, s), "SAME", dimension_numbers=DN)
            g = jax.random.normal(kg, jax.eval_shape(f, x, w).shape)
            fb = jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g))
            row[f"{impl}_fwd_ms"] = round(_ms(jax.jit(f), x, w, iters=iters), 3)
            row[f"{impl}_fwd_bwd_ms"] = round(_ms(fb, x, w, g, iters=iters), 3)
            totals[impl] += row[f"{impl}_fwd_bwd_ms"]
        row["onednn_kernels"] = {
            op: onednn.impl_info(op, xs, ws, (s, s)) for op in ("fwd", "bwd_data", "bwd_w")
        }
        rows.append(row)
    return {
        "layers": rows,
        "total_fwd_bwd_ms": {k: round(v, 2) for k, v in totals.items()},
        "speedup": round(totals["xla"] / totals["onednn"], 2),
        "threads_per_call": os.environ.get(
            "SB3DR_ONEDNN_THREADS", "1 (every layer here is under SB3DR_ONEDNN_PARALLEL_MACS)"
        ),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
