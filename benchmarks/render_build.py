"""Dataset build throughput: the in-process TFDS build against Apache Beam with 1 and 2 workers.

    .venv-beam/bin/python benchmarks/render_build.py [--quick] [--out benchmarks/results/render_build.json]

Needs the `beam` extra (a venv: `python -m venv --system-site-packages .venv-beam &&
.venv-beam/bin/pip install -e '.[beam]'`); without it only the in-process rows are measured. Not part
of `run_all.py`: a run takes several minutes.

Every build is the one `launch.render` runs, on the PSB meshes of qd90-psb-dev (tub16-psb-dev,
or demo meshes, when ../shared lacks it): read the layout, load and render every mesh (12 ring
views of 64 px, depth + shade + line, the dataset default), encode and write the TFDS records.
Sketches are capped at one per split, so the figures are about meshes. Each build runs in a fresh process
on a fresh data_dir, at two sizes (a small and a large number of meshes), and the variants are
interleaved round by round (in a rotating order), so that load from other jobs on a shared
machine hits them alike. Per variant:

- `views_per_s`: 12 x meshes / build wall time at the large size (the median over rounds);
- `marginal_views_per_s`: the same from the difference between the two sizes, which removes
  the fixed cost (Beam's worker start-up, TensorFlow's import in each worker, ...): the rate a
  long build approaches; `fixed_s` is that fixed cost;
- `cpu_s_per_mesh`: CPU seconds (the build process and all its worker processes) per extra
  mesh, from the same difference. CPU time is what a busy machine does not inflate, so the
  projections use it: `projected_h_per_worker_core` is the hours one worker core needs for
  50,000 and 1,000,000 meshes (a cluster of K worker cores needs about 1/K of it, plus the
  fixed cost).

`per_mesh_without_tfds`: CPU seconds per mesh of loading and of rendering alone, on a quarter
of the large size's meshes, in this process: what the build adds on top is TFDS's share.

The JSON records the load average before each build: the machine this was measured on is
shared with other jobs, so its wall-time figures are below what an idle machine gives.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUM_VIEWS = 12
PROJECT_MESHES = (50_000, 1_000_000)


def _variants() -> dict[str, int | None]:
    """Variant name -> Beam workers (None: in-process)."""
    out: dict[str, int | None] = {"in_process": None}
    if importlib.util.find_spec("apache_beam") is not None:
        out.update({"beam_1_worker": 1, "beam_2_workers": 2})
    return out


def _source(tmp: pathlib.Path) -> tuple[str, str, int]:
    """(name, folder in the shared layout, number of meshes in it)."""
    from sb3dr_jax.configs.common import shared_data_root
    from sb3dr_jax.data.layouts import read_shared_layout

    for name in ("qd90-psb-dev", "tub16-psb-dev"):  # 692 and 110 PSB meshes
        root = pathlib.Path(shared_data_root(name))
        if (root / "classes" / "Model.cla").exists():
            break
    else:
        from sb3dr_jax.data.demo import build_demo

        root, name = tmp / "demo_src", "demo"
        build_demo(root, num_classes=10, max_shapes_per_class=30, sketch_size=64)
    return name, str(root), len(read_shared_layout(root).shapes)


def _stage_costs(source: str, meshes: int) -> dict:
    """CPU seconds per mesh of loading and of rendering alone (this process, no TFDS), on the
    same meshes and settings as the builds: the rest of a build's CPU per mesh is TFDS's
    encoding (zlib), serialising and writing."""
    from sb3dr_jax.configs.common import dataset_config
    from sb3dr_jax.data.layouts import read_shared_layout
    from sb3dr_jax.data.meshes import load_mesh
    from sb3dr_jax.data.render import RenderConfig, render_views

    cfg = dataset_config("shared")
    render = RenderConfig(num_views=NUM_VIEWS, resolution=int(cfg.render.resolution))
    shapes = read_shared_layout(pathlib.Path(source)).shapes[:meshes]
    render_views(load_mesh(shapes[0].path, max_faces=cfg.max_faces), render)  # warm-up
    load_s = render_s = 0.0
    for item in shapes:
        t0 = time.process_time()
        mesh = load_mesh(item.path, max_faces=cfg.max_faces)
        t1 = time.process_time()
        render_views(mesh, render)
        load_s, render_s = load_s + t1 - t0, render_s + time.process_time() - t1
    return {
        "meshes": len(shapes),
        "load_cpu_s_per_mesh": round(load_s / len(shapes), 4),
        "render_cpu_s_per_mesh": round(render_s / len(shapes), 4),
        "render_views_per_cpu_s": round(NUM_VIEWS * len(shapes) / render_s, 1),
    }


def _child(source: str, meshes: int, workers: int, data_dir: str) -> None:
    """One build (in this process); prints {"build_s": ...} as its last line."""
    from sb3dr_jax.configs.common import dataset_config
    from sb3dr_jax.data import dataset_from_config

    beam = None
    if workers:
        from sb3dr_jax.data.beam_build import BeamConfig

        beam = BeamConfig(workers=workers)
    cfg = dataset_config("shared")
    cfg.root, cfg.data_dir = source, data_dir
    cfg.max_shapes, cfg.max_sketches = meshes, 1
    start = time.perf_counter()
    builder = dataset_from_config(cfg, beam=beam)
    elapsed = time.perf_counter() - start
    assert builder.info.splits["shapes"].num_examples > 0
    print(json.dumps({"build_s": elapsed, "shapes": builder.info.splits["shapes"].num_examples}))


def _one_build(source: str, meshes: int, workers: int | None, tmp: pathlib.Path) -> dict:
    """Runs one build in a fresh process; its wall time, CPU time and the load before it."""
    data_dir = tempfile.mkdtemp(dir=tmp)
    cmd = [sys.executable, __file__, "--child", source, str(meshes), str(workers or 0), data_dir]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(data_dir, ignore_errors=True)
    if p.returncode:
        raise RuntimeError(f"build failed ({' '.join(cmd)}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "meshes": out["shapes"],
        "build_s": round(out["build_s"], 2),
        "cpu_s": round(cpu, 2),  # the whole process tree, imports included
        "load_avg_1min_before": round(load, 2),
    }


def _summary(runs: list[dict]) -> dict:
    """Medians per size, then rates at the large size and from the difference of the sizes."""
    sizes = sorted({r["meshes"] for r in runs})
    med = {
        n: {
            k: statistics.median(r[k] for r in runs if r["meshes"] == n)
            for k in ("build_s", "cpu_s")
        }
        for n in sizes
    }
    small, large = sizes[0], sizes[-1]
    dn = large - small
    d_wall = med[large]["build_s"] - med[small]["build_s"]
    d_cpu = med[large]["cpu_s"] - med[small]["cpu_s"]
    cpu_per_mesh = d_cpu / dn
    return {
        "views_per_s": round(NUM_VIEWS * large / med[large]["build_s"], 1),
        "marginal_views_per_s": round(NUM_VIEWS * dn / d_wall, 1) if d_wall > 0 else None,
        "fixed_s": round(med[small]["build_s"] - small * d_wall / dn, 1),
        "cpu_s_per_mesh": round(cpu_per_mesh, 4),
        "views_per_cpu_s": round(NUM_VIEWS / cpu_per_mesh, 1) if cpu_per_mesh > 0 else None,
        "projected_h_per_worker_core": {
            str(n): round(n * cpu_per_mesh / 3600, 1) for n in PROJECT_MESHES
        },
        "median_by_size": {str(n): med[n] for n in sizes},
    }


def run(quick: bool = False, rounds: int | None = None) -> dict:
    """Measures every variant at two sizes, interleaved round by round.

    Args:
      quick: 4 and 12 meshes, one round (a check that it runs); else 60 and 480.
      rounds: rounds of every (variant, size) build (default 2; 1 when quick).

    Returns:
      {"source", "sizes", "rounds", "per_mesh_without_tfds": {load and render CPU s per mesh},
       "variants": {name: {"workers", "runs": [...], summary}}, "environment": {...}}.
    """
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="render_build_"))
    try:
        name, source, available = _source(tmp)
        sizes = (4, 12) if quick else (60, min(available, 480))
        rounds = rounds or (1 if quick else 2)
        variants = _variants()
        runs: dict[str, list] = {v: [] for v in variants}
        order = list(variants)
        for r in range(rounds):
            for v in order[r % len(order) :] + order[: r % len(order)]:  # rotate the order
                for n in sizes:
                    res = _one_build(source, n, variants[v], tmp)
                    runs[v].append(res)
                    print(f"[render_build] round {r} {v} {n} meshes: {res}", file=sys.stderr)
        stages = _stage_costs(source, sizes[-1] // 4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "source": name,
        "render": {"num_views": NUM_VIEWS, "resolution": 64, "channels": "depth,shade,line"},
        "sizes": list(sizes),
        "rounds": rounds,
        "per_mesh_without_tfds": stages,
        "variants": {
            v: {"workers": variants[v] or 0, **_summary(runs[v]), "runs": runs[v]} for v in variants
        },
        "environment": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "machine_note": "a 2-core machine shared with other jobs (see load_avg_1min_before)",
            "apache_beam": _beam_version(),
        },
    }


def _beam_version() -> str | None:
    if importlib.util.find_spec("apache_beam") is None:
        return None
    import apache_beam

    return apache_beam.__version__


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        source, meshes, workers, data_dir = argv[1:5]
        _child(source, int(meshes), int(workers), data_dir)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "render_build.json"))
    args = parser.parse_args(argv)
    result = {"render_build": run(quick=args.quick, rounds=args.rounds)}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
