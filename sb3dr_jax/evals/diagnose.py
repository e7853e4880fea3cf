"""Where retrieval is lost: the teacher's space, the ceiling it allows, the student's sketches.

Pure numpy on embeddings and labels (the launcher `launch/diagnose.py` supplies them):

- `teacher_report`: the teacher's label-free shape space (leave-one-out k-NN, mAP, by group);
- `oracle_report`: an oracle student that maps every query sketch to its class centre in the
  teacher space (the ceiling the teacher allows), and the same oracle that is right only for a
  fraction p of the queries (a wrong query goes to another class's centre): how well the
  student must classify sketches to reach a given mAP;
- `sketch_report`: the student's sketch-only class structure (sketch-to-sketch 1-NN from the
  query split to a gallery of training sketches, leave-one-out k-NN within the queries, and
  nearest-teacher-centre accuracy);
- `batch_report`: the share of anchors that have an in-batch positive under each sampler;
- `ink_fraction`: how much of an image is ink (sketch rasters against the line views).
"""

from __future__ import annotations

import numpy as np

from sb3dr_jax.data.sketch_sampling import SAMPLERS, index_batches, positive_fraction
from sb3dr_jax.evals.groups import class_groups
from sb3dr_jax.evals.metrics import evaluate_retrieval, knn_predict, rank_gallery

INK_THRESHOLD = 32


def _brief(summary: dict) -> dict:
    """mAP, NN and the per-group mAP of an `evaluate_retrieval` summary."""
    out = {"mAP": float(summary["mAP"]), "NN": float(summary["NN"])}
    for g, r in summary.get("groups", {}).items():
        out[f"mAP_{g}"] = float(r["mAP"])
    return out


def teacher_report(features, labels, *, num_classes: int, thresholds=(20, 5)) -> dict:
    """The teacher's shape space, leave-one-out over the gallery.

    Args:
      features: [N, F] gallery descriptors (the student's targets).
      labels: [N] classes.
      num_classes: C.
      thresholds: (head_min, tail_max) of the long-tail groups.

    Returns:
      {"knn_acc", "knn_acc_<group>", "mAP", "NN", "mAP_<group>", "chance_mAP"}.
    """
    labels = np.asarray(labels)
    rep = evaluate_retrieval(
        features,
        labels,
        features,
        labels,
        exclude_self=True,
        group_thresholds=thresholds,
        num_classes=num_classes,
    )
    out = _brief(rep)
    hit = knn_predict(features, labels, 1) == labels
    groups = class_groups(np.bincount(labels, minlength=num_classes), *thresholds)
    out["knn_acc"] = float(hit.mean())
    for g in np.unique(groups[labels]):
        out[f"knn_acc_{g}"] = float(hit[groups[labels] == g].mean())
    out["chance_mAP"] = chance_map(labels, labels, exclude_self=True)
    return out


def chance_map(query_labels, gallery_labels, *, exclude_self: bool = False) -> float:
    """Expected mAP of a random ranking, approximately the mean relevant share per query.

    Args:
      query_labels: [Q] classes.
      gallery_labels: [N] classes.
      exclude_self: leave-one-out (the query is one of its class's gallery items).

    Returns:
      mean over queries of C_q / N (C_q: relevant items of the query's class).
    """
    gl = np.asarray(gallery_labels)
    counts = np.bincount(gl, minlength=int(max(np.max(query_labels), gl.max())) + 1)
    c = counts[np.asarray(query_labels)] - (1 if exclude_self else 0)
    n = len(gl) - (1 if exclude_self else 0)
    c = c[c > 0]
    return float(np.mean(c / n)) if len(c) else 0.0


def oracle_queries(query_labels, centres, accuracy: float, seed: int = 0) -> np.ndarray:
    """Query embeddings of an oracle right for a share `accuracy` of the queries.

    A right query is its class centre; a wrong one is the centre of another class, drawn
    uniformly among the classes that have a centre (shapes).

    Args:
      query_labels: [Q] classes.
      centres: [C, F] teacher class centres (zero rows: classes without shapes).
      accuracy: share of queries mapped to their own centre, in [0, 1].
      seed: which queries are wrong and where they go.

    Returns:
      [Q, F] query embeddings.
    """
    ql = np.asarray(query_labels)
    centres = np.asarray(centres)
    present = np.flatnonzero(np.abs(centres).sum(1) > 0)
    rng = np.random.default_rng(seed)
    right = rng.random(len(ql)) < accuracy
    out = ql.copy()
    for i in np.flatnonzero(~right):
        others = present[present != ql[i]]
        out[i] = others[rng.integers(len(others))]
    return centres[out]


def oracle_report(
    features,
    labels,
    centres,
    query_labels,
    *,
    num_classes: int,
    thresholds=(20, 5),
    accuracies=(1.0, 0.75, 0.5, 0.35, 0.25, 0.1),
    seed: int = 0,
) -> dict:
    """The ceiling the teacher allows, and mAP against the student's sketch accuracy.

    Args:
      features: [N, F] gallery descriptors.
      labels: [N] gallery classes.
      centres: [C, F] teacher class centres.
      query_labels: [Q] classes of the query sketches.
      num_classes: C.
      thresholds: (head_min, tail_max).
      accuracies: shares of right queries to evaluate (1.0 is the oracle itself).
      seed: the wrong queries' draw.

    Returns:
      {"acc=<p>": {"mAP", "NN", "mAP_<group>"}, "chance_mAP"}.
    """
    out = {}
    for p in accuracies:
        q = oracle_queries(query_labels, centres, p, seed)
        rep = evaluate_retrieval(
            q,
            query_labels,
            features,
            labels,
            group_thresholds=thresholds,
            num_classes=num_classes,
        )
        out[f"acc={p:g}"] = _brief(rep)
    out["chance_mAP"] = chance_map(query_labels, labels)
    return out


def nearest_centre_accuracy(emb, labels, centres) -> float:
    """Share of embeddings whose most similar (cosine) teacher centre is their own class's."""
    e = np.asarray(emb, np.float64)
    c = np.asarray(centres, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    sim = e @ c.T
    sim[:, np.abs(c).sum(1) == 0] = -np.inf  # classes without shapes are no answer
    return float(np.mean(sim.argmax(1) == np.asarray(labels)))


def sketch_report(query_emb, query_labels, gallery_emb, gallery_labels, centres) -> dict:
    """The student's sketch-only class structure.

    Args:
      query_emb: [Q, E] student embeddings of the query sketches.
      query_labels: [Q].
      gallery_emb: [M, E] student embeddings of training sketches.
      gallery_labels: [M].
      centres: [C, E] teacher class centres.

    Returns:
      {"nn_acc_to_train": 1-NN class accuracy of queries against the training sketches,
       "loo_knn_acc": leave-one-out 1-NN accuracy within the queries,
       "centre_acc": nearest-teacher-centre accuracy of the queries,
       "chance_acc": 1 / number of query classes}.
    """
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    nn = gl[rank_gallery(query_emb, gallery_emb)[:, 0]]
    return {
        "nn_acc_to_train": float(np.mean(nn == ql)),
        "loo_knn_acc": float(np.mean(knn_predict(query_emb, ql, 1) == ql)),
        "centre_acc": nearest_centre_accuracy(query_emb, ql, centres),
        "chance_acc": 1.0 / len(np.unique(ql)),
    }


def batch_report(labels, *, global_batch: int, pk_k: int = 4, seed: int = 0, num_batches=200):
    """Share of anchors with an in-batch positive under every sampler.

    Args:
      labels: [N] classes of the training sketches.
      global_batch: G.
      pk_k: K of the P x K sampler.
      seed: the samplers' seed.
      num_batches: batches inspected per sampler.

    Returns:
      {sampler: fraction}, plus "sketches_per_class" (mean) and "num_classes".
    """
    labels = np.asarray(labels)
    out = {}
    for s in SAMPLERS:
        it = index_batches(labels, sampler=s, global_batch=global_batch, seed=seed, pk_k=pk_k)
        out[s] = positive_fraction(labels, it, num_batches)
    counts = np.bincount(labels)
    out["sketches_per_class"] = float(counts[counts > 0].mean())
    out["num_classes"] = int((counts > 0).sum())
    return out


def ink_fraction(images) -> float:
    """Mean share of ink pixels (value > INK_THRESHOLD on a 0-255 scale, ink bright).

    Args:
      images: [..., H, W] or [..., H, W, 1] uint8.

    Returns:
      The fraction in [0, 1].
    """
    return float(np.mean(np.asarray(images) > INK_THRESHOLD))


__all__ = [
    "batch_report",
    "chance_map",
    "ink_fraction",
    "nearest_centre_accuracy",
    "oracle_queries",
    "oracle_report",
    "sketch_report",
    "teacher_report",
]
