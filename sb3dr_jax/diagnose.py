"""Retrieval diagnosis of a teacher and its students: `run(teacher_workdir, ...)`.

Writes one JSON with every figure of `docs/retrieval_diagnosis.md` (the functions are in
`sb3dr_jax.evals.diagnose`):

- `teacher`: the teacher's label-free shape space (k-NN, mAP, by group);
- `oracle`: the oracle student (query sketch -> its class centre) and the partly-right oracles;
- `batches`: share of anchors with an in-batch positive under each sampler;
- `raster`: ink share of sketches and of line views, and a zero-shot probe: the teacher's own
  encoder reads each sketch as a one-view shape with the sketch in the `line` channel, for
  the stored rasters and (QuickDraw strokes) re-rasterised at other stroke widths;
- `students`: per distilled workdir, retrieval of train / val / test sketches and the sketch-only
  class structure of its embeddings.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from sb3dr_jax.data import dataset_from_config
from sb3dr_jax.data.sketch_sampling import carve_validation, load_sketch_split
from sb3dr_jax.evals import diagnose as dg
from sb3dr_jax.evals.metrics import evaluate_retrieval
from sb3dr_jax.models.common import l2_normalize


def _encode(fn, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """fn(x [b, ...]) -> [b, E] over all images, in fixed-size batches (one compile)."""
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n,) + x.shape[1:], x.dtype)])
        out.append(np.asarray(fn(jnp.asarray(x)))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def sketch_as_view(images: np.ndarray, channels: list[str]) -> np.ndarray:
    """[N, S, S, 1] sketches -> [N, 1, S, S, C] one-view 'shapes', the sketch in `line`.

    Args:
      images: uint8 sketches (ink bright on 0, as the line channel draws).
      channels: the teacher's view channels.

    Returns:
      uint8 views with zeros in every channel but `line`.
    """
    if "line" not in channels:
        raise ValueError(
            f"zero-shot probe: the teacher's views have no 'line' channel ({channels})"
        )
    v = np.zeros(images.shape[:3] + (len(channels),), np.uint8)
    v[..., channels.index("line")] = images[..., 0]
    return v[:, None]


def _zero_shot(embed_fn, table, images, labels, train_images, train_labels, channels, nc, thr):
    """Teacher-encoder probe of sketches: sketch->shape mAP and sketch->sketch 1-NN."""
    q = _encode(embed_fn, sketch_as_view(images, channels))
    g = _encode(embed_fn, sketch_as_view(train_images, channels))
    # The gallery space: centred on the shapes' mean (teacher_table), unit length.
    q = np.asarray(l2_normalize(l2_normalize(q) - table.mean))
    g = np.asarray(l2_normalize(l2_normalize(g) - table.mean))
    rep = evaluate_retrieval(
        q, labels, table.features, table.labels, group_thresholds=thr, num_classes=nc
    )
    sk = dg.sketch_report(q, labels, g, train_labels, table.centres)
    return {
        **dg._brief(rep),
        "nn_acc_to_train": sk["nn_acc_to_train"],
        "ink": dg.ink_fraction(images),
    }


def _rerasterised(builder, layout_root: str, kind: str, split_ids, width: float, size: int):
    """QuickDraw sketches of a split re-rasterised at another stroke width (None: not strokes)."""
    from sb3dr_jax.data.layouts import read_layout
    from sb3dr_jax.data.sketches import rasterize_strokes, read_quickdraw_ndjson

    layout = read_layout(layout_root, kind)
    items = {s.sketch_id: s for s in layout.sketches}
    if not all(items[i].ndjson_key is not None for i in split_ids if i in items):
        return None
    cache: dict = {}
    out = []
    for i in split_ids:
        it = items[i]
        if it.path not in cache:
            cache[it.path] = read_quickdraw_ndjson(it.path)
        rec = cache[it.path][it.ndjson_key]["drawing"]
        out.append(rasterize_strokes(rec, size=size, stroke_width=width)[..., None])
    return np.stack(out)


def student_figures(export_dir: str, table, sets: dict, nc: int, thr) -> dict:
    """Retrieval and sketch structure of one student on named (images, labels) sets."""
    from sb3dr_jax.models import build_model
    from sb3dr_jax.serving.export import load_export

    params, meta, _ = load_export(export_dir)
    model = build_model("sketch_student", **meta["model"])
    fn = jax.jit(lambda x: model.apply({"params": params}, x, train=False)[0])
    emb = {k: _encode(fn, im) for k, (im, _) in sets.items()}
    out = {}
    for k, (_, y) in sets.items():
        rep = evaluate_retrieval(
            emb[k], y, table.features, table.labels, group_thresholds=thr, num_classes=nc
        )
        out[k] = dg._brief(rep)
        gallery = "train" if k != "train" else "test"
        out[k].update(dg.sketch_report(emb[k], y, emb[gallery], sets[gallery][1], table.centres))
    return out


def run(
    teacher_workdir: str,
    student_workdirs: list[str],
    output: str,
    *,
    raster_widths: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0),
    global_batch: int = 32,
    pk_k: int = 4,
) -> dict:
    """Diagnoses a teacher (and students distilled from it); writes `output` (JSON).

    Args:
      teacher_workdir: a pretrain workdir.
      student_workdirs: distill workdirs of that teacher (each with `export/`).
      output: the JSON path.
      raster_widths: stroke widths of the QuickDraw re-rasterisation probe.
      global_batch: the student's global batch (batch composition figures).
      pk_k: K of the P x K sampler in the batch figures.

    Returns:
      The report (dict).
    """
    from sb3dr_jax import teacher
    from sb3dr_jax.data.pipeline import eval_batches  # tf.data: only where data is read
    from sb3dr_jax.student import teacher_table
    from sb3dr_jax.train.loop import load_config
    from sb3dr_jax.train.parallel import data_parallel

    tconf = teacher.load_config(teacher_workdir)
    builder = dataset_from_config(tconf.dataset)
    dp = data_parallel("pmap")
    table = teacher_table(teacher.load(teacher_workdir, tconf), builder, dp, global_batch=64)
    meta = builder.info.metadata
    nc = len(meta["class_names"])
    thr = (int(tconf.eval.head_min), int(tconf.eval.tail_max))
    tr_im, tr_y, tr_ids = load_sketch_split(builder, "sketch_train")
    te_im, te_y, te_ids = load_sketch_split(builder, "sketch_test")
    report = {
        "dataset": builder.info.full_name,
        "teacher_workdir": teacher_workdir,
        "teacher_step": table.step,
        "num_shapes": len(table.labels),
        "num_train_sketches": len(tr_y),
        "num_test_sketches": len(te_y),
        "teacher": dg.teacher_report(table.features, table.labels, num_classes=nc, thresholds=thr),
        "oracle": dg.oracle_report(
            table.features,
            table.labels,
            table.centres,
            te_y,
            num_classes=nc,
            thresholds=thr,
        ),
        "batches": dg.batch_report(tr_y, global_batch=global_batch, pk_k=pk_k),
    }
    # Rasterisation: ink share of line views against sketches, and the zero-shot probe.
    chans = list(meta["render"]["channels"])
    views = next(eval_batches(builder, "shapes", global_batch=64))["views"]
    raster = {"line_view_ink": dg.ink_fraction(views[..., chans.index("line")])}
    if int(meta["sketch_size"]) == int(meta["render"]["resolution"]) and "line" in chans:
        model = table.teacher.model
        tparams = table.teacher.params
        embed = jax.jit(lambda v: model.apply({"params": tparams}, v, method="embed")[0])
        raster["stored"] = _zero_shot(embed, table, te_im, te_y, tr_im, tr_y, chans, nc, thr)
        raster["stored"]["stroke_width"] = float(tconf.dataset.stroke_width)
        for w in raster_widths if tconf.dataset.root else ():  # strokes live in a source folder
            size = int(meta["sketch_size"])
            kind = tconf.dataset.name if tconf.dataset.name != "shared" else "shared"
            te2 = _rerasterised(builder, tconf.dataset.root, kind, te_ids, w, size)
            if te2 is None:
                break
            tr2 = _rerasterised(builder, tconf.dataset.root, kind, tr_ids, w, size)
            raster[f"width={w:g}"] = _zero_shot(embed, table, te2, te_y, tr2, tr_y, chans, nc, thr)
    report["raster"] = raster
    report["students"] = {}
    for w in student_workdirs:
        sconf = load_config(w)
        sets = {"train": (tr_im, tr_y), "test": (te_im, te_y)}
        frac = float(sconf.get("sketch_data", {}).get("val_fraction", 0.0))
        if frac > 0:
            tr_idx, va_idx = carve_validation(tr_y, frac, int(sconf.sketch_data.val_seed))
            sets = {
                "train": (tr_im[tr_idx], tr_y[tr_idx]),
                "val": (tr_im[va_idx], tr_y[va_idx]),
                "test": (te_im, te_y),
            }
        report["students"][w] = student_figures(os.path.join(w, "export"), table, sets, nc, thr)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    return report


__all__ = ["run", "sketch_as_view", "student_figures"]
