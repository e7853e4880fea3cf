"""The teacher: multi-view positive-only SSL with long-tail optimisation (METHODS.md 1-2).

`run(config, workdir)` is linear: data -> model -> state -> step -> `fit` -> done. The
method-specific parts are a loss function and a post-update hook for the shared step factory.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from sb3dr_jax import allocator, evals
from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.data import dataset_from_config, require_splits
from sb3dr_jax.models import DTYPES, build_model
from sb3dr_jax.models.common import centre_and_normalize, l2_normalize, normalize_uint8
from sb3dr_jax.objectives import longtail, ssl
from sb3dr_jax.train import (
    TrainState,
    data_parallel,
    fit,
    gather,
    make_optimizer,
    make_step,
    sample_keys,
)
from sb3dr_jax.train.augment import augment_images, bcl_strength, view_keys
from sb3dr_jax.train.encode import encode_split
from sb3dr_jax.train.loop import load_config, save_config

sg = jax.lax.stop_gradient


def teacher_model(config):
    """The teacher module described by a (pretrain) config."""
    return build_model(
        "ssl_teacher", **config.model.to_dict(), per_view=config.ssl.method == "per_view"
    )


def _target_params(config, state: TrainState, params):
    """The target branch: EMA (BYOL), the online net (SimSiam) or its pruned copy (SDCLR)."""
    if config.longtail.method == "sdclr":
        return sg(longtail.apply_masks(params, state.extra["masks"]))
    if config.ssl.method == "simsiam":
        return sg(params)
    return state.extra["target"]


def _augment(config, keys: jax.Array, x: jnp.ndarray, strength: jnp.ndarray, split: bool):
    """Augments x [b, 2k, ...] (per-shape keys), flattened in the order the encoder reads it.

    The order matters on CPU: augmented in calls of `model.view_chunk` views, each encoder
    chunk reads its own call's output (see `augment_images`).

    Args:
      config: the pretrain config (`augment`, `model.view_chunk`).
      keys: [b] per-shape keys (view j of shape i draws with `view_keys(keys)[i, j]`).
      x: [b, 2k, H, W, C] views in [0, 1], or uint8 (normalised by the augmentation).
      strength: [b] augmentation strength.
      split: True: subset A (views [:k]) of every shape, then subset B, i.e. [2, b, k]
        flattened. False: x's own order, [b, 2k] flattened.

    Returns:
      [b * 2k, H, W, C] augmented views.
    """
    b, v = x.shape[:2]
    vkeys = view_keys(keys, b, v)  # [b, 2k]
    st = jnp.broadcast_to(strength[:, None], (b, v))

    def order(a):  # [b, 2k, ...] -> [b * 2k, ...] in the encoder's order
        rest = a.shape[2:]
        if split:  # A subsets of all shapes, then B: a reshape + swap, never a concatenate
            a = jnp.swapaxes(a.reshape((b, 2, v // 2) + rest), 0, 1)
        return a.reshape((b * v,) + rest)

    impl = config.augment.get("impl", "map_coordinates")
    return augment_images(
        order(vkeys),
        order(x),
        order(st),
        min_scale=config.augment.min_scale,
        max_rot_deg=config.augment.max_rot_deg,
        chunk=int(config.model.get("view_chunk", 0)),
        impl=impl,
        # "rows" writes the model's compute dtype (bf16 on GPU): one cast fewer in the step.
        dtype=DTYPES[config.model.dtype] if impl == "rows" else None,
    )


def make_loss_fn(config, model, num_views: int):
    """The per-device teacher loss: two disjoint view subsets, augmented, symmetrised SSL."""
    k = int(config.ssl.views_per_branch)
    if 2 * k > num_views:
        raise ValueError(
            f"ssl.views_per_branch={k}: two disjoint subsets need {2 * k} <= V={num_views}"
        )
    method, lt = config.ssl.method, config.longtail.method

    def apply(p, x, state):
        """model.apply in train mode: ((embedding, aux), new batch_stats or None). With
        BatchNorm (`model.norm="batch"`, statistics averaged over `model.axis_name`) the
        running statistics live in `state.extra["batch_stats"]`."""
        if "batch_stats" not in state.extra:
            return model.apply({"params": p}, x), None
        out, upd = model.apply({"params": p, "batch_stats": state.extra["batch_stats"]}, x,
                               mutable=["batch_stats"])  # fmt: skip
        return out, upd["batch_stats"]

    def loss_fn(params, state, batch, rng, consts):
        del consts
        views = batch["views"]  # [b, V, H, W, C] uint8
        b = views.shape[0]
        # Per-sample keys from global batch positions: independent of the device count.
        keys = sample_keys(rng, b)  # [b]
        sub = lambda j: jax.vmap(lambda key: jax.random.fold_in(key, j))(keys)
        perm = jax.vmap(lambda key: jnp.argsort(jax.random.uniform(key, (num_views,))))(sub(0))
        perm = perm[:, : 2 * k]  # [b, 2k]: two disjoint subsets A = [:k], B = [k:]
        x = jnp.take_along_axis(views, perm[:, :, None, None, None], axis=1)  # uint8
        if config.augment.get("impl", "map_coordinates") != "rows":  # "rows" reads the bytes
            x = normalize_uint8(x)
        if lt == "bcl":
            w = longtail.bcl_weights(state.extra["memory"])[batch["index"]]  # [b]
            one = lambda key, wi: bcl_strength(key, wi[None], config.longtail.strength)[0]
            strength = jax.vmap(one)(sub(1), w)
        else:
            strength = jnp.zeros((b,))
        x = _augment(config, sub(2), x, strength, split=method != "per_view")  # [b * 2k, ...]
        target = _target_params(config, state, params)
        if method == "per_view":
            x = x.reshape((b, 2 * k) + x.shape[1:])
            (_, on), stats = apply(params, x, state)
            (_, tg), _ = apply(target, x, state)
            per = ssl.per_view_loss(on["view_prediction"], tg["view_projection"])
        else:
            both = x.reshape((2 * b, k) + x.shape[1:])  # all A subsets, then all B
            (_, on), stats = apply(params, both, state)
            z = (
                sg(on["projection"])
                if method == "simsiam" and lt != "sdclr"
                else (apply(target, both, state)[0][1]["projection"])
            )
            p = on["prediction"]
            per = ssl.byol_loss(p[:b], z[b:], p[b:], z[:b])  # [b]
        loss = per.mean()
        metrics = {"ssl_loss": loss, "aug_strength": strength.mean()}
        aux = {"per_sample": sg(per), "index": batch["index"]}
        if stats is not None:  # the online branch's running statistics
            aux["batch_stats"] = sg(stats)
        return loss, (metrics, aux)

    return loss_fn


def make_post_update(config, total_steps: int, steps_per_epoch: int):
    """EMA target, BCL memory (per epoch) and SDCLR masks (per epoch) after each update."""
    lt = config.longtail.method

    def post_update(state: TrainState, aux, consts):
        del consts
        extra = dict(state.extra)
        epoch_end = state.step % steps_per_epoch == 0  # state.step already counts this step
        if "batch_stats" in aux:
            extra["batch_stats"] = aux["batch_stats"]
        if "target" in extra:
            tau = ssl.ema_tau(state.step, total_steps, config.ssl.tau_base)
            extra["target"] = ssl.ema_update(extra["target"], state.params, tau)
        if lt == "bcl":
            # Every device applies the same global update, so the memory stays replicated.
            s, c = longtail.bcl_accumulate(
                extra["loss_sum"],
                extra["loss_count"],
                gather(aux["index"]),
                gather(aux["per_sample"]),
            )
            memory = longtail.bcl_update(extra["memory"], s, c, config.longtail.beta)
            extra["memory"] = jnp.where(epoch_end, memory, extra["memory"])
            extra["loss_sum"] = jnp.where(epoch_end, 0.0, s)
            extra["loss_count"] = jnp.where(epoch_end, 0.0, c)
        if lt == "sdclr":
            extra["masks"] = jax.lax.cond(
                epoch_end,
                lambda: longtail.sdclr_masks(state.params, config.longtail.prune_ratio),
                lambda: extra["masks"],
            )
        return state.replace(extra=extra)

    return post_update


def init_state(config, model, example_views: np.ndarray, num_shapes: int, optimizer) -> TrainState:
    """Fresh host state: params, optimiser state and the method's extras."""
    rng = jax.random.key(config.seed)
    # train=False: BatchNorm's statistics sync over the device axis, unbound outside the step.
    variables = jax.jit(model.init, static_argnames="train")(
        rng, jnp.asarray(example_views), train=False
    )
    params = variables["params"]
    extra = {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}
    if config.ssl.method != "simsiam" and config.longtail.method != "sdclr":
        extra["target"] = params
    if config.longtail.method == "bcl":
        extra.update(
            memory=jnp.zeros((num_shapes,)),
            loss_sum=jnp.zeros((num_shapes,)),
            loss_count=jnp.zeros((num_shapes,)),
        )
    elif config.longtail.method == "sdclr":
        extra["masks"] = longtail.sdclr_masks(params, config.longtail.prune_ratio)
    elif config.longtail.method != "none":
        raise ValueError(
            f"longtail.method: unknown {config.longtail.method!r} (bcl | sdclr | none)"
        )
    return jax.device_get(TrainState.create(params, optimizer, extra))


def make_shape_encoder(dp, model):
    """Data-parallel gallery descriptor: pooled encoder output, L2-normalised, [b, F]."""

    def embed(params, batch):
        # params, or the whole variables {"params", "batch_stats"} of a BatchNorm teacher.
        variables = params if "params" in params else {"params": params}
        emb, _ = model.apply(variables, batch["views"], method="embed")
        return l2_normalize(emb)

    return dp.map_fn(embed)


def make_eval_fn(config, dp, model, builder):
    """Label-free teacher evaluation: k-NN accuracy and shape-to-shape mAP, by group."""
    meta = builder.info.metadata
    encode = make_shape_encoder(dp, model)
    thresholds = (int(config.eval.head_min), int(config.eval.tail_max))
    groups = evals.class_groups(meta["shape_counts"], *thresholds)

    def eval_fn(dstate, step):
        bs = dstate.extra.get("batch_stats")
        emb, labels, _ = encode_split(
            dp,
            encode,
            dstate.params if bs is None else {"params": dstate.params, "batch_stats": bs},
            builder,
            "shapes",
            global_batch=int(config.eval.global_batch),
            key="views",
        )
        emb, _ = centre_and_normalize(emb)  # the gallery space the student is distilled into
        rep = evals.evaluate_retrieval(
            emb,
            labels,
            emb,
            labels,
            exclude_self=True,
            group_thresholds=thresholds,
            num_classes=len(groups),
        )
        preds = evals.metrics.knn_predict(emb, labels, int(config.eval.knn_k))
        out = {
            "shapes/knn_acc": float(np.mean(preds == labels)),
            "shapes/mAP": rep["mAP"],
            "shapes/NN": rep["NN"],
        }
        for g, r in rep["groups"].items():
            out[f"shapes/mAP_{g}"] = r["mAP"]
            out[f"shapes/knn_acc_{g}"] = float(np.mean((preds == labels)[groups[labels] == g]))
        return out

    return eval_fn


def run(config, workdir: str):
    """Trains the teacher; checkpoints, metrics and config go to `workdir`.

    Args:
      config: a ConfigDict from `sb3dr_jax/configs/pretrain.py`.
      workdir: output folder (resumed when it holds checkpoints).

    Returns:
      The final host `TrainState`.
    """
    from sb3dr_jax.data.pipeline import shape_batches  # tf.data: only where data is read

    save_config(config, workdir)
    builder = dataset_from_config(config.dataset)
    require_splits(builder, ("shapes",), needed_by="pretrain")
    num_shapes = builder.info.splits["shapes"].num_examples
    num_views = int(builder.info.metadata["render"]["num_views"])
    dp = data_parallel(config.parallel)
    model = teacher_model(config)
    steps_per_epoch = max(1, math.ceil(num_shapes / config.global_batch))
    optimizer = make_optimizer(config.optim, config.total_steps)
    batches = shape_batches(builder, global_batch=config.global_batch, seed=config.seed)
    example = next(shape_batches(builder, global_batch=config.global_batch, seed=0))["views"][0, :1]
    state = init_state(config, model, example, num_shapes, optimizer)
    step = make_step(
        make_loss_fn(config, model, num_views),
        optimizer,
        post_update=make_post_update(config, config.total_steps, steps_per_epoch),
    )
    if jax.process_index() == 0:
        print(
            f"[pretrain] {num_shapes} shapes, {steps_per_epoch} steps/epoch, "
            f"{config.total_steps} steps on {dp.num_devices} devices ({config.parallel}), "
            f"{allocator.active()} malloc",
            flush=True,
        )
    return fit(
        config=config,
        workdir=workdir,
        dp=dp,
        state=state,
        step_fn=step,
        batches=batches,
        consts={},
        total_steps=int(config.total_steps),
        eval_fn=make_eval_fn(config, dp, model, builder),
    )


def check_teacher_config(config, workdir: str) -> None:
    """Refuses a workdir whose config.json is not a teacher's (e.g. a distill run).

    Raises:
      ConfigError: naming `config.teacher_workdir` and the folder.
    """
    if "ssl" not in config or "longtail" not in config:
        what = "a distill run" if "teacher_workdir" in config else "no teacher run"
        raise ConfigError(
            f"config.teacher_workdir: {os.path.abspath(workdir)} holds {what}, not a trained "
            "teacher (its config.json has no 'ssl' block); point it at a folder written by "
            "`python -m launch.pretrain`"
        )


def load_teacher(workdir: str):
    """Loads a trained teacher: (model, params (host), config, checkpoint step).

    Raises:
      FileNotFoundError: no checkpoint in `workdir` (the message says what to run first).
    """
    from sb3dr_jax.train.loop import checkpoint_manager

    ckpt = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt) or checkpoint_manager(workdir).latest_step() is None:
        raise FileNotFoundError(
            f"no teacher checkpoint in {os.path.abspath(workdir)}: train the teacher first with "
            f"`python -m launch.pretrain --workdir {workdir}`"
        )
    import orbax.checkpoint as ocp

    config = load_config(workdir)
    check_teacher_config(config, workdir)
    mngr = checkpoint_manager(workdir)
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.StandardRestore())
    mngr.close()
    return teacher_model(config), restored["params"], config, int(step)
