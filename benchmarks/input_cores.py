"""The teacher's input pipeline per host core: can one host feed one GPU? (issue 20, item 4)

Builds the demo set at the `gpu` configs' view resolution (128 px, 12 views, 3 channels, uint8,
zlib records as every build stores them), then times `shape_batches` in child processes pinned
to 1 and to 2 cores (`taskset`, tf.data's thread pool sized to match), once streaming (the
records inflated every epoch) and once with the decoded views cached in host memory
(`dataset.cache_gib`). Each child reports wall views/s and views per CPU-second (user + system
time of every thread): the second is the per-core rate, and it holds on a busy machine too.
From it, the host cores one GPU needs:

    cores = demand views/s / (views per CPU-second)

for the measured `gpu` teacher step (5,590 shapes/s on one H200, `accel_2026-12-04_run2`) and
the issue's goal (10,000 shapes/s); the records hold all 12 views and the step draws its 8 on
the device, so the host ships 12 per shape.

    python benchmarks/input_cores.py [--quick] [--out FILE.json]
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Shapes per second one H200 consumes: the measured `gpu` teacher step and the goal.
DEMAND_SHAPES_PER_S = {"h200_measured_2026-12-04": 5590.0, "h200_goal": 10000.0}
HOST_CORES = 16  # the H200 machine's host


def _dataset_cfg(quick: bool, data_dir: str):
    from sb3dr_jax.configs.common import dataset_config

    cfg = dataset_config("demo", smoke=quick)
    cfg.render.resolution = 32 if quick else 128
    cfg.data_dir = data_dir
    return cfg


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(data_dir: str, quick: bool, threads: int, cache: bool) -> dict:
    """Times `shape_batches` in this (pinned) process.

    Args:
      data_dir: where the records were built.
      quick: the small build.
      threads: tf.data's private thread pool.
      cache: keep the decoded views in memory (timed after the first, filling pass).

    Returns:
      {"views_per_s", "views_per_cpu_s", "cpu_per_wall", "batches", "views_per_batch"}.
    """
    from sb3dr_jax.data import dataset_from_config
    from sb3dr_jax.data.pipeline import shape_batches

    builder = dataset_from_config(_dataset_cfg(quick, data_dir))
    num_shapes = builder.info.splits["shapes"].num_examples
    gb = 16 if quick else 64
    it = shape_batches(
        builder, global_batch=gb, seed=0, cache_gib=64.0 if cache else 0.0, threads=threads
    )
    # Warm-up: a full pass (fills the cache, or reaches the steady streaming state).
    for _ in range(-(-num_shapes // gb) + 2):
        views = next(it)["views"]
    n = 4 if quick else 40
    per_batch = int(views.shape[0] * views.shape[1] * views.shape[2])
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for _ in range(n):
        next(it)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {
        "views_per_s": round(n * per_batch / wall, 1),
        "views_per_cpu_s": round(n * per_batch / cpu, 1),
        "cpu_per_wall": round(cpu / wall, 3),
        "batches": n,
        "views_per_batch": per_batch,
        "view_shape": list(views.shape[3:]),
    }


def _pinned(data_dir: str, quick: bool, cores: int, cache: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", data_dir, str(cores), str(int(cache))]
    cmd += ["--quick"] if quick else []
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < cores:
        return {"skipped": f"only {len(avail)} cores available"}
    pin = ["taskset", "-c", ",".join(map(str, avail[:cores]))] if shutil.which("taskset") else []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    out = subprocess.run(pin + cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    """Builds the records once and times every (mode, cores) pair in its own process.

    Returns:
      {"rows": {"<mode>_<cores>core": child figures}, "host_cores_per_gpu": {...}, ...}.
    """
    data_dir = tempfile.mkdtemp(prefix="sb3dr_input_cores_")
    try:
        from sb3dr_jax.data import dataset_from_config

        builder = dataset_from_config(_dataset_cfg(quick, data_dir))
        rows = {}
        for mode in ("stream", "cache"):
            for cores in (1, 2):
                rows[f"{mode}_{cores}core"] = _pinned(data_dir, quick, cores, mode == "cache")
        # The host ships every view the records hold; the step draws its 8 on the device.
        views_per_shape = int(builder.info.metadata["render"]["num_views"])
        need = {}
        for mode in ("stream", "cache"):
            rate = rows[f"{mode}_1core"].get("views_per_cpu_s")
            for name, shapes in DEMAND_SHAPES_PER_S.items():
                views = shapes * views_per_shape
                need[f"{mode}_{name}"] = {
                    "views_per_s": views,
                    "host_cores": round(views / rate, 1) if rate else None,
                    "fits_16_core_host": bool(rate) and views / rate <= HOST_CORES,
                }
        return {
            "dataset": builder.info.full_name,
            "shapes": builder.info.splits["shapes"].num_examples,
            "records_mib": round(
                sum(f.stat().st_size for f in pathlib.Path(builder.data_dir).glob("*shapes*"))
                / 2**20,
                2,
            ),
            "rows": rows,
            "host_cores_per_gpu": need,
            "load_average_1min": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        d, threads, cache = sys.argv[i + 1], int(sys.argv[i + 2]), bool(int(sys.argv[i + 3]))
        print(json.dumps(child(d, "--quick" in sys.argv, threads, cache)))
        sys.exit(0)
    result = run(quick="--quick" in sys.argv)
    text = json.dumps(result, indent=2)
    if "--out" in sys.argv:
        pathlib.Path(sys.argv[sys.argv.index("--out") + 1]).write_text(text + "\n")
    print(text)
