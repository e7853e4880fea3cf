"""The joint-training harness of the baselines: `build(config, ...)` and `run(config, workdir)`.

`build` needs no disk and no dataset: it returns the `Experiment` (joint model, initial state
with the method's params and extras, per-device step, consts) of one stage of one method.
`run` is data -> build -> `train.loop.fit` (checkpoints, resume) -> the thesis student's
evaluation (SHREC metrics, head/medium/tail; queries: test sketches, gallery: every shape
encoded by the method's shape encoder) -> `summary.json`. With `trials` > 1 it trains one run
per learning rate of the grid on the training split minus a validation split (sketches, and
shapes: the methods train with shape labels), picks the best validation mAP and reports that
run's test figures once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sb3dr_jax import evals
from sb3dr_jax.baselines.methods import BASELINES, Method, Stage
from sb3dr_jax.baselines.model import joint_model
from sb3dr_jax.experiment import Experiment
from sb3dr_jax.models.common import normalize_uint8
from sb3dr_jax.train import TrainState, data_parallel, fit, gather, make_optimizer, make_step
from sb3dr_jax.train.augment import augment_sketches
from sb3dr_jax.train.encode import embed_arrays
from sb3dr_jax.train.loop import save_config, write_metrics
from sb3dr_jax.train.step import sample_keys

# Initial joint-model params by (model config, input shapes, seed): the methods differ only in
# view pooling, which has no parameters, so every method starts from the same draw and the
# initialisation (a compilation of both encoders) runs once per process.
_INIT_CACHE: dict[tuple, dict] = {}

SUMMARY_KEYS = ("NN", "FT", "ST", "E", "DCG", "mAP", "mAP_shrec_matlab", "mAP_pr_mean")


def method_hp(config, method: Method, num_classes: int) -> dict:
    """The method's hyperparameters: its defaults, then `config.hp.<method>`, + num_classes.

    Raises:
      ValueError: an override names a hyperparameter the method does not have.
    """
    hp = dict(method.hp)
    over = config.get("hp", {}).get(method.name, {})
    over = over.to_dict() if hasattr(over, "to_dict") else dict(over)
    unknown = sorted(set(over) - set(hp))
    if unknown:
        raise ValueError(f"hp.{method.name}: unknown {unknown}; known: {sorted(hp)}")
    hp.update(over)
    hp["num_classes"] = int(num_classes)
    return hp


def _optimizer(config, stage: Stage) -> optax.GradientTransformation:
    opt = make_optimizer(config.optim, int(config.total_steps))
    if stage.train == "all":
        return opt
    # CGN's student stage: the shape encoder (and its head) stay as stage 1 left them; a
    # zero update also keeps AdamW's weight decay off them.
    label = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if path[0].key == "net" and path[1].key != "sketch" else "train",
        params,
    )
    return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, label)


def build(
    config,
    *,
    num_classes: int,
    sketch_size: int,
    view_shape: tuple[int, int, int, int],
    stage: int = 0,
    consts: dict | None = None,
    net_params=None,
) -> Experiment:
    """One stage of the configured method, ready for `fit`.

    Args:
      config: a compare config (`sb3dr_jax/configs/compare.py`) naming `method`.
      num_classes: C.
      sketch_size: S of the [S, S, 1] sketches.
      view_shape: (V, H, W, channels) of a shape's views.
      stage: which of the method's stages.
      consts: the stage's prepared consts (`Stage.prepare`); None: none.
      net_params: the joint model's params to start from (a previous stage); None: fresh.

    Returns:
      The `Experiment`; `info` holds the method, stage and hyperparameters.

    Raises:
      ConfigError: unknown `method` (naming the field and listing the choices).
    """
    method = BASELINES.get(config.method)
    st = method.stages[stage]
    hp = method_hp(config, method, num_classes)
    model = joint_model(config.model, method.pooling)
    key = jax.random.key(int(config.seed))
    k_net, k_extra = jax.random.split(key)
    images = jnp.zeros((1, sketch_size, sketch_size, 1), jnp.uint8)
    views = jnp.zeros((1, *view_shape), jnp.uint8)
    if net_params is None:
        memo = (json.dumps(config.model.to_dict(), sort_keys=True), sketch_size, view_shape)
        memo += (int(config.seed),)
        if memo not in _INIT_CACHE:
            init = jax.jit(lambda k: model.init(k, images, views, method="init_all"))
            _INIT_CACHE[memo] = jax.device_get(init(k_net)["params"])
        net_params = _INIT_CACHE[memo]
    e = int(config.model.embed_dim)
    params = {"net": net_params}
    if st.init_params is not None:
        params.update(st.init_params(k_extra, num_classes, e, hp))
    extra = st.init_extra(num_classes, e, hp) if st.init_extra is not None else {}
    optimizer = _optimizer(config, st)
    state = jax.device_get(TrainState.create(params, optimizer, extra))
    aug = dict(config.sketch_aug.to_dict()) if config.get("sketch_aug") else {}
    chunk = int(config.model.get("chunk", 0))

    def loss_fn(params, state, batch, rng, consts):
        y = batch["label"]  # [b]
        emb = {"y": gather(y)}
        if "sketch" in st.uses:
            x = normalize_uint8(batch["image"])  # [b, S, S, 1]
            if config.augment:
                x = augment_sketches(sample_keys(rng, y.shape[0]), x, **aug, chunk=chunk)
            s, _ = model.apply({"params": params["net"]}, x)
            emb["s"] = gather(s)  # [G, E]
        if "shape" in st.uses:
            t, _ = model.apply({"params": params["net"]}, batch["views"], method="embed_shape")
            emb["t"] = gather(t)  # [G, E], paired row by row with the sketches
        loss, terms, aux = st.loss(hp, emb, params, state.extra, consts)
        return loss, ({f"loss_{k}": v for k, v in terms.items()}, aux)

    post = None
    if st.post_update is not None:
        post = lambda state, aux, consts: st.post_update(hp, state, aux)
    step = make_step(loss_fn, optimizer, post_update=post)
    info = {"method": method.name, "stage": st.name, "hp": hp, "cite": method.cite}
    return Experiment(model, state, step, dict(consts or {}), info)


@dataclasses.dataclass
class JointData:
    """Every sketch and shape of a dataset in host memory, with the train/validation split.

    Attributes:
      builder: the prepared dataset.
      sketches: uint8 [N, S, S, 1] training sketches; sketch_labels: [N].
      views: uint8 [M, V, H, W, C] every shape's views; shape_labels: [M]; shape_ids.
      train_sketches / val_sketches, train_shapes / val_shapes: index arrays.
      class_names: the dataset's classes.
    """

    builder: object
    sketches: np.ndarray
    sketch_labels: np.ndarray
    views: np.ndarray
    shape_labels: np.ndarray
    shape_ids: list
    train_sketches: np.ndarray
    val_sketches: np.ndarray
    train_shapes: np.ndarray
    val_shapes: np.ndarray
    class_names: list


def load_data(config) -> JointData:
    """Reads the dataset into memory and carves the validation split (`sketch_data`).

    The sketch split is `carve_validation` of the training sketches with `val_seed`, the same
    function and seed the thesis student uses, so every method validates on the same sketches.
    """
    import tensorflow_datasets as tfds

    from sb3dr_jax.data import dataset_from_config, require_splits
    from sb3dr_jax.data import sketch_sampling as ss

    builder = dataset_from_config(config.dataset)
    require_splits(builder, ("shapes", "sketch_train", "sketch_test"), needed_by="baselines")
    images, labels, _ = ss.load_sketch_split(builder, "sketch_train")
    shapes = list(tfds.as_numpy(builder.as_dataset(split="shapes", shuffle_files=False)))
    views = np.stack([ex["views"] for ex in shapes]).astype(np.uint8)
    shape_labels = np.asarray([int(ex["label"]) for ex in shapes], np.int32)
    frac, seed = float(config.sketch_data.val_fraction), int(config.sketch_data.val_seed)
    tr_sk, va_sk = ss.carve_validation(labels, frac, seed)
    tr_sh, va_sh = ss.carve_validation(shape_labels, frac, seed)
    return JointData(
        builder,
        images,
        labels,
        views,
        shape_labels,
        [ex["id"].decode() for ex in shapes],
        tr_sk,
        va_sk,
        tr_sh,
        va_sh,
        list(builder.info.metadata["class_names"]),
    )


def joint_batches(data: JointData, config):
    """Training batches: sketches by `sketch_data.sampler`, each paired with a random training
    shape of its class (a class without training shapes borrows any shape of its class).

    Yields:
      {"image": uint8 [D, b, S, S, 1], "label": int32 [D, b], "views": uint8 [D, b, V, H, W, C]}
      for this process's share of each global batch.
    """
    from sb3dr_jax.data import sketch_sampling as ss

    sd = config.sketch_data
    train_labels = data.sketch_labels[data.train_sketches]
    indices = ss.index_batches(
        train_labels,
        sampler=sd.sampler,
        global_batch=int(config.global_batch),
        seed=int(config.seed),
        pk_k=int(sd.pk_k),
    )
    nc = len(data.class_names)
    members = [data.train_shapes[data.shape_labels[data.train_shapes] == c] for c in range(nc)]
    members = [
        m if len(m) else np.flatnonzero(data.shape_labels == c) for c, m in enumerate(members)
    ]
    rng = np.random.default_rng(int(config.seed) + 1)
    pc, pi, d = jax.process_count(), jax.process_index(), jax.local_device_count()
    for idx in indices:
        gi = data.train_sketches[idx]
        y = data.sketch_labels[gi]
        shp = np.array([members[c][rng.integers(len(members[c]))] for c in y])
        per = len(gi) // pc
        mine = slice(pi * per, (pi + 1) * per)
        lay = lambda a: a[mine].reshape((d, per // d) + a.shape[1:])
        yield {
            "image": lay(data.sketches[gi]),
            "label": lay(y.astype(np.int32)),
            "views": lay(data.views[shp]),
        }


def encoders(dp, model, method: Method):
    """(query fn, gallery fn) of a joint model over the devices: `dp.map_fn` of per-device
    `fn(params, x [b, ...]) -> [b, E]`, for `embed_arrays`."""

    def query(params, x):
        s, _ = model.apply({"params": params["net"]}, x, train=False)
        return s if method.query is None else method.query(params, s)

    def gallery(params, v):
        return model.apply({"params": params["net"]}, v, train=False, method="embed_shape")[0]

    return dp.map_fn(query), dp.map_fn(gallery)


def evaluate(config, dp, model, method: Method, params, data: JointData) -> dict:
    """The thesis student's protocol: test sketches (and the validation sketches, when carved)
    against every shape, SHREC metrics with the head/medium/tail breakdown. Queries and
    gallery are embedded over every device and host (`embed_arrays`).

    Returns:
      The test summary; `summary["val"]` holds the validation summary when there is one.
    """
    from sb3dr_jax.data import sketch_sampling as ss

    q_fn, g_fn = encoders(dp, model, method)
    b, params = int(config.eval.global_batch), dp.replicate(params)
    gallery = embed_arrays(dp, g_fn, params, data.views, b)  # [M, E]
    kw = dict(
        class_names=data.class_names,
        group_thresholds=(int(config.eval.head_min), int(config.eval.tail_max)),
        num_classes=len(data.class_names),
    )
    test_images, test_labels, test_ids = ss.load_sketch_split(data.builder, "sketch_test")
    if len(test_images) == 0:
        raise ValueError(f"{data.builder.info.full_name}: split 'sketch_test' has no sketches")
    summary = evals.evaluate_retrieval(
        embed_arrays(dp, q_fn, params, test_images, b),
        test_labels,
        gallery,
        data.shape_labels,
        query_ids=test_ids,
        gallery_ids=data.shape_ids,
        **kw,
    )
    if len(data.val_sketches):
        v = data.val_sketches
        summary["val"] = evals.evaluate_retrieval(
            embed_arrays(dp, q_fn, params, data.sketches[v], b),
            data.sketch_labels[v],
            gallery,
            data.shape_labels,
            **kw,
        )
    return summary


def _train_stage(config, workdir, data: JointData, dp, stage: int, net_params, method):
    """Prepares, builds and fits one stage; returns (model, final host params)."""
    st = method.stages[stage]
    nc = len(data.class_names)

    def make(consts):
        return build(
            config,
            num_classes=nc,
            sketch_size=data.sketches.shape[1],
            view_shape=data.views.shape[1:],
            stage=stage,
            consts=consts,
            net_params=net_params,
        )

    consts = None
    if st.prepare is not None:
        probe = make({})  # the encoders as this stage starts, to prepare its consts
        _, g_fn = encoders(dp, probe.model, method)
        tr, params = data.train_shapes, dp.replicate(probe.state.params)
        emb = embed_arrays(dp, g_fn, params, data.views[tr], int(config.eval.global_batch))
        consts = st.prepare(probe.info["hp"], emb, data.shape_labels[tr], nc)
    exp = make(consts)
    final = fit(
        config=config,
        workdir=workdir,
        dp=dp,
        state=exp.state,
        step_fn=exp.step,
        batches=joint_batches(data, config),
        consts=exp.consts,
        total_steps=int(config.total_steps),
        prefix=f"{method.name}/{st.name}",
    )
    return exp.model, final.params


def train_one(config, workdir: str, data: JointData | None = None) -> dict:
    """Trains every stage of `config.method` in `workdir` and evaluates it.

    Args:
      config: a compare config naming `method` (one learning rate: `optim.lr`).
      workdir: output folder (resumed: `fit` restores the newest checkpoint of each stage).
      data: the loaded data (None: loaded here).

    Returns:
      The test summary plus `train_s` (training wall time, this invocation) and `info`.
    """
    method = BASELINES.get(config.method)
    save_config(config, workdir)
    data = data or load_data(config)
    dp = data_parallel(config.parallel)
    t0, net, model, params = time.perf_counter(), None, None, None
    for i, st in enumerate(method.stages):
        sub = workdir if len(method.stages) == 1 else os.path.join(workdir, st.name)
        c = config
        if i < len(method.stages) - 1:
            # A teacher stage (CGN's classifier) gets the thesis teacher's budget.
            c = ml_collections.ConfigDict(config.to_dict())
            c.total_steps = int(config.teacher_steps)
        model, params = _train_stage(c, sub, data, dp, i, net, method)
        net = params["net"]
    train_s = time.perf_counter() - t0
    summary = evaluate(config, dp, model, method, params, data)
    scalars = {f"eval/sketch_test/{k}": summary[k] for k in SUMMARY_KEYS}
    if "val" in summary:
        scalars.update({f"eval/sketch_val/{k}": summary["val"][k] for k in SUMMARY_KEYS})
    last = workdir if len(method.stages) == 1 else os.path.join(workdir, method.stages[-1].name)
    write_metrics(last, int(config.total_steps), scalars)
    summary["train_s"] = train_s
    summary["info"] = {"method": method.name, "cite": method.cite, "lr": float(config.optim.lr)}
    return summary


def trial_configs(config) -> list:
    """The tuning grid: `trials` learning rates, `optim.lr` x the first `trials` `lr_factors`.

    Every method gets the same grid size; with one trial the config's lr is used as is.

    Raises:
      ValueError: more trials than `lr_factors`.
    """
    n = int(config.trials)
    factors = list(config.lr_factors)
    if not 1 <= n <= len(factors):
        raise ValueError(f"trials={n}: must be between 1 and len(lr_factors)={len(factors)}")
    out = []
    for f in factors[:n]:
        c = ml_collections.ConfigDict(config.to_dict())
        c.optim.lr = float(config.optim.lr) * float(f)
        out.append(c)
    return out


def choose(results: list[dict]) -> dict:
    """The summary of the trial with the best validation mAP, with `chosen` (its index),
    `trials` (each trial's lr and validation mAP) and `train_s` summed over all trials."""
    best = select(results)
    summary = dict(results[best])
    summary["chosen"] = best
    summary["trials"] = [
        {"lr": r["info"]["lr"], "val_mAP": r["val"]["mAP"] if "val" in r else None} for r in results
    ]
    summary["train_s"] = float(sum(r["train_s"] for r in results))
    return summary


def select(trials: list[dict]) -> int:
    """Index of the trial with the best validation mAP (the first when there is no val)."""
    scores = [t["val"]["mAP"] if "val" in t else 0.0 for t in trials]
    return int(np.argmax(scores))


def run(config, workdir: str) -> dict:
    """Trains `config.method` (each trial of the grid), chooses on validation, writes
    `<workdir>/summary.json` with the chosen trial's test figures.

    Args:
      config: a compare config (`method=<name>`).
      workdir: output folder; `trial_<i>/` per trial when `trials` > 1.

    Returns:
      The chosen trial's summary, with `trials` (each trial's lr and validation mAP),
      `chosen` and the summed `train_s` of all trials.
    """
    BASELINES.get(config.method)  # unknown names fail before any work
    configs = trial_configs(config)
    data = load_data(config)
    results = []
    for i, c in enumerate(configs):
        sub = workdir if len(configs) == 1 else os.path.join(workdir, f"trial_{i}")
        results.append(train_one(c, sub, data))
    summary = choose(results)
    best = summary["chosen"]
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=jsonable)
        print(
            f"[{config.method}] sketch_test: mAP={summary['mAP']:.4f} NN={summary['NN']:.4f} "
            f"(trial {best} of {len(results)}, lr {summary['info']['lr']:g})",
            flush=True,
        )
    return summary


def jsonable(o):
    """numpy scalars and arrays in a summary -> JSON values."""
    return o.tolist() if hasattr(o, "tolist") else float(o)
