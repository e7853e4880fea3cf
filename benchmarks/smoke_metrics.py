"""Every logged metric of the smoke pretrain + distill runs, for bit-identity checks.

A refactor that must not change training (the library/run split of issue 17) runs this before
and after, on the two code bases, and compares the JSONs:

    PYTHONPATH=/work/main python benchmarks/smoke_metrics.py \
        --out benchmarks/results/smoke_metrics_before.json
    PYTHONPATH=. python benchmarks/smoke_metrics.py \
        --out benchmarks/results/smoke_metrics_after.json --compare \
        benchmarks/results/smoke_metrics_before.json

It trains the smoke teacher with each SSL and long-tail method, and the smoke student from the
default teacher with the config variants the experiment scripts use (`no_kd`,
`plain_triplet`, `pkaug`, `val`, `balanced`, `online_teacher`), on 2 fake CPU devices (so the
cross-device gathers run), through the public `run(config, workdir)` of each trainer only:
the same script runs unchanged on either side of an API change. Wall-clock metrics
(`*/steps_per_s`) are dropped; every other logged scalar is kept at full float precision.
"""

from __future__ import annotations

import os

# Before JAX starts: 2 host devices (so the cross-device gathers run), CPU only, quiet TF.
for _var, _value in {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
                     "CUDA_VISIBLE_DEVICES": ""}.items():  # fmt: skip
    os.environ.setdefault(_var, _value)
_FLAGS = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_force_host_platform_device_count=2".strip()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# (name, pretrain config arg) and (name, distill config arg); all student runs distil from
# the first teacher.
TEACHERS = (
    ("byol_bcl", "smoke"),
    ("simsiam_bcl", "smoke,method=simsiam"),
    ("per_view_bcl", "smoke,method=per_view"),
    ("byol_sdclr", "smoke,longtail=sdclr"),
    ("simsiam_sdclr", "smoke,method=simsiam,longtail=sdclr"),
    ("byol_none", "smoke,longtail=none"),
)
STUDENTS = (
    ("ssltkd", "smoke"),
    ("no_kd", "smoke,no_kd"),
    ("plain_triplet", "smoke,plain_triplet"),
    ("pkaug", "smoke,pkaug"),
    ("val", "smoke,val"),
    ("balanced", "smoke,balanced"),
    ("online_teacher", "smoke,online_teacher"),
)


def _metrics(workdir: str) -> list[dict]:
    """The run's metrics.jsonl rows without wall-clock figures, NaN as a string."""
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            keep = {}
            for k, v in sorted(r.items()):
                if k.endswith("steps_per_s") or k in ("time", "wall_time"):
                    continue
                keep[k] = "nan" if isinstance(v, float) and math.isnan(v) else v
            rows.append(keep)
    return rows


def collect(root: str, only: set[str] | None = None) -> dict:
    """Runs every variant under `root`; returns {"pretrain/<name>": rows, "distill/<name>"}.

    Args:
      root: scratch folder (datasets and workdirs).
      only: variant names to run (None: all; the first teacher always runs).

    Returns:
      The logged metrics of each run, in run order.
    """
    from sb3dr_jax import distill, pretrain
    from sb3dr_jax.configs import distill as distill_config
    from sb3dr_jax.configs import pretrain as pretrain_config

    data_dir = os.path.join(root, "tfds")
    out = {}
    teacher_wd = None
    for name, arg in TEACHERS:
        if only and name not in only and teacher_wd is not None:
            continue
        cfg = pretrain_config.get_config(arg)
        cfg.dataset.data_dir = data_dir
        wd = os.path.join(root, f"pretrain_{name}")
        pretrain.run(cfg, wd)
        out[f"pretrain/{name}"] = _metrics(wd)
        teacher_wd = teacher_wd or wd
        print(f"[smoke_metrics] pretrain/{name} done", flush=True)
    for name, arg in STUDENTS:
        if only and name not in only:
            continue
        cfg = distill_config.get_config(arg)
        cfg.dataset.data_dir = data_dir
        cfg.teacher_workdir = teacher_wd
        cfg.export.web = False  # thumbnails and meshes log no metric
        wd = os.path.join(root, f"distill_{name}")
        distill.run(cfg, wd)
        out[f"distill/{name}"] = _metrics(wd)
        print(f"[smoke_metrics] distill/{name} done", flush=True)
    return out


def compare(a: dict, b: dict) -> list[str]:
    """The differences between two collections: one line per run, key or value that differs."""
    diffs = []
    for run in sorted(set(a) | set(b)):
        if run not in a or run not in b:
            diffs.append(f"{run}: only in {'after' if run not in a else 'before'}")
            continue
        ra, rb = a[run], b[run]
        if len(ra) != len(rb):
            diffs.append(f"{run}: {len(ra)} rows before, {len(rb)} after")
        for i, (x, y) in enumerate(zip(ra, rb)):
            for k in sorted(set(x) | set(y)):
                if x.get(k) != y.get(k):
                    diffs.append(f"{run} row {i} {k}: {x.get(k)!r} -> {y.get(k)!r}")
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--compare", help="a previous JSON: print every difference, exit 1 if any")
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = p.parse_args()
    only = {s for s in args.only.split(",") if s} or None
    with tempfile.TemporaryDirectory() as root:
        got = collect(root, only)
    import jax

    doc = {
        "what": "every logged metric of the smoke pretrain/distill variants (2 CPU devices)",
        "jax": jax.__version__,
        "code": os.path.abspath(os.path.dirname(sys.modules["sb3dr_jax"].__file__)),
        "runs": got,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    print(f"[smoke_metrics] {len(got)} runs -> {args.out}", flush=True)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)["runs"]
        diffs = compare(before, got)
        print("\n".join(diffs) if diffs else "[smoke_metrics] bit-identical", flush=True)
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
