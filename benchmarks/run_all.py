"""Runs every benchmark in one process and writes one JSON file.

    python benchmarks/run_all.py [--quick] [--out benchmarks/results/latest.json] [--only a,b]

Each module in BENCHMARKS exposes `run(quick: bool) -> dict`. Ratios (pipeline vs trivial
consumer, cached vs online teacher, JAX vs PyTorch) are measured side by side inside one module
run, so they are comparable; a module that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import platform
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# On a GPU, in-process benchmarks and the PyTorch reference's worker processes share the device:
# each allocates what it uses instead of 75% of the memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Order matters only for readability of the output.
BENCHMARKS = (
    "render",
    "pipeline",
    "input_cores",
    "train_steps",
    "conv_kernels",
    "torch_reference",
    "retrieval",
)


def _environment() -> dict:
    import jax

    from sb3dr_jax import allocator
    from sb3dr_jax.models.resnet import resolve_conv_impl

    return {
        # The CPU configs' "auto" convolutions: "onednn" (sb3dr_jax/kernels) or "xla".
        "conv_impl": resolve_conv_impl("auto"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "allocator": allocator.active(),  # tcmalloc when the launchers would use it
    }


def main(argv: list[str] | None = None) -> dict:
    """Runs the selected benchmarks and writes the combined JSON.

    Args:
      argv: command-line arguments (see module docstring).

    Returns:
      The combined results dict that was written.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a fast check")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    parser.add_argument(
        "--only", default="", help="comma-separated subset of " + ",".join(BENCHMARKS)
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    results: dict = {"environment": _environment(), "quick": args.quick}
    for name in names:
        start = time.perf_counter()
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            results[name] = module.run(quick=args.quick)
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not hide the others
            results[name] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
        results[name]["wall_s"] = round(time.perf_counter() - start, 2)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    print(json.dumps(results, indent=2))
    print(f"[run_all] wrote {out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    from sb3dr_jax import allocator

    allocator.reexec_with_tcmalloc()  # time the steps as the launchers run them
    main()
