"""The student library: cross-modal distillation with the enhanced triplet loss (METHODS.md 3).

The loss is a weighted sum of named terms picked from `LOSS_TERMS` by
`config.loss.terms = {name: weight}` (cen: centre alignment, rel: relational KD, kl: soft-label
KD, et: enhanced triplet); a zero weight drops the term and an unknown name is a `ConfigError`
naming `loss.terms`. The frozen teacher's targets come from a `TeacherTable` (every gallery
shape embedded once, cached next to the teacher checkpoint). `build(config, table, ...)`
assembles the trainer without disk or dataset: `distill.run`, the tests and `benchmarks/` train
the same step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sb3dr_jax import teacher as teacher_lib
from sb3dr_jax.experiment import Experiment
from sb3dr_jax.models import DTYPES, build_model, feature_dim, init_student_from_teacher
from sb3dr_jax.models.common import centre_and_normalize, l2_normalize, normalize_uint8
from sb3dr_jax.objectives import get_objective
from sb3dr_jax.registry import Registry
from sb3dr_jax.train import TrainState, gather, make_optimizer, make_step, sample_keys
from sb3dr_jax.train.augment import augment_sketches
from sb3dr_jax.train.step import AXIS

# ----------------------------------------------------------------------------------------------
# The teacher table.


def class_members(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shape indices padded to the largest class: ([C, M] int32, counts [C])."""
    counts = np.bincount(labels, minlength=num_classes)
    members = np.zeros((num_classes, max(int(counts.max()), 1)), np.int32)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        members[c, : len(idx)] = idx
    return members, counts.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TeacherTable:
    """The frozen teacher's gallery: every shape embedded once, in the distillation space.

    Attributes:
      teacher: the trained teacher the features come from.
      features: [N, F] descriptors centred on `mean` and L2-normalised (`centre_and_normalize`).
      mean: [F] the gallery mean subtracted from the unit descriptors.
      labels: [N] shape classes.
      centres: [C, F] unit class centres of `features`.
      members: [C, M] per-class row indices, padded (see `class_members`).
      counts: [C] class sizes.
      ids: the N model ids, in row order.
      teacher_id: the teacher params' fingerprint (the retrieval index's identity).
      path: the cache file ("" for a table built in memory).
    """

    teacher: teacher_lib.Teacher
    features: np.ndarray
    mean: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    members: np.ndarray
    counts: np.ndarray
    ids: list[str]
    teacher_id: str
    path: str = ""

    @property
    def step(self) -> int:
        """The teacher checkpoint's step."""
        return self.teacher.step

    @classmethod
    def from_raw(
        cls,
        teacher: teacher_lib.Teacher,
        raw: np.ndarray,
        labels: np.ndarray,
        ids: list[str],
        num_classes: int,
        path: str = "",
    ) -> TeacherTable:
        """A table from raw (unit) teacher descriptors [N, F] and their labels [N]."""
        from sb3dr_jax.objectives.kd import class_centres

        feats, mean = centre_and_normalize(raw)
        centres = np.asarray(class_centres(feats, labels, num_classes))
        members, counts = class_members(labels, num_classes)
        return cls(
            teacher=teacher,
            features=feats,
            mean=mean,
            labels=labels,
            centres=centres,
            members=members,
            counts=counts,
            ids=list(ids),
            teacher_id=teacher_lib.fingerprint(teacher.params),
            path=path,
        )

    def consts(self) -> dict:
        """The step's frozen inputs (host arrays) for the cached-table targets."""
        return {
            "features": self.features,
            "centres": self.centres,
            "members": self.members,
            "counts": self.counts,
        }


def random_table(
    teacher: teacher_lib.Teacher, num_shapes: int, num_classes: int, seed: int = 1
) -> TeacherTable:
    """A table of random unit descriptors (labels `arange(N) % C`) in `teacher`'s feature size:
    for tests and benchmarks of the student step, which need a table's shapes, not its values."""
    f = feature_dim(**teacher.config.model.to_dict())
    raw = np.random.RandomState(seed).randn(num_shapes, f).astype(np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    labels = np.arange(num_shapes) % num_classes
    return TeacherTable.from_raw(teacher, raw, labels, [str(i) for i in range(num_shapes)],
                                 num_classes)  # fmt: skip


def teacher_table(teacher: teacher_lib.Teacher, builder, dp, *, global_batch: int) -> TeacherTable:
    """Loads (or builds and caches) the teacher feature table for a dataset.

    The raw descriptors are cached next to the teacher checkpoint as
    `teacher_features_<step>_<dataset>.npz` with the params' fingerprint, and rebuilt only when
    the checkpoint (or the dataset) changes.

    Args:
      teacher: the loaded teacher (`teacher.load`).
      builder: the dataset whose shapes are embedded.
      dp: the data-parallel setup.
      global_batch: shapes per encoding call.

    Returns:
      The `TeacherTable`.
    """
    from sb3dr_jax.train.encode import encode_split

    tid = teacher_lib.fingerprint(teacher.params)
    tag = hashlib.sha1(builder.info.full_name.encode()).hexdigest()[:8]
    path = os.path.join(teacher.workdir, f"teacher_features_{teacher.step}_{tag}.npz")
    num_classes = len(builder.info.metadata["class_names"])
    cached = np.load(path) if os.path.exists(path) else None
    if cached is not None and "raw" in cached and str(cached["teacher_id"]) == tid:
        raw, labels, ids = cached["raw"], cached["labels"], [str(i) for i in cached["ids"]]
    else:
        fn = teacher_lib.shape_encoder(dp, teacher.model)
        raw, labels, ids = encode_split(
            dp,
            fn,
            dp.replicate(teacher.params),
            builder,
            "shapes",
            global_batch=global_batch,
            key="views",
        )
        if jax.process_index() == 0:
            np.savez(path, raw=raw, labels=labels, ids=np.asarray(ids), teacher_id=tid)
    return TeacherTable.from_raw(teacher, raw, labels, ids, num_classes, path=path)


def sample_pairs(rng, labels, members, counts):
    """For each sketch label, a random shape index of the same class (on device).

    Args:
      rng: PRNG key.
      labels: [b] sketch classes.
      members: [C, M] per-class shape indices.
      counts: [C] class sizes.

    Returns:
      [b] shape indices (a class without shapes yields index members[c, 0] = 0, masked by the
      caller through `counts`).
    """
    u = jax.random.uniform(rng, labels.shape)
    j = jnp.minimum((u * counts[labels]).astype(jnp.int32), jnp.maximum(counts[labels] - 1, 0))
    return members[labels, j]


# ----------------------------------------------------------------------------------------------
# Loss terms: `config.loss.terms = {name: weight}`.


@dataclasses.dataclass(frozen=True)
class TermInputs:
    """What every loss term sees (per device, with the global batch gathered).

    Attributes:
      s: [b, E] this device's student embeddings.
      y: [b] their labels.
      t: [b, F] their teacher targets (paired shapes).
      centres: [C, F] teacher class centres.
      s_all, y_all, t_all: the same over the global batch [G, ...].
      anchor_offset: this device's first row in the global batch.
    """

    s: jnp.ndarray
    y: jnp.ndarray
    t: jnp.ndarray
    centres: jnp.ndarray
    s_all: jnp.ndarray
    y_all: jnp.ndarray
    t_all: jnp.ndarray
    anchor_offset: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One named student loss term.

    Attributes:
      rank: its place in the sum (fixed, so the rounding of the total never depends on the
        order the config lists the terms in).
      fn: `(inputs, config.loss) -> scalar` (unweighted).
    """

    rank: int
    fn: Callable[[TermInputs, ml_collections.ConfigDict], jnp.ndarray]


LOSS_TERMS: Registry[LossTerm] = Registry("loss.terms")


def _centre_alignment(i: TermInputs, w) -> jnp.ndarray:
    return get_objective("centre_alignment")(i.s, i.y, i.centres, w.lam).mean()


def _relational(i: TermInputs, w) -> jnp.ndarray:
    # Similarity-preserving ("sp") or RKD's distance-wise relations, over the global batch.
    return get_objective("rkd" if w.relational == "rkd" else "relational")(i.s_all, i.t_all)


def _soft_label(i: TermInputs, w) -> jnp.ndarray:
    kt = i.centres[i.y] if w.kl_target == "centre" else i.t
    return get_objective("soft_label")(i.s, kt, i.centres, w.temperature).mean()


def _enhanced_triplet(i: TermInputs, w) -> jnp.ndarray:
    return get_objective("enhanced_triplet")(
        i.s,
        i.y,
        i.t_all,
        i.y_all,
        i.s_all,
        i.y_all,
        i.centres,
        m_x=w.m_x,
        m_s=w.m_s,
        mu=w.mu,
        nu=w.nu,
        anchor_offset=i.anchor_offset,
    ).mean()


LOSS_TERMS.register("cen", LossTerm(0, _centre_alignment))
LOSS_TERMS.register("rel", LossTerm(1, _relational))
LOSS_TERMS.register("kl", LossTerm(2, _soft_label))
LOSS_TERMS.register("et", LossTerm(3, _enhanced_triplet))


def loss_terms(config) -> list[tuple[str, float, LossTerm]]:
    """The config's weighted terms in summation order, zero weights dropped.

    Raises:
      ConfigError: a name not in `LOSS_TERMS` (the message names `loss.terms`).
    """
    terms = [(n, float(wt), LOSS_TERMS.get(n)) for n, wt in config.loss.terms.items()]
    return sorted([t for t in terms if t[1]], key=lambda t: t[2].rank)


# ----------------------------------------------------------------------------------------------
# The student model, its loss and `build`.


def model_kwargs(config, embed_dim: int) -> dict:
    """JSON-able kwargs that rebuild the student (saved in the export)."""
    return {**config.model.to_dict(), "embed_dim": int(embed_dim)}


def model(config, embed_dim: int) -> Any:
    """The student module (`SketchEncoder`) of a distill config, embedding into F = embed_dim."""
    return build_model("sketch_student", **model_kwargs(config, embed_dim))


def sketch_aug_kwargs(config) -> dict:
    """`augment_sketches` settings from the config's `sketch_aug` block (defaults without it)."""
    a = config.get("sketch_aug")
    return {} if a is None else dict(a.to_dict())


def _loss_fn(config, net, online: Any = None) -> Callable:
    """Per-device distillation loss: the weighted terms over the global batch.

    Args:
      config: the distill config.
      net: the student module.
      online: for `online_teacher`, the frozen teacher module (its params come in consts).

    Returns:
      `loss_fn(params, state, batch, rng, consts)` for `make_step`.
    """
    terms = loss_terms(config)
    impl = config.get("augment_impl", "map_coordinates")

    def targets(batch, consts, rng):
        if online is not None:  # online: embed the paired shapes' views now
            emb, _ = online.apply(
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
        rows = config.augment and impl == "rows"
        x = batch["image"] if rows else normalize_uint8(batch["image"])  # [b, S, S, 1]
        if config.augment:
            r_aug = jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys)
            x = augment_sketches(  # [b] keys
                r_aug,
                x,
                **sketch_aug_kwargs(config),
                # The encoder's chunks (`model.chunk`): each reads its own augmentation call.
                chunk=int(config.model.get("chunk", 0)),
                impl=impl,
                dtype=DTYPES[config.model.dtype] if rows else None,
            )
        s, _ = net.apply({"params": params}, x)  # [b, E]
        y, t, centres = batch["label"], targets(batch, consts, r_pair), consts["centres"]
        inputs = TermInputs(
            s=s,
            y=y,
            t=t,
            centres=centres,
            s_all=gather(s),  # global batch [G, ...]
            y_all=gather(y),
            t_all=gather(t),
            anchor_offset=jax.lax.axis_index(AXIS) * s.shape[0],
        )
        out = {name: wt * term.fn(inputs, config.loss) for name, wt, term in terms}
        loss = sum(out.values())
        return loss, ({f"loss_{k}": v for k, v in out.items()}, {})

    return loss_fn


def build(
    config: ml_collections.ConfigDict,
    table: TeacherTable,
    *,
    sketch_size: int,
    view_channels: list[str] | tuple[str, ...] = (),
) -> Experiment:
    """The student trainer for a config and a teacher table: no disk, no dataset.

    Args:
      config: a distill config (`sb3dr_jax/configs/distill.py`).
      table: the frozen teacher's table (features, centres, the teacher itself).
      sketch_size: S, the sketches' side in pixels.
      view_channels: the teacher's view channel names (`init_from_teacher` copies the stem's
        `line` channel when present, else the channel sum).

    Returns:
      The `Experiment`: student model, host state, per-device step and its consts.

    Raises:
      ConfigError: an unknown name in `loss.terms`.
    """
    loss_terms(config)  # unknown names fail before any tracing
    f_dim = feature_dim(**table.teacher.config.model.to_dict())
    net = model(config, f_dim)
    optimizer = make_optimizer(config.optim, config.total_steps)
    s = int(sketch_size)
    params = jax.jit(net.init)(jax.random.key(config.seed), jnp.zeros((1, s, s, 1), jnp.uint8))[
        "params"
    ]
    if config.init_from_teacher:
        chans = list(view_channels)
        params = init_student_from_teacher(
            params, table.teacher.params, chans.index("line") if "line" in chans else None
        )
    state = jax.device_get(TrainState.create(params, optimizer))
    consts = table.consts()
    online = None
    if config.online_teacher:
        online = table.teacher.model
        consts.update(teacher_params=table.teacher.params, mean=table.mean)
    step = make_step(_loss_fn(config, net, online), optimizer)
    info = {
        "loss.terms": {n: wt for n, wt, _ in loss_terms(config)},
        "embed_dim": int(f_dim),
        "teacher_step": int(table.step),
        "teacher_id": table.teacher_id,
    }
    return Experiment(model=net, state=state, step=step, consts=consts, info=info)
