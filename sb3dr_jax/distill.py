"""The student: cross-modal distillation with the enhanced triplet loss (METHODS.md section 3).

`run(config, workdir)`: frozen-teacher feature table (cached) -> student -> the shared step
factory and loop -> final sketch-to-shape evaluation -> export (student + retrieval index).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sb3dr_jax import allocator
from sb3dr_jax.data import dataset_from_config, require_splits
from sb3dr_jax.data.web_assets import write_web_assets
from sb3dr_jax.evals.ann import IndexConfig
from sb3dr_jax.evals.index import RetrievalIndex
from sb3dr_jax.evaluate import evaluate_student
from sb3dr_jax.models import DTYPES, build_model, feature_dim, init_student_from_teacher
from sb3dr_jax.models.common import l2_normalize, normalize_uint8
from sb3dr_jax.objectives import kd, triplet
from sb3dr_jax.serving.export import save_export
from sb3dr_jax.train import TrainState, data_parallel, fit, gather, make_optimizer, make_step
from sb3dr_jax.train.augment import augment_sketches
from sb3dr_jax.train.loop import save_config, write_metrics
from sb3dr_jax.train.step import AXIS, sample_keys
from sb3dr_jax.train.teacher_cache import sample_pairs, teacher_table

SUMMARY_KEYS = ("NN", "FT", "ST", "E", "DCG", "mAP", "mAP_shrec_matlab", "mAP_pr_mean")


def student_model_kwargs(config, embed_dim: int) -> dict:
    """JSON-able kwargs that rebuild the student (saved in the export)."""
    return {**config.model.to_dict(), "embed_dim": int(embed_dim)}


def sketch_aug_kwargs(config) -> dict:
    """`augment_sketches` settings from the config's `sketch_aug` block (defaults without it)."""
    a = config.get("sketch_aug")
    return {} if a is None else dict(a.to_dict())


def make_loss_fn(config, model, teacher=None):
    """Per-device distillation loss: KD terms + enhanced triplet over the global batch.

    Args:
      config: the distill config.
      model: the student module.
      teacher: for `online_teacher`, the frozen teacher module (its params come in consts).

    Returns:
      `loss_fn(params, state, batch, rng, consts)` for `make_step`.
    """
    w = config.loss

    def targets(batch, consts, rng):
        if teacher is not None:  # online: embed the paired shapes' views now
            emb, _ = teacher.apply(
                {"params": consts["teacher_params"]}, batch["views"], method="embed"
            )
            # The table's space: unit descriptor, centred on the gallery mean, normalised again.
            centred = l2_normalize(emb) - consts["mean"]
            return jax.lax.stop_gradient(l2_normalize(centred))
        one = lambda key, y: sample_pairs(key, y[None], consts["members"], consts["counts"])[0]
        idx = jax.vmap(one)(rng, batch["label"])  # rng: [b] per-sample keys
        return consts["features"][idx]  # [b, F] cached table lookup

    def loss_fn(params, state, batch, rng, consts):
        del state
        # Per-sample keys from global batch positions: independent of the device count.
        keys = sample_keys(rng, batch["label"].shape[0])  # [b]
        r_pair = jax.vmap(lambda key: jax.random.fold_in(key, 0))(keys)
        rows = config.augment and config.get("augment_impl", "map_coordinates") == "rows"
        x = batch["image"] if rows else normalize_uint8(batch["image"])  # [b, S, S, 1]
        if config.augment:
            r_aug = jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys)
            x = augment_sketches(  # [b] keys
                r_aug,
                x,
                **sketch_aug_kwargs(config),
                chunk=int(config.model.get("chunk", 0)),
                impl=config.get("augment_impl", "map_coordinates"),
                dtype=DTYPES[config.model.dtype] if rows else None,
            )
        s, _ = model.apply({"params": params}, x)  # [b, E]
        y, t, centres = batch["label"], targets(batch, consts, r_pair), consts["centres"]
        s_all, y_all, t_all = gather(s), gather(y), gather(t)  # global batch [G, ...]
        terms = {}
        if w.w_cen:
            terms["cen"] = w.w_cen * kd.centre_alignment_loss(s, y, centres, w.lam).mean()
        if w.w_rel:
            rel = kd.rkd_loss if w.relational == "rkd" else kd.relational_kd_loss
            terms["rel"] = w.w_rel * rel(s_all, t_all)
        if w.w_kl:
            kt = centres[y] if w.kl_target == "centre" else t
            terms["kl"] = w.w_kl * kd.soft_label_kd_loss(s, kt, centres, w.temperature).mean()
        if w.w_et:
            off = jax.lax.axis_index(AXIS) * s.shape[0]
            terms["et"] = (
                w.w_et
                * triplet.enhanced_triplet_loss(
                    s,
                    y,
                    t_all,
                    y_all,
                    s_all,
                    y_all,
                    centres,
                    m_x=w.m_x,
                    m_s=w.m_s,
                    mu=w.mu,
                    nu=w.nu,
                    anchor_offset=off,
                ).mean()
            )
        loss = sum(terms.values())
        return loss, ({f"loss_{k}": v for k, v in terms.items()}, {})

    return loss_fn


def _with_paired_views(batches, table, shape_views, seed: int):
    """Online-teacher mode: the host picks each sketch's paired shape and attaches its views."""
    rng = np.random.default_rng(seed)
    for batch in batches:
        lab = batch["label"]
        idx = np.empty_like(lab)
        for pos, c in np.ndenumerate(lab):
            n = table["counts"][c]
            idx[pos] = table["members"][c, rng.integers(n)] if n else 0
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


def evaluate_arrays(model, params, images, labels, index, config) -> dict:
    """Retrieval summary of in-memory query sketches (the validation split) against `index`."""
    from sb3dr_jax import evals

    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)[0])
    b = int(config.eval.global_batch)
    embs = []
    for i in range(0, len(images), b):
        x = images[i : i + b]
        pad = np.zeros((b - len(x),) + x.shape[1:], x.dtype)
        embs.append(np.asarray(fn(params, np.concatenate([x, pad])))[: len(x)])
    return evals.evaluate_retrieval(
        np.concatenate(embs),
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
    """
    from sb3dr_jax.train.loop import load_config

    try:
        teacher_config = load_config(config.teacher_workdir)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no teacher in {os.path.abspath(config.teacher_workdir)}: train it first with "
            f"`python -m launch.pretrain --workdir {config.teacher_workdir}`"
        ) from None
    from sb3dr_jax.pretrain import check_teacher_config

    check_teacher_config(teacher_config, config.teacher_workdir)  # before any work
    config = resolve_config(config, teacher_config)
    save_config(config, workdir)
    dp = data_parallel(config.parallel)
    builder = dataset_from_config(config.dataset)
    require_splits(builder, ("shapes", "sketch_train", "sketch_test"), needed_by="distill")
    table = teacher_table(
        config.teacher_workdir, builder, dp, global_batch=int(config.eval.global_batch)
    )
    f_dim = feature_dim(**teacher_config.model.to_dict())
    model = build_model("sketch_student", **student_model_kwargs(config, f_dim))
    optimizer = make_optimizer(config.optim, config.total_steps)
    s = int(builder.info.metadata["sketch_size"])
    params = jax.jit(model.init)(jax.random.key(config.seed), jnp.zeros((1, s, s, 1), jnp.uint8))[
        "params"
    ]
    if config.init_from_teacher:
        chans = list(builder.info.metadata["render"]["channels"])
        params = init_student_from_teacher(
            params, table["params"], chans.index("line") if "line" in chans else None
        )
    state = jax.device_get(TrainState.create(params, optimizer))
    consts = {k: table[k] for k in ("features", "centres", "members", "counts")}
    teacher = None
    batches, val_set = _train_batches(config, builder)
    if config.online_teacher:
        teacher, consts["teacher_params"] = table["model"], table["params"]
        consts["mean"] = table["mean"]
        batches = _with_paired_views(
            batches, table, _shape_views(builder, table["ids"]), config.seed
        )
    step = make_step(make_loss_fn(config, model, teacher), optimizer)
    if jax.process_index() == 0:
        print(
            f"[distill] teacher step {table['step']} ({table['teacher_id']}), "
            f"{builder.info.splits['sketch_train'].num_examples} train sketches, "
            f"{config.total_steps} steps on {dp.num_devices} devices, {allocator.active()} malloc",
            flush=True,
        )
    final = fit(
        config=config,
        workdir=workdir,
        dp=dp,
        state=state,
        step_fn=step,
        batches=batches,
        consts=consts,
        total_steps=int(config.total_steps),
    )
    index = RetrievalIndex(
        table["features"],
        table["ids"],
        table["labels"],
        list(builder.info.metadata["class_names"]),
        table["teacher_id"],
        {"dataset": builder.info.full_name, "teacher_step": table["step"]},
        index_config=IndexConfig.from_config(config.export),
    )
    if jax.process_index() == 0:  # before the evaluation: a failure there loses no training
        save_export(
            os.path.join(workdir, "export"),
            student_params=final.params,
            student_config={"model": student_model_kwargs(config, f_dim), "sketch_size": s},
            index=index,
            teacher_id=table["teacher_id"],
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
            print(
                f"[distill] web assets: {web['models']} thumbnails, {web['meshes']} meshes, "
                f"{web['sketches']} sketches in {web['seconds']:.1f}s"
                + (
                    f"; skipped {len(web['skipped'])} (see web/manifest.json)"
                    if web["skipped"]
                    else ""
                ),
                flush=True,
            )
    summary = evaluate_student(
        dp,
        model,
        final.params,
        builder,
        index,
        split="sketch_test",
        global_batch=int(config.eval.global_batch),
        group_thresholds=(int(config.eval.head_min), int(config.eval.tail_max)),
    )
    scalars = {f"eval/sketch_test/{k}": summary[k] for k in SUMMARY_KEYS}
    scalars.update({f"eval/sketch_test/mAP_{g}": r["mAP"] for g, r in summary["groups"].items()})
    if val_set is not None:
        val = evaluate_arrays(model, final.params, *val_set, index, config)
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
