"""Student (KD) config: `--config sb3dr_jax/configs/distill.py:<args>`.

Args (comma-separated): `smoke`, `dataset=<...>` (default: the teacher's dataset),
`no_kd` (enhanced triplet only), `plain_triplet` (cross-modal triplet only: no KD, no enhanced
terms), `balanced` (class-balanced sketch sampling), `online_teacher`, `gpu`,
`val[=fraction]` (hold out a validation split of the training sketches, default 0.2),
`pkaug` (P x K sampling, elastic/erase sketch augmentation, full-weight centre soft-label KD,
batch 64 x 2000 steps: the qd90 recipe of docs/retrieval_diagnosis.md).
"""

from __future__ import annotations

import ml_collections

from sb3dr_jax.configs.common import dataset_config, parse_args
from sb3dr_jax.evals.ann import ann_defaults


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = parse_args(arg)
    smoke = "smoke" in a
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.teacher_workdir = "workdirs/pretrain"
    # Empty name: use the dataset block the teacher was trained with.
    c.dataset = dataset_config(a.get("dataset", "demo"), smoke=smoke)
    c.dataset_from_teacher = "dataset" not in a
    c.model = ml_collections.ConfigDict(
        dict(
            backbone="resnet_tiny",
            num_filters=0,
            norm="group",
            dtype="float32",
            hidden=256,
            conv_impl="auto",  # as in the teacher config
            chunk=8,  # sketches per backbone call: independent chains for the CPU threads
            # The 7x7 stem (96 px and up) and its max-pool: "conv"/"window", or "s2d"/"slices"
            # (the same maths in fewer, faster GPU kernels; models/resnet.py).
            stem="conv",
            pool="window",
        )
    )
    c.init_from_teacher = True
    c.online_teacher = "online_teacher" in a
    c.class_balanced = "balanced" in a
    # Which training sketches and in what batches (`sb3dr_jax/data/sketch_sampling.py`).
    # val_fraction > 0 holds out that share of each class's training sketches (val_seed fixes
    # which) and reports `eval/sketch_val/*`: the split to tune on, never the test queries.
    # sampler: "shuffle" | "balanced" | "pk" (P classes x pk_k sketches per batch).
    c.sketch_data = ml_collections.ConfigDict(
        dict(sampler="shuffle", pk_k=4, val_fraction=0.0, val_seed=0)
    )
    c.augment = True
    c.augment_impl = "map_coordinates"  # or "rows" (train/augment.py)
    # `augment_sketches` settings: affine jitter; elastic (pixels) and erase (squares) add
    # stroke-level variation.
    c.sketch_aug = ml_collections.ConfigDict(
        dict(
            min_scale=0.85,
            max_rot_deg=8.0,
            flip=True,
            elastic=0.0,
            elastic_grid=4,
            erase=0,
            erase_frac=0.2,
        )
    )
    # terms: {name: weight} of the student loss (sb3dr_jax/student.py LOSS_TERMS): cen = centre
    # alignment, rel = relational KD, kl = soft-label KD, et = enhanced triplet; 0 drops a term.
    c.loss = ml_collections.ConfigDict(
        dict(
            terms=ml_collections.ConfigDict(dict(cen=1.0, rel=1.0, kl=1.0, et=1.0)),
            lam=0.1,
            temperature=0.1,
            relational="sp",  # "sp" (similarity preserving) | "rkd"
            kl_target="pair",  # "pair" | "centre"
            m_x=0.2,
            m_s=0.2,
            mu=0.5,
            nu=0.1,
        )
    )
    # Set before the recipes below, which change them (`pkaug` trains with batch 64 x 2000).
    c.global_batch = 32
    c.total_steps = 800
    if "pkaug" in a:
        # The recipe validated on qd90-psb-dev (docs/retrieval_diagnosis.md): P x K batches (every
        # anchor has in-batch positives), elastic + erased-square sketch augmentation (without
        # it the student memorises ~9 sketches per class and stays near chance on new ones),
        # and the soft-label KD term against the teacher's class centres at full strength:
        # terms.kl = 1 / T^2 undoes Hinton's T^2 factor, which at T = 0.1 shrinks the term 100x.
        c.sketch_data.sampler = "pk"
        c.sketch_aug.update(elastic=2.0, erase=2)
        c.loss.kl_target = "centre"
        c.loss.terms.kl = 100.0
        c.global_batch, c.total_steps = 64, 2000
    if "val" in a:
        c.sketch_data.val_fraction = float(a["val"] or 0.2)
    if "no_kd" in a or "plain_triplet" in a:
        c.loss.terms.update(cen=0.0, rel=0.0, kl=0.0)
    if "plain_triplet" in a:
        c.loss.update(mu=0.0, nu=0.0)
    c.optim = ml_collections.ConfigDict(
        dict(name="adamw", lr=2e-3, weight_decay=1e-4, warmup_steps=30, grad_clip=1.0)
    )
    c.log_every = 10
    c.ckpt_every = 200
    c.keep_ckpts = 3
    c.eval_every = 0  # the final evaluation always runs
    c.eval = ml_collections.ConfigDict(dict(global_batch=64, head_min=20, tail_max=5))
    c.parallel = "pmap"
    # What the export carries for the web front end (sb3dr_jax/serving/assets.py): thumbnails,
    # view strips, web meshes of at most `mesh_faces` faces (converted by `mesh_workers`
    # processes), the test split's sketches.
    c.export = ml_collections.ConfigDict(dict(web=True, mesh_faces=4000, mesh_workers=1))
    # The retrieval index's search (sb3dr_jax/evals/ann.py): exact | ivfpq | hnsw | auto (exact
    # below export.ann.auto_threshold items); export.ann.* are the FAISS parameters.
    c.export.index = "auto"
    c.export.ann = ml_collections.ConfigDict(ann_defaults())
    if "gpu" in a:
        c.model.update(backbone="resnet18", dtype="bfloat16", hidden=1024, conv_impl="xla", chunk=0)
        c.global_batch, c.total_steps, c.ckpt_every = 256, 10000, 1000
        c.eval.global_batch = 256
    if smoke:
        c.model.update(num_filters=8, hidden=32)
        c.global_batch, c.total_steps = 8, 2
        c.log_every, c.ckpt_every = 1, 1
        c.optim.warmup_steps = 1
        c.eval.global_batch = 8
    return c
