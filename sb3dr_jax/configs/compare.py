"""Comparison config: `--config sb3dr_jax/configs/compare.py:<args>`.

One config drives a single baseline (`launch.baseline`, `method=<name>`) and the whole
comparison (`launch.compare`, `methods=a+b+...`, default: every baseline and thesis method).

Args (comma-separated): `method=<siamese|dcml|lwbr|dca|tcl|cgn|quadruplet|cmsd>`,
`methods=<a+b+...>` (baselines and the thesis methods `ssltkd`, `ssl`, `plain_triplet`,
`no_longtail`), `dataset=<demo|tub16|qd90>`, `smoke`, `val[=fraction]` (validation split of
the training sketches and shapes, default 0.2), `trials=<n>` (learning rates per method,
chosen on validation; implies `val`), `steps=<n>` (training steps of every method),
`teacher_steps=<n>` (the thesis methods' SSL teacher).
"""

from __future__ import annotations

import ml_collections

from sb3dr_jax.configs import distill
from sb3dr_jax.configs.common import dataset_config, parse_args

THESIS_METHODS = ("ssltkd", "ssl", "plain_triplet", "no_longtail")
BASELINE_METHODS = ("siamese", "dcml", "lwbr", "dca", "tcl", "cgn", "quadruplet", "cmsd")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = parse_args(arg)
    smoke = "smoke" in a
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.smoke = smoke  # the thesis trainers get their own `smoke` argument too
    c.method = a.get("method", "dca")
    methods = a.get("methods", "")
    c.methods = [m for m in methods.split("+") if m] or [*BASELINE_METHODS, *THESIS_METHODS]
    c.dataset = dataset_config(a.get("dataset", "demo"), smoke=smoke)
    # The backbone every method uses: the thesis student's model block, plus the joint space
    # (`embed_dim`), the shape encoder's views per backbone call and LWBR's Sinkhorn steps.
    pkaug = distill.get_config("pkaug")
    c.model = ml_collections.ConfigDict(pkaug.model.to_dict())
    c.model.embed_dim = 128
    c.model.view_chunk = 16
    c.model.lwbr_iters = 20
    # The baselines' ResNet stages (empty: the backbone preset's). Tests use (1,) to compile
    # in seconds; the thesis trainers always use the preset.
    c.model.stage_sizes = ()
    # The thesis `pkaug` recipe's sampling (P x K) and sketch augmentation, for every method.
    c.augment = True
    c.sketch_aug = ml_collections.ConfigDict(pkaug.sketch_aug.to_dict())
    c.sketch_data = ml_collections.ConfigDict(pkaug.sketch_data.to_dict())
    c.optim = ml_collections.ConfigDict(
        dict(name="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=30, grad_clip=1.0)
    )
    c.global_batch = 32
    c.total_steps = int(a.get("steps") or 800)
    c.teacher_steps = int(a.get("teacher_steps") or 600)
    # Honest tuning: `trials` learning rates (optim.lr x lr_factors[:trials]) per method,
    # the same grid size for every method, chosen on the validation split.
    c.trials = int(a.get("trials") or 1)
    c.lr_factors = [1.0, 0.3, 3.0, 0.1]
    if "val" in a or c.trials > 1:
        c.sketch_data.val_fraction = float(a.get("val") or 0.2)
    # Per-method hyperparameter overrides: hp.<method>.<name> (methods.py lists the names).
    c.hp = ml_collections.ConfigDict()
    # The thesis methods' teachers: "" trains them in <output>/teachers/<variant>; a path uses
    # an existing teacher workdir (the tests reuse their session teacher).
    c.teachers = ml_collections.ConfigDict(dict(bcl="", none=""))
    c.log_every = 10
    c.ckpt_every = 200
    c.keep_ckpts = 2
    c.eval_every = 0
    c.eval = ml_collections.ConfigDict(dict(global_batch=64, head_min=20, tail_max=5))
    c.parallel = "pmap"
    if smoke:
        c.model.update(num_filters=8, hidden=32, embed_dim=16, lwbr_iters=5)
        c.global_batch = 8
        c.total_steps = int(a.get("steps") or 2)
        c.teacher_steps = int(a.get("teacher_steps") or 2)
        c.log_every, c.ckpt_every = 1, 1
        c.optim.warmup_steps = 1
        c.eval.global_batch = 8
    return c
