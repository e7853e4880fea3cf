"""Teacher (SSL) config: `--config sb3dr_jax/configs/pretrain.py:<args>`.

Args (comma-separated): `smoke` (tiny, for tests), `dataset=<demo|tub16|qd90|shrec13|shrec14>`,
`method=<byol|simsiam|per_view>`, `longtail=<bcl|sdclr|none>`, `backbone=<resnet_tiny|resnet18|
resnet50>` (CPU; picks the view chunking that suits it), `gpu` (ResNet-18, bf16, 128 px).
"""

from __future__ import annotations

import ml_collections

from sb3dr_jax.configs.common import dataset_config, parse_args


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = parse_args(arg)
    smoke = "smoke" in a
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = dataset_config(a.get("dataset", "demo"), smoke=smoke)
    backbone = a.get("backbone", "resnet_tiny")
    c.model = ml_collections.ConfigDict(
        dict(
            backbone=backbone,
            num_filters=0,
            norm="group",
            dtype="float32",
            pooling="max",
            proj_hidden=256,
            proj_dim=128,
            pred_hidden=256,
            # Views per backbone call: resnet_tiny's small convolutions run one thread each, so
            # independent chunks run side by side on the CPU threads and stay in cache; wider
            # backbones' convolutions use every core themselves (benchmarks/README.md). 0 = all.
            view_chunk=16 if backbone == "resnet_tiny" else 0,
            # "auto": oneDNN convolutions on CPU when they build (kernels/onednn.py), else XLA's.
            conv_impl="auto",
            # The 7x7 stem (96 px and up) and its max-pool: "conv"/"window", or "s2d"/"slices"
            # (the same maths in fewer, faster GPU kernels; models/resnet.py).
            stem="conv",
            pool="window",
        )
    )
    c.ssl = ml_collections.ConfigDict(
        dict(method=a.get("method", "byol"), views_per_branch=6, tau_base=0.99)
    )
    c.longtail = ml_collections.ConfigDict(
        dict(method=a.get("longtail", "bcl"), beta=0.97, strength=1.0, prune_ratio=0.7)
    )
    # impl: the resampling kernel, "map_coordinates" (one gather per channel) or "rows" (one
    # gather of whole pixels from the uint8 views, output in model.dtype; train/augment.py).
    c.augment = ml_collections.ConfigDict(
        dict(min_scale=0.6, max_rot_deg=10.0, impl="map_coordinates")
    )
    c.optim = ml_collections.ConfigDict(
        dict(name="adamw", lr=2e-3, weight_decay=1e-4, warmup_steps=30, grad_clip=1.0)
    )
    c.global_batch = 16
    c.total_steps = 300
    c.log_every = 10
    c.ckpt_every = 100
    c.keep_ckpts = 3
    c.eval_every = 150
    c.eval = ml_collections.ConfigDict(dict(global_batch=64, head_min=20, tail_max=5, knn_k=1))
    c.parallel = "pmap"  # or "shard_map"
    if "gpu" in a:
        c.model.update(
            backbone="resnet18",
            dtype="bfloat16",
            proj_hidden=4096,
            proj_dim=256,
            pred_hidden=4096,
            view_chunk=0,  # accelerators want the whole batch in one call
            conv_impl="xla",
            # The 7x7 stem on a space-to-depth input: the same maths, 1.13x the teacher
            # step on one H200 (benchmarks/README.md, "On an accelerator").
            stem="s2d",
        )
        c.dataset.render.resolution = 128
        c.dataset.sketch_size = 128
        c.optim.update(name="lars", lr=0.2, weight_decay=1.5e-6, warmup_steps=500)
        c.global_batch, c.total_steps, c.ckpt_every, c.eval_every = 256, 20000, 1000, 2000
        c.eval.global_batch = 256
    if smoke:
        c.model.update(num_filters=8, proj_hidden=32, proj_dim=16, pred_hidden=32)
        c.ssl.views_per_branch = 3
        c.global_batch, c.total_steps = 8, 2
        c.log_every, c.ckpt_every, c.eval_every = 1, 1, 2
        c.optim.warmup_steps = 1
        c.eval.global_batch = 8
    return c
