"""Renderer throughput per backend: views/s on real PSB meshes (demo meshes when ../shared is absent).

python benchmarks/render.py [--quick]     # prints {"renderer": {...}}

Both backends render the same meshes (12 ring views, depth + shade + line) at 64 and 128 px,
interleaved mesh by mesh so that load from other jobs on a shared machine hits both alike. The
agreement block compares their per-pixel foreground and line masks at 128 px (the image-quality
half of the choice between them: the rasteriser must leave no holes and match the exact
ray-cast silhouettes).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESOLUTIONS = (64, 128)


def _backends() -> tuple[str, ...]:
    from sb3dr_jax.data.render import has_embree

    return ("raster", "embree") if has_embree() else ("raster",)


def _meshes(n: int) -> tuple[str, list]:
    """Returns (source name, up to n unit-sphere meshes)."""
    from sb3dr_jax.data.meshes import load_mesh

    base = os.environ.get("SB3DR_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    psb = pathlib.Path(base) / "tub16-psb-dev" / "models"
    if psb.is_dir():
        files = sorted(psb.glob("*.off"))[:n]
        return "tub16-psb-dev", [load_mesh(f) for f in files]
    import numpy as np

    from sb3dr_jax.data.demo import demo_classes, make_demo_mesh

    rng = np.random.default_rng(0)
    names = demo_classes()
    return "demo", [make_demo_mesh(names[i % len(names)], rng) for i in range(n)]


def _time_backends(meshes: list, res: int) -> dict[str, dict]:
    """Views/s per backend at one resolution (mesh-interleaved timing, one warm-up each)."""
    from sb3dr_jax.data.render import RenderConfig, render_views

    backends = _backends()
    cfgs = {b: RenderConfig(num_views=12, resolution=res, backend=b) for b in backends}
    total = dict.fromkeys(backends, 0.0)
    for b in backends:
        render_views(meshes[0], cfgs[b])  # warm-up: imports, Embree's first BVH build
    for m in meshes:
        for b in backends:
            t0 = time.perf_counter()
            render_views(m, cfgs[b])
            total[b] += time.perf_counter() - t0
    n = len(meshes)
    return {
        b: {"views_per_s": round(12 * n / total[b], 1), "meshes_per_s": round(n / total[b], 2)}
        for b in backends
    }


def _agreement(meshes: list, res: int = 128) -> dict:
    """Fraction of pixels where the backends' foreground / line masks differ."""
    import numpy as np

    from sb3dr_jax.data.render import RenderConfig, render_views

    if len(_backends()) < 2:
        return {"skipped": "embreex not installed: one backend only"}

    fg_diff, line_diff, pixels = 0, 0, 0
    for m in meshes:
        a, b = (render_views(m, RenderConfig(resolution=res, backend=k)) for k in _backends())
        fg_diff += int(((a[..., 0] > 0) != (b[..., 0] > 0)).sum())
        line_diff += int(((a[..., 2] > 0) != (b[..., 2] > 0)).sum())
        pixels += a[..., 0].size
    return {
        "resolution": res,
        "foreground_mismatch": float(np.format_float_scientific(fg_diff / pixels, 2)),
        "line_mismatch": float(np.format_float_scientific(line_diff / pixels, 2)),
    }


def run(quick: bool = False) -> dict:
    """Measures both backends at 64 and 128 px, 12 views, all three channels.

    Args:
      quick: 10 meshes instead of 40.

    Returns:
      {"source", "num_meshes", "mean_faces", "max_faces", "cpu_count", "default_backend",
       "by_resolution": {res: views/s of the default backend}, "backends": {backend: {res:
       {"views_per_s", "meshes_per_s"}}}, "agreement": {...}}.
    """
    from sb3dr_jax.data.render import RenderConfig, resolve_backend

    source, meshes = _meshes(10 if quick else 40)
    faces = [len(m.faces) for m in meshes]
    default = resolve_backend(RenderConfig().backend)
    per_res = {str(res): _time_backends(meshes, res) for res in RESOLUTIONS}
    return {
        "source": source,
        "num_meshes": len(meshes),
        "mean_faces": round(sum(faces) / len(faces), 1),
        "max_faces": max(faces),
        "cpu_count": os.cpu_count(),
        "default_backend": default,
        "by_resolution": {res: per_res[res][default] for res in per_res},
        "backends": {b: {res: per_res[res][b] for res in per_res} for b in _backends()},
        "agreement": _agreement(meshes[: 5 if quick else 20]),
    }


if __name__ == "__main__":
    print(json.dumps({"renderer": run(quick="--quick" in sys.argv)}, indent=2))
