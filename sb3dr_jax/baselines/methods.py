"""The eight literature baselines as registry-picked methods (METHODS.md section 4).

A method is one or more `Stage`s. Each stage contributes what the shared harness cannot guess:
its extra trainable params (learned centres, a classifier, DCA's sketch-to-shape
transformation), its extra state (CMSD's class memories, DCA's discriminator and that
discriminator's own optimiser state), its loss over the global batch, its post-update (run
inside the same pure step, after the optimiser update) and, where it needs data prepared
before training (CGN's class centres from its stage-1 classifier, the quadruplet method's
class soft targets), a `prepare` hook that `harness.run` calls with the shape embeddings of
the training shapes.

Every loss sees `emb = {"s": [G, E] sketch, "t": [G, E] paired shape, "y": [G]}`, gathered over
the data axis (identical on every device), unit-normalised embeddings; a stage that uses only
one modality gets only that key. Hyperparameters come from `Method.hp`, overridable per
method in the config (`hp.<method>.<name>`); the harness adds `hp["num_classes"]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sb3dr_jax.models.common import l2_normalize
from sb3dr_jax.objectives import baselines as bl
from sb3dr_jax.objectives import kd
from sb3dr_jax.objectives.common import euclidean_distance_matrix
from sb3dr_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage of a method (most methods have one).

    Attributes:
      name: the stage's name (its workdir subfolder when a method has several).
      loss: `loss(hp, emb, params, extra, consts) -> (scalar, {term: value}, aux)`.
      uses: the encoders the loss needs, ("sketch", "shape") or one of them.
      train: "all" or "sketch" (the shape encoder frozen: CGN's student stage).
      init_params: `(key, num_classes, embed_dim, hp) -> {name: array}` extra trainable params.
      init_extra: `(num_classes, embed_dim, hp) -> {name: pytree}` extra state.
      post_update: `(hp, state, aux) -> state`, inside the step after the update.
      prepare: `(hp, shape_emb [N, E], shape_labels [N], num_classes) -> consts`, on the host
        before the stage trains, from the current shape encoder on the training shapes.
    """

    name: str
    loss: Callable
    uses: tuple[str, ...] = ("sketch", "shape")
    train: str = "all"
    init_params: Callable | None = None
    init_extra: Callable | None = None
    post_update: Callable | None = None
    prepare: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered baseline.

    Attributes:
      name: its registry name (`method` in the config).
      stages: trained in order; each starts from the previous stage's params.
      hp: default hyperparameters (margins, weights, temperatures).
      pooling: view pooling of the shape encoder: "max", "mean" or "lwbr" (Sinkhorn
        Wasserstein barycentre of the view features).
      query: `(params, s) -> s'`: what a query sketch embedding goes through at retrieval
        (DCA's sketch-to-shape transformation); None = the embedding itself.
      cite: the source, for the results table.
    """

    name: str
    stages: tuple[Stage, ...]
    hp: dict
    pooling: str = "max"
    query: Callable | None = None
    cite: str = ""


BASELINES: Registry[Method] = Registry("method")


def _register(m: Method) -> Method:
    return BASELINES.register(m.name, m)


def _classifier(key, num_classes: int, embed_dim: int, hp) -> dict:
    return {"classifier": 0.1 * jax.random.normal(key, (embed_dim, num_classes))}


def _off_mean(x: jnp.ndarray) -> jnp.ndarray:
    """Mean of a [G, G] matrix over its off-diagonal entries (pairs of distinct items)."""
    off = 1.0 - jnp.eye(x.shape[0], dtype=x.dtype)
    return jnp.sum(x * off) / jnp.maximum(off.sum(), 1.0)


# --- Siamese (Wang, Kang & Li, CVPR 2015) -----------------------------------------------------


def _siamese(hp, emb, params, extra, consts):
    s, t, y = emb["s"], emb["t"], emb["y"]
    same = y[:, None] == y[None]  # [G, G]: every in-batch pair, not only the fed pairs
    pair = lambda a, b: bl.siamese_pair_loss(a[:, None], b[None], same, hp["c_p"], hp["c_n"])
    terms = {"ss": _off_mean(pair(s, s)), "vv": _off_mean(pair(t, t)), "sv": pair(s, t).mean()}
    return sum(terms.values()), terms, {}


_register(
    Method(
        "siamese",
        (Stage("joint", _siamese),),
        hp=dict(c_p=0.2, c_n=10.0),
        cite="Wang, Kang & Li, CVPR 2015",
    )
)


# --- DCML (Dai et al., AAAI 2017) --------------------------------------------------------------


def _dcml(hp, emb, params, extra, consts):
    loss = bl.dcml_loss(emb["s"], emb["y"], emb["t"], emb["y"], hp["alpha"], hp["h"])
    return loss, {"dcml": loss}, {}


_register(
    Method(
        "dcml", (Stage("joint", _dcml),), hp=dict(alpha=0.5, h=1.0), cite="Dai et al., AAAI 2017"
    )
)


# --- LWBR (Xie et al., CVPR 2017): the shape encoder pools views by a Wasserstein barycentre -----


def _lwbr(hp, emb, params, extra, consts):
    loss = bl.lwbr_loss(emb["s"], emb["y"], emb["t"], emb["y"], hp["margin"])
    return loss, {"lwbr": loss}, {}


_register(
    Method(
        "lwbr",
        (Stage("joint", _lwbr),),
        hp=dict(margin=1.0),
        pooling="lwbr",
        cite="Xie et al., CVPR 2017",
    )
)


# --- DCA (Chen & Fang, ECCV 2018) ----------------------------------------------------------------


def _mlp(p: dict, x: jnp.ndarray) -> jnp.ndarray:
    """Two dense layers with a ReLU between: [..., E] -> [..., out]."""
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _mlp_init(key, e: int, hidden: int, out: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (e, hidden)) / np.sqrt(e),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden, out)) / np.sqrt(hidden) * 0.1,
        "b2": jnp.zeros((out,)),
    }


def dca_transform(params: dict, s: jnp.ndarray) -> jnp.ndarray:
    """DCA's sketch-to-shape transformation f_trans (residual MLP, unit output), [b, E]."""
    return l2_normalize(s + _mlp(params["trans"], s))


def _dca_disc_opt(hp) -> optax.GradientTransformation:
    return optax.adam(hp["disc_lr"], b1=0.5)


def _dca_init_params(key, num_classes, embed_dim, hp):
    return {"trans": _mlp_init(key, embed_dim, embed_dim, embed_dim)}


def _dca_init_extra(num_classes, embed_dim, hp):
    disc = _mlp_init(jax.random.key(17), embed_dim, embed_dim, 1)
    return {"disc": disc, "disc_opt": _dca_disc_opt(hp).init(disc)}


def _disc_loss(disc, z_trans, z_shape):
    """The discriminator's side: shapes are "real" (1), transformed sketches "fake" (0)."""
    real = optax.sigmoid_binary_cross_entropy(_mlp(disc, z_shape)[:, 0], 1.0)
    fake = optax.sigmoid_binary_cross_entropy(_mlp(disc, z_trans)[:, 0], 0.0)
    return real.mean() + fake.mean()


def _dca(hp, emb, params, extra, consts):
    zt, t, y = dca_transform(params, emb["s"]), emb["t"], emb["y"]
    metric = bl.dca_loss(zt, y, t, y, hp["num_classes"], hp["eta"], hp["w_cmd"])
    # The transformation fools the discriminator (eq. 18-20, non-saturating form); the
    # discriminator's params are state, not params, so this term moves f_trans and the encoders.
    gan = optax.sigmoid_binary_cross_entropy(_mlp(extra["disc"], zt)[:, 0], 1.0).mean()
    terms = {"metric": metric, "gan": hp["w_gan"] * gan}
    aux = {"zt": jax.lax.stop_gradient(zt), "t": jax.lax.stop_gradient(t)}
    return sum(terms.values()), terms, aux


def _dca_post(hp, state, aux):
    # The discriminator's own optimiser step, in the same pure step. Its inputs are the
    # gathered (identical on every device) features, so every replica takes the same step.
    disc, dopt = state.extra["disc"], state.extra["disc_opt"]
    grads = jax.grad(_disc_loss)(disc, aux["zt"], aux["t"])
    updates, dopt = _dca_disc_opt(hp).update(grads, dopt, disc)
    extra = {**state.extra, "disc": optax.apply_updates(disc, updates), "disc_opt": dopt}
    return state.replace(extra=extra)


_register(
    Method(
        "dca",
        (
            Stage(
                "joint",
                _dca,
                init_params=_dca_init_params,
                init_extra=_dca_init_extra,
                post_update=_dca_post,
            ),
        ),
        hp=dict(eta=0.5, w_cmd=0.1, w_gan=0.1, disc_lr=1e-3),
        query=dca_transform,
        cite="Chen & Fang, ECCV 2018",
    )
)


# --- TCL (He et al., CVPR 2018): learned centres shared by both domains ----------------------------


def _tcl_init(key, num_classes, embed_dim, hp):
    return {"centres": l2_normalize(jax.random.normal(key, (num_classes, embed_dim)))}


def _tcl(hp, emb, params, extra, consts):
    f = jnp.concatenate([emb["s"], emb["t"]])  # [2G, E]
    y = jnp.concatenate([emb["y"], emb["y"]])
    loss = bl.triplet_centre_loss(f, y, params["centres"], hp["margin"]).mean()
    return loss, {"tcl": loss}, {}


_register(
    Method(
        "tcl",
        (Stage("joint", _tcl, init_params=_tcl_init),),
        hp=dict(margin=0.5),
        cite="He et al., CVPR 2018",
    )
)


# --- CGN (Dai & Liang, ICME 2020): classifier teacher, then centre-guided sketch student --------


def _cgn_teacher(hp, emb, params, extra, consts):
    loss = bl.am_softmax_loss(emb["t"], emb["y"], params["classifier"], hp["scale"], hp["m"])
    return loss.mean(), {"am_softmax": loss.mean()}, {}


def class_centres(shape_emb, labels, num_classes: int) -> np.ndarray:
    """Unit class means of shape embeddings, [C, E]; a class without shapes gets a zero row."""
    e = np.asarray(shape_emb, np.float32)
    sums = np.zeros((num_classes, e.shape[1]), np.float32)
    np.add.at(sums, np.asarray(labels), e)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-8), 0.0).astype(np.float32)


def _cgn_prepare(hp, shape_emb, labels, num_classes):
    return {"centres": class_centres(shape_emb, labels, num_classes)}


def _cgn_student(hp, emb, params, extra, consts):
    loss = kd.centre_alignment_loss(emb["s"], emb["y"], consts["centres"], hp["lam"]).mean()
    return loss, {"centre": loss}, {}


_register(
    Method(
        "cgn",
        (
            Stage("teacher", _cgn_teacher, uses=("shape",), init_params=_classifier),
            Stage("student", _cgn_student, uses=("sketch",), train="sketch", prepare=_cgn_prepare),
        ),
        hp=dict(scale=16.0, m=0.35, lam=0.1),
        cite="Dai & Liang, ICME 2020",
    )
)


# --- Domain-balanced quadruplet (Tursun et al., PR 2022) ---------------------------------------


def _quad_prepare(hp, shape_emb, labels, num_classes):
    # Class-oriented soft targets prepared before training: the class-centre similarities of
    # the shape encoder as it starts (the paper uses an ImageNet classifier's semantics; here the
    # initial encoder is the teacher, so no outside data is needed).
    c = class_centres(shape_emb, labels, num_classes)
    logits = (c @ c.T) / float(hp["kd_temperature"])
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits)
    return {"soft_targets": (p / p.sum(1, keepdims=True)).astype(np.float32)}


def _hardest(d: jnp.ndarray, neg: jnp.ndarray) -> jnp.ndarray:
    """Index of each row's nearest negative, [G] (row i: argmin_j d[i, j] over neg[i, j])."""
    return jnp.argmin(jnp.where(neg, d, jnp.inf), 1)


def _quadruplet(hp, emb, params, extra, consts):
    s, t, y = emb["s"], emb["t"], emb["y"]
    neg = y[:, None] != y[None]
    n_view = t[_hardest(euclidean_distance_matrix(s, t), neg)]
    n_sketch = s[_hardest(euclidean_distance_matrix(s, s), neg)]
    quad = bl.quadruplet_loss(s, t, n_view, n_sketch, hp["margin"]).mean()
    ls = bl.cosine_logits(s, params["classifier"], hp["scale"])
    lt = bl.cosine_logits(t, params["classifier"], hp["scale"])
    cls = (
        optax.softmax_cross_entropy_with_integer_labels(ls, y).mean()
        + optax.softmax_cross_entropy_with_integer_labels(lt, y).mean()
    )
    skp = bl.soft_target_kl(ls, consts["soft_targets"][y], hp["kd_temperature"]).mean()
    terms = {"quad": quad, "cls": hp["w_cls"] * cls, "skp": hp["w_skp"] * skp}
    return sum(terms.values()), terms, {}


_register(
    Method(
        "quadruplet",
        (Stage("joint", _quadruplet, init_params=_classifier, prepare=_quad_prepare),),
        hp=dict(margin=0.2, scale=16.0, w_cls=0.5, w_skp=0.5, kd_temperature=0.1),
        cite="Tursun et al., Pattern Recognition 2022",
    )
)


# --- Cross-modal self-distillation (Tian et al., Journal of Software 2022) ---------------------


def _cmsd_extra(num_classes, embed_dim, hp):
    uniform = jnp.full((num_classes, num_classes), 1.0 / num_classes)
    return {"view_memory": uniform, "sketch_memory": uniform}


def _class_mean_update(memory, probs, labels, momentum: float):
    """EMA of the per-class mean prediction; classes absent from the batch keep their row."""
    c = memory.shape[0]
    sums = jax.ops.segment_sum(probs, labels, num_segments=c)
    n = jax.ops.segment_sum(jnp.ones_like(labels, probs.dtype), labels, num_segments=c)
    mean = sums / jnp.maximum(n, 1.0)[:, None]
    return jnp.where((n > 0)[:, None], momentum * memory + (1 - momentum) * mean, memory)


def _cmsd(hp, emb, params, extra, consts):
    s, t, y = emb["s"], emb["t"], emb["y"]
    ls = bl.cosine_logits(s, params["classifier"], hp["scale"])
    lt = bl.cosine_logits(t, params["classifier"], hp["scale"])
    ce = (
        optax.softmax_cross_entropy_with_integer_labels(ls, y).mean()
        + optax.softmax_cross_entropy_with_integer_labels(lt, y).mean()
    )
    sg = jax.lax.stop_gradient
    tmp = hp["temperature"]
    views = _class_mean_update(
        extra["view_memory"], jax.nn.softmax(sg(lt) / tmp), y, hp["momentum"]
    )
    sketches = _class_mean_update(
        extra["sketch_memory"], jax.nn.softmax(sg(ls) / tmp), y, hp["momentum"]
    )
    # Cross-modal targets: this batch's per-class view prediction (through the memory, so
    # classes without views in the batch still have one); self-distillation: the memory of
    # earlier sketch predictions (before this batch, so a sketch does not teach itself).
    sd = bl.cross_modal_self_distillation(
        ls, y, views, extra["sketch_memory"], tmp, hp["w_self"]
    ).mean()
    terms = {"ce": ce, "cmsd": hp["w_sd"] * sd}
    return sum(terms.values()), terms, {"view_memory": views, "sketch_memory": sketches}


def _cmsd_post(hp, state, aux):
    return state.replace(extra={**state.extra, **aux})


_register(
    Method(
        "cmsd",
        (
            Stage(
                "joint",
                _cmsd,
                init_params=_classifier,
                init_extra=_cmsd_extra,
                post_update=_cmsd_post,
            ),
        ),
        hp=dict(scale=16.0, temperature=2.0, w_self=0.5, w_sd=1.0, momentum=0.9),
        cite="Tian et al., Journal of Software 2022",
    )
)


__all__ = ["BASELINES", "Method", "Stage", "class_centres", "dca_transform"]
