"""Distil the student: data -> teacher table -> `student.build` -> `fit` -> export -> evaluation.

The student itself (model, loss terms, step, the teacher table) lives in
`sb3dr_jax/student.py` (METHODS.md section 3).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from sb3dr_jax import allocator, student
from sb3dr_jax import teacher as teacher_lib
from sb3dr_jax.data import dataset_from_config, require_splits
from sb3dr_jax.data.web_assets import write_web_assets
from sb3dr_jax.evals.ann import IndexConfig
from sb3dr_jax.evals.index import RetrievalIndex
from sb3dr_jax.evaluate import evaluate_student
from sb3dr_jax.serving.export import save_export
from sb3dr_jax.student import teacher_table
from sb3dr_jax.train import data_parallel, fit
from sb3dr_jax.train.encode import embed_arrays
from sb3dr_jax.train.loop import save_config, write_metrics

SUMMARY_KEYS = ("NN", "FT", "ST", "E", "DCG", "mAP", "mAP_shrec_matlab", "mAP_pr_mean")


def _with_paired_views(batches, table, shape_views, seed: int):
    """Online-teacher mode: the host picks each sketch's paired shape and attaches its views."""
    rng = np.random.default_rng(seed)
    for batch in batches:
        lab = batch["label"]
        idx = np.empty_like(lab)
        for pos, c in np.ndenumerate(lab):
            n = table.counts[c]
            idx[pos] = table.members[c, rng.integers(n)] if n else 0
        yield {**batch, "views": shape_views[idx]}


def _shape_views(builder, ids: list[str]) -> np.ndarray:
    """All shapes' views in the teacher table's row order (for the online teacher).

    Args:
      builder: the dataset.
      ids: the table's model ids (its rows follow the evaluation iteration order).

    Returns:
      [N, V, H, W, C] uint8, row i = the views of model `ids[i]`.
    """
    import tensorflow_datasets as tfds

    by_id = {
        ex["id"].decode(): ex["views"] for ex in tfds.as_numpy(builder.as_dataset(split="shapes"))
    }
    return np.stack([by_id[i] for i in ids])


def _train_batches(config, builder):
    """The training batch iterator, and the validation set (images, labels) or None.

    The streaming tf.data pipeline serves the original recipe (shuffle or `class_balanced`,
    no validation split); a `sketch_data.sampler` of "pk" or "balanced", or a validation split,
    holds the (small) training split in memory and picks each batch on the host.
    """
    from sb3dr_jax.data import sketch_sampling as ss
    from sb3dr_jax.data.pipeline import (
        per_device_batch,
        sketch_batches,  # tf.data: only where data is read
    )

    sd = config.get("sketch_data") or ml_collections.ConfigDict(
        dict(sampler="shuffle", pk_k=4, val_fraction=0.0, val_seed=0)
    )
    if sd.sampler not in ss.SAMPLERS:
        raise ValueError(f"sketch_data.sampler: unknown {sd.sampler!r}; choose from {ss.SAMPLERS}")
    if sd.sampler == "shuffle" and not sd.val_fraction:
        batches = sketch_batches(
            builder,
            "sketch_train",
            global_batch=config.global_batch,
            seed=config.seed,
            class_balanced=config.class_balanced,
        )
        return batches, None
    images, labels, _ = ss.load_sketch_split(builder, "sketch_train")
    train_idx, val_idx = ss.carve_validation(labels, float(sd.val_fraction), int(sd.val_seed))
    pc, d = jax.process_count(), jax.local_device_count()
    per_device_batch(int(config.global_batch), pc, d)  # the divisibility check, early
    sampler = "balanced" if sd.sampler == "shuffle" and config.class_balanced else sd.sampler
    idx = ss.index_batches(
        labels[train_idx],
        sampler=sampler,
        global_batch=int(config.global_batch),
        seed=int(config.seed),
        pk_k=int(sd.pk_k),
    )
    batches = ss.device_batches(
        images[train_idx],
        labels[train_idx],
        idx,
        process_index=jax.process_index(),
        process_count=pc,
        local_devices=d,
    )
    val = (images[val_idx], labels[val_idx]) if len(val_idx) else None
    return batches, val


def evaluate_arrays(dp, model, params, images, labels, index, config) -> dict:
    """Retrieval summary of in-memory query sketches (the validation split) against `index`,
    embedded over every device and host."""
    from sb3dr_jax import evals

    fn = dp.map_fn(lambda p, x: model.apply({"params": p}, x, train=False)[0])
    return evals.evaluate_retrieval(
        embed_arrays(dp, fn, dp.replicate(params), images, int(config.eval.global_batch)),
        labels,
        index.embeddings,
        index.labels,
        class_names=index.class_names,
        group_thresholds=(int(config.eval.head_min), int(config.eval.tail_max)),
        num_classes=len(index.class_names),
    )


def resolve_config(config, teacher_config):
    """Takes the teacher's dataset block unless the user chose one."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.dataset_from_teacher:
        config.dataset = teacher_config.dataset
    return config


def run(config, workdir: str):
    """Distils the sketch student; writes checkpoints, metrics, `export/` to `workdir`.

    Args:
      config: a ConfigDict from `sb3dr_jax/configs/distill.py`.
      workdir: output folder (resumed when it holds checkpoints).

    Returns:
      The evaluation summary (dict) of the test sketches against all shapes.

    Raises:
      FileNotFoundError: no teacher checkpoint (the message names the command to run first).
      ConfigError: the teacher folder holds another kind of run, or `loss.terms` names an
        unknown term (both before any data is read).
    """
    # The teacher's config first: it names the dataset, and a wrong folder fails before work.
    teacher_config = teacher_lib.load_config(config.teacher_workdir)
    config = resolve_config(config, teacher_config)
    student.loss_terms(config)  # an unknown loss term fails before the dataset is built
    save_config(config, workdir)
    dp = data_parallel(config.parallel)
    builder = dataset_from_config(config.dataset)
    require_splits(builder, ("shapes", "sketch_train", "sketch_test"), needed_by="distill")
    table = teacher_table(
        teacher_lib.load(config.teacher_workdir, teacher_config),
        builder,
        dp,
        global_batch=int(config.eval.global_batch),
    )
    meta = builder.info.metadata
    s = int(meta["sketch_size"])
    exp = student.build(
        config, table, sketch_size=s, view_channels=list(meta["render"]["channels"])
    )
    batches, val_set = _train_batches(config, builder)
    if config.online_teacher:
        batches = _with_paired_views(batches, table, _shape_views(builder, table.ids), config.seed)
    if jax.process_index() == 0:
        print(
            f"[distill] teacher step {table.step} ({table.teacher_id}), "
            f"{builder.info.splits['sketch_train'].num_examples} train sketches, "
            f"{config.total_steps} steps on {dp.num_devices} devices, {allocator.active()} malloc",
            flush=True,
        )
    final = fit(
        config=config, workdir=workdir, dp=dp, batches=batches,
        total_steps=int(config.total_steps), **exp.fit_args(),
    )  # fmt: skip
    index = _export(config, workdir, builder, table, exp, final.params)
    return _final_evaluation(config, workdir, dp, builder, index, exp.model, final.params, val_set)


def _export(config, workdir: str, builder, table, exp, params) -> RetrievalIndex:
    """Writes `workdir/export` (student, retrieval index, web assets); returns the index.

    Called before the final evaluation, so a failure there loses no training.
    """
    meta = builder.info.metadata
    index = RetrievalIndex(
        table.features,
        table.ids,
        table.labels,
        list(meta["class_names"]),
        table.teacher_id,
        {"dataset": builder.info.full_name, "teacher_step": table.step},
        index_config=IndexConfig.from_config(config.export),
    )
    if jax.process_index() != 0:
        return index
    student_config = {
        "model": student.model_kwargs(config, exp.info["embed_dim"]),
        "sketch_size": int(meta["sketch_size"]),
    }
    save_export(
        os.path.join(workdir, "export"),
        student_params=params,
        student_config=student_config,
        index=index,
        teacher_id=table.teacher_id,
    )
    if config.export.web:
        web = write_web_assets(
            os.path.join(workdir, "export"),
            builder,
            index,
            source_root=getattr(builder, "source_dir", None) or config.dataset.root or None,
            layout_kind=builder.builder_config.kind if config.dataset.root else "auto",
            mesh_faces=int(config.export.mesh_faces),
            workers=int(config.export.mesh_workers),
        )
        skipped = (
            f"; skipped {len(web['skipped'])} (see web/manifest.json)" if web["skipped"] else ""
        )
        print(
            f"[distill] web assets: {web['models']} thumbnails, {web['meshes']} meshes, "
            f"{web['sketches']} sketches in {web['seconds']:.1f}s{skipped}",
            flush=True,
        )
    return index


def _final_evaluation(config, workdir, dp, builder, index, model, params, val_set) -> dict:
    """Test (and validation) sketches against the gallery; logged at the last step.

    Returns:
      The test summary, with the validation summary under "val" when there is one.
    """
    summary = evaluate_student(
        dp,
        model,
        params,
        builder,
        index,
        split="sketch_test",
        global_batch=int(config.eval.global_batch),
        group_thresholds=(int(config.eval.head_min), int(config.eval.tail_max)),
    )
    scalars = {f"eval/sketch_test/{k}": summary[k] for k in SUMMARY_KEYS}
    scalars.update({f"eval/sketch_test/mAP_{g}": r["mAP"] for g, r in summary["groups"].items()})
    if val_set is not None:
        val = evaluate_arrays(dp, model, params, *val_set, index, config)
        summary["val"] = val
        scalars.update({f"eval/sketch_val/{k}": val[k] for k in SUMMARY_KEYS})
        scalars.update({f"eval/sketch_val/mAP_{g}": r["mAP"] for g, r in val["groups"].items()})
        if jax.process_index() == 0:
            print(f"[distill] sketch_val: mAP={val['mAP']:.4f} NN={val['NN']:.4f}", flush=True)
    write_metrics(workdir, int(config.total_steps), scalars)
    if jax.process_index() == 0:
        print(
            f"[distill] sketch_test: mAP={summary['mAP']:.4f} NN={summary['NN']:.4f}; "
            f"export in {os.path.join(workdir, 'export')}",
            flush=True,
        )
    return summary
