"""Writes what the web front end shows into an export: thumbnails, view strips, web meshes and
the benchmark sketches of the test split (format: `sb3dr_jax.serving.assets`).

Called by `distill.run` right after the student and the index are saved. The thumbnails and
view strips come from the already rendered views in the TFDS records (no rendering here); the
meshes are read from the dataset's source folder, decimated to a browser-sized face budget by
the same vertex clustering the renderer's input went through, and written as binary glTF by
trimesh; sketches are re-read from their source files at display size (falling back to the
record image when a source is gone), so the browser shows them sharp.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import multiprocessing
import os
import pathlib
import shutil
import time

import numpy as np
from PIL import Image

from sb3dr_jax.data.errors import DataError
from sb3dr_jax.serving.assets import FORMAT_VERSION, MANIFEST, WEB_DIR

THUMB_MIN = 128  # thumbnails are upsampled to at least this side (the records hold 32-64 px)


def display_view(view: np.ndarray, channels: list[str]) -> np.ndarray:
    """Turns one rendered view into a grey picture a person reads: white paper, shaded
    surface, dark lines.

    Args:
      view: uint8 [H, W, C], the record's channels (0 = background, see docs/DESIGN.md).
      channels: the names of the C channels (any of "depth", "shade", "line").

    Returns:
      uint8 [H, W].
    """
    ch = {name: view[..., i].astype(np.float32) for i, name in enumerate(channels)}
    fg = np.zeros(view.shape[:2], bool)
    for a in ch.values():
        fg |= a > 0
    surface = ch.get("shade", ch.get("depth"))
    grey = np.full(view.shape[:2], 255.0, np.float32)
    grey[fg] = 80.0 + 0.65 * surface[fg] if surface is not None else 200.0
    if "line" in ch:
        grey[ch["line"] > 0] = 35.0
    return np.clip(grey, 0, 255).astype(np.uint8)


def _png(img: np.ndarray, min_side: int = 0) -> bytes:
    im = Image.fromarray(img)
    if min_side and min(im.size) < min_side:
        f = -(-min_side // min(im.size))
        im = im.resize((im.width * f, im.height * f), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _glb(path: pathlib.Path, max_faces: int) -> bytes:
    from sb3dr_jax.data.meshes import load_mesh

    mesh = load_mesh(path, max_faces=max_faces)
    mesh.vertices = mesh.vertices.astype(np.float32)
    return mesh.export(file_type="glb")


def _convert_mesh(job: tuple) -> tuple[int, str | None]:
    """(row, source path or None, output path, face budget) -> (row, error or None)."""
    i, src, out, max_faces = job
    if src is None:
        return i, "no source mesh in the dataset folder"
    try:
        pathlib.Path(out).write_bytes(_glb(src, max_faces))
    except DataError as e:
        return i, str(e)
    return i, None


def _source_layout(source_root: str | None, kind: str):
    """The dataset's source layout, or None (with the reason) when it cannot be read."""
    from sb3dr_jax.data.layouts import read_layout

    if not source_root or not os.path.isdir(source_root):
        return None, f"source folder {source_root!r} not found"
    try:
        return read_layout(source_root, kind), ""
    except DataError as e:
        return None, str(e)


def write_web_assets(
    export_dir: str | os.PathLike,
    builder,
    index,
    *,
    source_root: str | None,
    layout_kind: str = "auto",
    mesh_faces: int = 4000,
    sketch_split: str = "sketch_test",
    sketch_display_size: int = 256,
    workers: int = 1,
) -> dict:
    """Writes `<export_dir>/web/` (replacing an older one).

    Args:
      export_dir: the export folder (holding the index).
      builder: the prepared TFDS builder the gallery came from (its records hold the views).
      index: the `RetrievalIndex` of the export (row order = file names).
      source_root: the dataset's source folder (meshes, sketch files); None or missing means
        no web meshes, and sketches from the records.
      layout_kind: the source layout kind ("shared", "shrec13", "shrec14", "auto").
      mesh_faces: face budget of each web mesh.
      sketch_split: the records' split whose sketches the front end offers.
      sketch_display_size: side of the saved benchmark sketches.
      workers: processes for mesh conversion (capped at the CPU count). The default is 1:
        on 2 shared cores 2 processes were not faster for tub16's 110 meshes (22.0-28.8 s
        against 19.5-23.6 s in this process; the OFF parser of `data/meshes.py` takes ~0.2 s
        a PSB mesh), so more pay off only where more cores are free.

    Returns:
      A summary: counts, skipped items with reasons, seconds taken.
    """
    import tensorflow_datasets as tfds

    from sb3dr_jax.data.sketches import load_sketch, rasterize_strokes, read_quickdraw_ndjson

    t0 = time.perf_counter()
    root = pathlib.Path(export_dir) / WEB_DIR
    tmp = root.with_name(WEB_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("thumbs", "views", "meshes", "sketches"):
        (tmp / sub).mkdir(parents=True)
    meta = builder.info.metadata
    channels = list(meta["render"]["channels"])
    row = {m: i for i, m in enumerate(index.model_ids)}
    skipped: list[dict] = []

    # Thumbnails and view strips from the records (already rendered at build time).
    models: list[dict] = [
        {"id": m, "label": index.class_names[int(index.labels[i])], "num_views": 0}
        for i, m in enumerate(index.model_ids)
    ]
    for ex in tfds.as_numpy(builder.as_dataset(split="shapes")):
        i = row.get(ex["id"].decode())
        if i is None:
            continue
        views = [display_view(v, channels) for v in ex["views"]]  # V x [H, W]
        thumb = views[1 if len(views) > 1 else 0]  # ring view 1: a three-quarter view
        (tmp / "thumbs" / f"{i}.png").write_bytes(_png(thumb, THUMB_MIN))
        (tmp / "views" / f"{i}.png").write_bytes(_png(np.concatenate(views, axis=1)))
        models[i].update(thumbnail=f"thumbs/{i}.png", views=f"views/{i}.png", num_views=len(views))

    # Web meshes from the source files.
    layout, why = _source_layout(source_root, layout_kind)
    if layout is None:
        skipped.append({"item": "meshes", "reason": why})
    else:
        paths = {s.model_id: s.path for s in layout.shapes}
        jobs = [
            (i, paths.get(m), tmp / "meshes" / f"{i}.glb", mesh_faces)
            for i, m in enumerate(index.model_ids)
        ]
        n_proc = min(max(1, workers), os.cpu_count() or 1)
        if n_proc > 1 and len(jobs) > 1:
            # The OFF parser is pure Python (GIL-bound): processes, started with spawn because
            # the caller already runs JAX's and TensorFlow's threads (fork would copy their
            # locks mid-use).
            ctx = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(n_proc, mp_context=ctx)
            chunk = max(1, len(jobs) // (4 * n_proc))
        else:
            pool, chunk = concurrent.futures.ThreadPoolExecutor(1), 1
        with pool:
            for i, err in pool.map(_convert_mesh, jobs, chunksize=chunk):
                if err is None:
                    models[i]["mesh"] = f"meshes/{i}.glb"
                else:
                    skipped.append({"item": f"mesh {index.model_ids[i]}", "reason": err})

    # Benchmark sketches of the test split, dark ink on white paper.
    split = sketch_split.removeprefix("sketch_")
    (tmp / "sketches" / split).mkdir()
    sources = {}
    if layout is not None:
        sources = {s.sketch_id: s for s in layout.sketches if s.split == split}
    ndjson: dict = {}
    scale = sketch_display_size / float(meta["sketch_size"])
    class_names = list(meta["class_names"])
    sketches = []
    for n, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=sketch_split))):
        sid = ex["id"].decode()
        img = None
        item = sources.get(sid)
        try:
            if item is not None and item.ndjson_key is None:
                img = load_sketch(item.path, size=sketch_display_size)
            elif item is not None:
                if item.path not in ndjson:
                    ndjson[item.path] = read_quickdraw_ndjson(item.path)
                img = rasterize_strokes(
                    ndjson[item.path][item.ndjson_key]["drawing"],
                    size=sketch_display_size,
                    stroke_width=float(builder.builder_config.stroke_width) * scale,
                )
        except DataError as e:
            skipped.append({"item": f"sketch {sid}", "reason": f"{e}; the record's image is used"})
        if img is None:  # the record's own image, upsampled
            img = np.asarray(
                Image.fromarray(ex["image"][..., 0]).resize(
                    (sketch_display_size, sketch_display_size), Image.Resampling.BICUBIC
                )
            )
        (tmp / "sketches" / split / f"{n}.png").write_bytes(_png(255 - img))
        sketches.append(
            {
                "id": sid,
                "label": class_names[int(ex["label"])],
                "split": split,
                "file": f"sketches/{split}/{n}.png",
            }
        )

    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": builder.info.full_name,
        "channels": channels,
        "mesh_faces": int(mesh_faces),
        "models": models,
        "sketches": sketches,
        "skipped": skipped,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)  # a reader never sees a half-written folder
    return {
        "models": len(models),
        "meshes": sum("mesh" in m for m in models),
        "sketches": len(sketches),
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
    }
