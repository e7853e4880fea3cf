"""The teacher library: multi-view positive-only SSL with long-tail optimisation (METHODS.md 1-2).

Methods are picked by name: `SSL_METHODS` (`ssl.method`: byol | simsiam | per_view) and
`LONGTAIL_METHODS` (`longtail.method`: bcl | sdclr | none). Each method is one small object
that contributes its state extras, its part of the loss and its post-update; an unknown name is
a `ConfigError` naming the field. `build(config, ...)` assembles the trainer (model, initial
state, per-device step) without disk or dataset, so `pretrain.run`, the tests and `benchmarks/`
train exactly the same step; `load(workdir)` returns a trained `Teacher`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sb3dr_jax import evals
from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.experiment import Experiment
from sb3dr_jax.models import DTYPES, build_model
from sb3dr_jax.models.common import centre_and_normalize, l2_normalize, normalize_uint8
from sb3dr_jax.objectives import get_objective, longtail, ssl
from sb3dr_jax.registry import Registry
from sb3dr_jax.train import TrainState, gather, make_optimizer, make_step, sample_keys
from sb3dr_jax.train.augment import augment_images, bcl_strength, view_keys

sg = jax.lax.stop_gradient


# ----------------------------------------------------------------------------------------------
# Methods: one object per name, registered under the config field that picks it.


@dataclasses.dataclass(frozen=True)
class SSLMethod:
    """A positive-only SSL objective over two disjoint view subsets of each shape.

    Attributes:
      name: the `ssl.method` value.
      objective: the `objectives.REGISTRY` name of the pure loss.
      ema_target: the target branch is an EMA copy of the online net (kept in `extra["target"]`
        unless the long-tail method supplies its own target).
      per_view: single views are positives of each other (the model projects every view), not
        pooled view subsets.
    """

    name: str
    objective: str
    ema_target: bool
    per_view: bool = False

    def target(self, state: TrainState) -> Any:
        """The target branch's params, or None: the online projections, stop-gradient."""
        return state.extra["target"] if self.ema_target else None

    def loss(self, apply: Callable, params, target, x: jnp.ndarray, b: int, k: int, state):
        """Per-shape loss [b] and the online branch's new batch statistics (or None).

        Args:
          apply: `(params, views, state) -> ((embedding, aux), batch_stats | None)`.
          params: online params.
          target: target params (None: the online projections, stop-gradient).
          x: [b * 2k, H, W, C] augmented views, subset A of every shape then subset B
            (`per_view`: [b, 2k] flattened).
          b: shapes in the batch.
          k: views per subset.
          state: the train state (BatchNorm statistics).
        """
        fn = get_objective(self.objective)
        if self.per_view:
            x = x.reshape((b, 2 * k) + x.shape[1:])
            (_, on), stats = apply(params, x, state)
            (_, tg), _ = apply(target, x, state)
            return fn(on["view_prediction"], tg["view_projection"]), stats
        both = x.reshape((2 * b, k) + x.shape[1:])  # all A subsets, then all B
        (_, on), stats = apply(params, both, state)
        if target is None:
            z = sg(on["projection"])  # SimSiam: no second forward
        else:
            z = apply(target, both, state)[0][1]["projection"]
        p = on["prediction"]
        return fn(p[:b], z[b:], p[b:], z[:b]), stats  # [b]


SSL_METHODS: Registry[SSLMethod] = Registry("ssl.method")
SSL_METHODS.register("byol", SSLMethod("byol", "byol", ema_target=True))
SSL_METHODS.register("simsiam", SSLMethod("simsiam", "simsiam", ema_target=False))
SSL_METHODS.register("per_view", SSLMethod("per_view", "per_view", ema_target=True, per_view=True))


class LongTailMethod:
    """No long-tail optimisation (`longtail.method="none"`); the base of the others."""

    replaces_target = False  # True: `target()` overrides the SSL method's target branch

    def init_extra(self, config, params, num_shapes: int) -> dict:
        """State extras at step 0."""
        del config, params, num_shapes
        return {}

    def strength(self, config, state: TrainState, batch, key_fn: Callable) -> jnp.ndarray:
        """[b] augmentation strength per shape (`key_fn(1)`: the per-shape keys to draw with)."""
        del config, state, key_fn
        return jnp.zeros((batch["views"].shape[0],))

    def target(self, config, state: TrainState):
        """The target params this method imposes (only called when `replaces_target`)."""
        raise NotImplementedError

    def post_update(self, config, extra: dict, state: TrainState, aux, epoch_end) -> dict:
        """Updates `extra` after an optimiser update (`state.step` already counts it)."""
        del config, state, aux, epoch_end
        return extra


class BCL(LongTailMethod):
    """Boosted contrastive learning: stronger augmentation for shapes whose loss stays high."""

    def init_extra(self, config, params, num_shapes):
        return dict(
            memory=jnp.zeros((num_shapes,)),
            loss_sum=jnp.zeros((num_shapes,)),
            loss_count=jnp.zeros((num_shapes,)),
        )

    def strength(self, config, state, batch, key_fn):
        w = longtail.bcl_weights(state.extra["memory"])[batch["index"]]  # [b]
        one = lambda key, wi: bcl_strength(key, wi[None], config.longtail.strength)[0]
        return jax.vmap(one)(key_fn(1), w)

    def post_update(self, config, extra, state, aux, epoch_end):
        # Every device applies the same global update, so the memory stays replicated.
        s, c = longtail.bcl_accumulate(
            extra["loss_sum"], extra["loss_count"], gather(aux["index"]), gather(aux["per_sample"])
        )
        memory = longtail.bcl_update(extra["memory"], s, c, config.longtail.beta)
        extra["memory"] = jnp.where(epoch_end, memory, extra["memory"])
        extra["loss_sum"] = jnp.where(epoch_end, 0.0, s)
        extra["loss_count"] = jnp.where(epoch_end, 0.0, c)
        return extra


class SDCLR(LongTailMethod):
    """Self-damaging contrastive learning: the target branch is a pruned copy of the online net."""

    replaces_target = True

    def init_extra(self, config, params, num_shapes):
        return {"masks": longtail.sdclr_masks(params, config.longtail.prune_ratio)}

    def target(self, config, state):
        return sg(longtail.apply_masks(state.params, state.extra["masks"]))

    def post_update(self, config, extra, state, aux, epoch_end):
        extra["masks"] = jax.lax.cond(
            epoch_end,
            lambda: longtail.sdclr_masks(state.params, config.longtail.prune_ratio),
            lambda: extra["masks"],
        )
        return extra


LONGTAIL_METHODS: Registry[LongTailMethod] = Registry("longtail.method")
LONGTAIL_METHODS.register("none", LongTailMethod())
LONGTAIL_METHODS.register("bcl", BCL())
LONGTAIL_METHODS.register("sdclr", SDCLR())


def methods(config) -> tuple[SSLMethod, LongTailMethod]:
    """The config's (SSL method, long-tail method); unknown names raise `ConfigError`."""
    return SSL_METHODS.get(config.ssl.method), LONGTAIL_METHODS.get(config.longtail.method)


# ----------------------------------------------------------------------------------------------
# The model, the loss, the post-update, the state.


def model(config) -> Any:
    """The teacher module described by a (pretrain) config."""
    method = SSL_METHODS.get(config.ssl.method)
    return build_model("ssl_teacher", **config.model.to_dict(), per_view=method.per_view)


def _augment(config, keys: jax.Array, x: jnp.ndarray, strength: jnp.ndarray, split: bool):
    """Augments x [b, 2k, ...] (per-shape keys), flattened in the order the encoder reads it.

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
        # The encoder's chunks (`model.view_chunk`): each reads its own augmentation call.
        chunk=int(config.model.get("view_chunk", 0)),
        impl=impl,
        # "rows" writes the model's compute dtype (bf16 on GPU): one cast fewer in the step.
        dtype=DTYPES[config.model.dtype] if impl == "rows" else None,
    )


def loss_fn(config, net, num_views: int) -> Callable:
    """The per-device teacher loss: two disjoint view subsets, augmented, symmetrised SSL.

    `build` wraps it in the step; tests of the loss itself call it directly.

    Returns:
      `loss_fn(params, state, batch, rng, consts) -> (loss, (metrics, aux))`.
    """
    k = int(config.ssl.views_per_branch)
    if 2 * k > num_views:
        raise ConfigError(
            f"ssl.views_per_branch={k}: two disjoint subsets need {2 * k} <= V={num_views}"
        )
    method, lt = methods(config)

    def apply(p, x, state):
        """net.apply in train mode: ((embedding, aux), new batch_stats or None). With
        BatchNorm (`model.norm="batch"`, statistics averaged over `model.axis_name`) the
        running statistics live in `state.extra["batch_stats"]`."""
        if "batch_stats" not in state.extra:
            return net.apply({"params": p}, x), None
        out, upd = net.apply({"params": p, "batch_stats": state.extra["batch_stats"]}, x,
                             mutable=["batch_stats"])  # fmt: skip
        return out, upd["batch_stats"]

    def per_device(params, state, batch, rng, consts):
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
        strength = lt.strength(config, state, batch, sub)  # [b]
        x = _augment(config, sub(2), x, strength, split=not method.per_view)  # [b * 2k, ...]
        target = lt.target(config, state) if lt.replaces_target else method.target(state)
        per, stats = method.loss(apply, params, target, x, b, k, state)  # [b]
        loss = per.mean()
        metrics = {"ssl_loss": loss, "aug_strength": strength.mean()}
        aux = {"per_sample": sg(per), "index": batch["index"]}
        if stats is not None:  # the online branch's running statistics
            aux["batch_stats"] = sg(stats)
        return loss, (metrics, aux)

    return per_device


def _post_update(config, total_steps: int, steps_per_epoch: int) -> Callable:
    """EMA target, then the long-tail method's update, after each optimiser update."""
    _, lt = methods(config)

    def post_update(state: TrainState, aux, consts):
        del consts
        extra = dict(state.extra)
        epoch_end = state.step % steps_per_epoch == 0  # state.step already counts this step
        if "batch_stats" in aux:
            extra["batch_stats"] = aux["batch_stats"]
        if "target" in extra:
            tau = ssl.ema_tau(state.step, total_steps, config.ssl.tau_base)
            extra["target"] = ssl.ema_update(extra["target"], state.params, tau)
        extra = lt.post_update(config, extra, state, aux, epoch_end)
        return state.replace(extra=extra)

    return post_update


def _init_state(config, net, example_views, num_shapes: int, optimizer) -> TrainState:
    """Fresh host state: params, optimiser state and the methods' extras."""
    method, lt = methods(config)
    rng = jax.random.key(config.seed)
    # train=False: BatchNorm's statistics sync over the device axis, unbound outside the step.
    variables = jax.jit(net.init, static_argnames="train")(
        rng, jnp.asarray(example_views), train=False
    )
    params = variables["params"]
    extra = {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}
    if method.ema_target and not lt.replaces_target:
        extra["target"] = params
    extra.update(lt.init_extra(config, params, num_shapes))
    return jax.device_get(TrainState.create(params, optimizer, extra))


def build(
    config: ml_collections.ConfigDict,
    *,
    example_views: np.ndarray,
    num_shapes: int,
    num_views: int,
    steps_per_epoch: int | None = None,
) -> Experiment:
    """The teacher trainer for a config: no disk, no dataset.

    Args:
      config: a pretrain config (`sb3dr_jax/configs/pretrain.py`).
      example_views: [1, V, H, W, C] uint8 views (shapes the parameters).
      num_shapes: shapes in the training split (the BCL memory's size).
      num_views: V, views per shape.
      steps_per_epoch: optimiser steps per epoch (BCL / SDCLR refresh); default
        ceil(num_shapes / config.global_batch).

    Returns:
      The `Experiment` (model, host state, per-device step, no consts).

    Raises:
      ConfigError: an unknown `ssl.method` / `longtail.method`, or too few views per shape.
    """
    methods(config)  # unknown names fail before any tracing
    spe = steps_per_epoch or max(1, math.ceil(num_shapes / config.global_batch))
    net = model(config)
    optimizer = make_optimizer(config.optim, config.total_steps)
    state = _init_state(config, net, example_views, num_shapes, optimizer)
    step = make_step(
        loss_fn(config, net, num_views),
        optimizer,
        post_update=_post_update(config, int(config.total_steps), spe),
    )
    info = {
        "ssl.method": config.ssl.method,
        "longtail.method": config.longtail.method,
        "num_shapes": int(num_shapes),
        "steps_per_epoch": int(spe),
    }
    return Experiment(model=net, state=state, step=step, consts={}, info=info)


# ----------------------------------------------------------------------------------------------
# A trained teacher: loading, the shape encoder, the label-free evaluation.


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A trained teacher, read once from its workdir.

    Attributes:
      model: the teacher module (`SSLModel`).
      params: host params of the last checkpoint.
      config: the run's pretrain config.
      step: the checkpoint's step.
      workdir: where it was read from.
    """

    model: Any
    params: Any
    config: ml_collections.ConfigDict
    step: int
    workdir: str


def untrained(config, example_views: np.ndarray) -> Teacher:
    """A randomly initialised teacher (step 0, no workdir): for tests and benchmarks that need
    a teacher's shapes, not its training.

    Args:
      config: a pretrain config.
      example_views: [1, V, H, W, C] uint8 views.
    """
    net = model(config)
    params = jax.jit(net.init, static_argnames="train")(
        jax.random.key(config.seed), jnp.asarray(example_views), train=False
    )["params"]
    return Teacher(net, jax.device_get(params), config, 0, "")


def fingerprint(params) -> str:
    """A short stable hash of a params tree (the teacher's identity for the index)."""
    h = hashlib.sha1()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda t: str(t[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def check_config(config, workdir: str) -> None:
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


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """A teacher run's config, checked to be a teacher's.

    Raises:
      FileNotFoundError: no config.json (the message names the command to run first).
      ConfigError: the folder holds another kind of run.
    """
    from sb3dr_jax.train.loop import load_config as read

    try:
        config = read(workdir)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no teacher in {os.path.abspath(workdir)}: train it first with "
            f"`python -m launch.pretrain --workdir {workdir}`"
        ) from None
    check_config(config, workdir)
    return config


def load(workdir: str, config: ml_collections.ConfigDict | None = None) -> Teacher:
    """Loads a trained teacher (config and last checkpoint, each read once).

    Args:
      workdir: a pretrain workdir.
      config: its config when the caller has already read it (`load_config`), else None.

    Returns:
      The frozen `Teacher`.

    Raises:
      FileNotFoundError: no checkpoint in `workdir` (the message says what to run first).
      ConfigError: the folder holds another kind of run.
    """
    import orbax.checkpoint as ocp

    from sb3dr_jax.train.loop import checkpoint_manager

    ckpt = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt) or checkpoint_manager(workdir).latest_step() is None:
        raise FileNotFoundError(
            f"no teacher checkpoint in {os.path.abspath(workdir)}: train the teacher first with "
            f"`python -m launch.pretrain --workdir {workdir}`"
        )
    config = load_config(workdir) if config is None else config
    mngr = checkpoint_manager(workdir)
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.StandardRestore())
    mngr.close()
    return Teacher(model(config), restored["params"], config, int(step), workdir)


def shape_encoder(dp, net) -> Callable:
    """Data-parallel gallery descriptor: pooled encoder output, L2-normalised, [b, F]."""

    def embed(params, batch):
        # params, or the whole variables {"params", "batch_stats"} of a BatchNorm teacher.
        variables = params if "params" in params else {"params": params}
        emb, _ = net.apply(variables, batch["views"], method="embed")
        return l2_normalize(emb)

    return dp.map_fn(embed)


def evaluator(config, dp, net, builder) -> Callable:
    """Label-free teacher evaluation: k-NN accuracy and shape-to-shape mAP, by group.

    Returns:
      `eval_fn(device_state, step) -> {name: float}` for `fit`.
    """
    from sb3dr_jax.train.encode import encode_split

    meta = builder.info.metadata
    encode = shape_encoder(dp, net)
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
