"""The CPU JAX/PyTorch teacher-step ratio of two checkouts, measured side by side in one run.

    python benchmarks/refactor_ratio.py --before /work/main [--rounds 16] [--out FILE]

A refactor must not slow the step (issue 17: "the CPU JAX/PyTorch ratio must not regress").
Timing the two checkouts in separate runs on a shared machine compares two different machines'
moods, so this starts three live step servers (`torch_reference._StepServer`): the JAX step of
the `--before` checkout (its own `benchmarks/torch_reference.py`, which imports its own
`sb3dr_jax`), the JAX step of this checkout, and PyTorch (on tcmalloc when installed, as
`torch_reference` prefers), and alternates ~1 s samples of each, round by round, the order
rotating (`torch_reference.alternate`). Each ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import torch_reference as tr  # noqa: E402
from sb3dr_jax import allocator  # noqa: E402


def measure(before: str, case: tuple, rounds: int) -> dict:
    """Times before/after JAX and PyTorch on one CPU case; returns the row.

    Args:
      before: the other checkout's root (its `benchmarks/torch_reference.py` serves its step).
      case: (preset, global batch, views per branch, px, dtype), as `torch_reference.CPU_CASES`.
      rounds: alternation rounds.

    Returns:
      Seconds per step per round of each server, and the median per-round ratios.
    """
    preset, batch, k, res, dtype = case
    c = dict(preset=preset, batch=batch, k=k, res=res, dtype=dtype, steps=None, windows=1,
             torch_device="cpu")  # fmt: skip
    torch_fw = "torch_tcmalloc" if allocator.find_tcmalloc() else "torch"
    script = os.path.join(before, "benchmarks", "torch_reference.py")
    starts = {
        "jax_before": lambda: tr._StepServer("jax", c, script=script),
        "jax_after": lambda: tr._StepServer("jax", c),
        "torch": lambda: tr._StepServer(torch_fw, c),
    }
    times, servers = tr.alternate(starts, rounds)
    t = times["torch"]
    before_r = tr.per_round_ratios(t, times["jax_before"])
    after_r = tr.per_round_ratios(t, times["jax_after"])
    after_over_before = tr.per_round_ratios(times["jax_before"], times["jax_after"])
    return {
        "preset": preset,
        "batch": batch,
        "views_per_shape": 2 * k,
        "res": res,
        "dtype": dtype,
        "torch_framework": torch_fw,
        "jax_allocator": servers["jax_after"].info.get("allocator"),
        "s_per_step": times,
        "ratio_jax_over_torch_before": before_r[0],
        "ratio_quartiles_before": before_r[1],
        "ratio_jax_over_torch_after": after_r[0],
        "ratio_quartiles_after": after_r[1],
        "speed_after_over_before": after_over_before[0],
        "speed_quartiles_after_over_before": after_over_before[1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="root of the checkout before the change")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--cases", default="0", help="indices into torch_reference.CPU_CASES")
    p.add_argument("--out", default="")
    a = p.parse_args()
    rows = [measure(a.before, tr.CPU_CASES[int(i)], a.rounds) for i in a.cases.split(",")]
    doc = {
        "what": "CPU JAX/PyTorch teacher-step ratio, before and after, servers alternating",
        "before": os.path.abspath(a.before),
        "after": ROOT,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "rounds": a.rounds,
        "cases": rows,
    }
    text = json.dumps(doc, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
