"""Renderer throughput: views/s on real PSB meshes (or demo meshes when ../shared is absent).

python benchmarks/render.py [--quick]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _meshes(n: int):
    from sb3dr_jax.data.meshes import load_mesh

    psb = ROOT.parent / "shared" / "data" / "tub16-psb-dev" / "models"
    if psb.is_dir():
        files = sorted(psb.glob("*.off"))[:n]
        return "tub16-psb-dev", [load_mesh(f) for f in files]
    import numpy as np

    from sb3dr_jax.data.demo import demo_classes, make_demo_mesh

    rng = np.random.default_rng(0)
    names = demo_classes()
    return "demo", [make_demo_mesh(names[i % len(names)], rng) for i in range(n)]


def run(quick: bool = False) -> dict:
    """Renders V=12 views of each mesh at 64 and 128 px, all three channels.

    Returns:
      {"source", "num_meshes", "mean_faces", "by_resolution": {res: {"views_per_s", ...}}}.
    """
    from sb3dr_jax.data.render import RenderConfig, render_views

    source, meshes = _meshes(10 if quick else 40)
    out = {
        "source": source,
        "num_meshes": len(meshes),
        "backend": "embree ray casting",
        "mean_faces": round(sum(len(m.faces) for m in meshes) / len(meshes), 1),
        "cpu_count": os.cpu_count(),
        "by_resolution": {},
    }
    for res in (64, 128):
        cfg = RenderConfig(num_views=12, resolution=res)
        render_views(meshes[0], cfg)  # warm-up (builds the BVH code paths)
        t0 = time.perf_counter()
        for m in meshes:
            render_views(m, cfg)
        dt = time.perf_counter() - t0
        out["by_resolution"][str(res)] = {
            "views_per_s": round(12 * len(meshes) / dt, 1),
            "meshes_per_s": round(len(meshes) / dt, 2),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
