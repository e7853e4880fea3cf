"""Train the teacher: data -> `teacher.build` -> `fit` (METHODS.md 1-2).

The teacher itself (model, methods, step, loading) lives in `sb3dr_jax/teacher.py`.
"""

from __future__ import annotations

import jax

from sb3dr_jax import allocator, teacher
from sb3dr_jax.data import dataset_from_config, require_splits
from sb3dr_jax.train import data_parallel, fit
from sb3dr_jax.train.loop import save_config


def run(config, workdir: str):
    """Trains the teacher; checkpoints, metrics and config go to `workdir`.

    Args:
      config: a ConfigDict from `sb3dr_jax/configs/pretrain.py`.
      workdir: output folder (resumed when it holds checkpoints).

    Returns:
      The final host `TrainState`.

    Raises:
      ConfigError: an unknown `ssl.method` / `longtail.method` (before any data is read).
    """
    from sb3dr_jax.data.pipeline import shape_batches  # tf.data: only where data is read

    teacher.methods(config)  # an unknown method name fails before the dataset is built
    save_config(config, workdir)
    builder = dataset_from_config(config.dataset)
    require_splits(builder, ("shapes",), needed_by="pretrain")
    num_shapes = builder.info.splits["shapes"].num_examples
    dp = data_parallel(config.parallel)
    batches = shape_batches(
        builder,
        global_batch=config.global_batch,
        seed=config.seed,
        cache_gib=float(config.dataset.cache_gib),
    )
    example = next(shape_batches(builder, global_batch=config.global_batch, seed=0))["views"][0, :1]
    exp = teacher.build(
        config,
        example_views=example,
        num_shapes=num_shapes,
        num_views=int(builder.info.metadata["render"]["num_views"]),
    )
    if jax.process_index() == 0:
        print(
            f"[pretrain] {num_shapes} shapes, {exp.info['steps_per_epoch']} steps/epoch, "
            f"{config.total_steps} steps on {dp.num_devices} devices ({config.parallel}), "
            f"{allocator.active()} malloc",
            flush=True,
        )
    return fit(
        config=config, workdir=workdir, dp=dp, batches=batches,
        total_steps=int(config.total_steps), **exp.fit_args(),
        eval_fn=teacher.evaluator(config, dp, exp.model, builder),
    )  # fmt: skip
