"""The SHREC'13/'14 sketch-track retrieval protocol (METHODS.md section 5), vectorised.

Each query ranks the whole gallery by cosine distance d = 1 - cos (ascending; ties keep gallery
order, a stable sort, so results are reproducible). G_i = 1 when rank i is relevant; C = number
of relevant gallery items (the query's class size in the gallery; minus one with
`exclude_self`, where the query itself is removed from the ranking).

Three "mAP"s circulate in the literature and are all reported, labelled:
- `mAP` (`ap`): per-query AP = mean over k = 1..C of k / rank(k-th relevant), averaged.
- `mAP_shrec_matlab`: the official MATLAB script stores k / rank_k in a matrix with as many
  columns as the *largest* C over all queries and averages whole rows, zeros included, so a
  query's value is sum_k k / rank_k / max C; small classes are penalised.
- `mAP_pr_mean`: the mean of the 20-point interpolated precision-recall curve.
"""

from __future__ import annotations

import numpy as np

from sb3dr_jax.evals.groups import GROUPS, class_groups

NUM_PR_POINTS = 20
E_DEPTH = 32


class NonFiniteEmbeddingError(FloatingPointError):
    """An embedding holds NaN or Inf: every distance to it is meaningless."""


def check_finite(emb: np.ndarray, what: str, ids=None) -> None:
    """Raises `NonFiniteEmbeddingError` naming the first non-finite row of `emb` [N, E].

    Args:
      emb: embeddings.
      what: what the rows are ("query", "gallery item"), for the message.
      ids: optional item ids, named in the message.
    """
    emb = np.asarray(emb)
    if np.issubdtype(emb.dtype, np.floating) and not np.isfinite(emb).all():
        bad = np.flatnonzero(~np.isfinite(emb).all(axis=tuple(range(1, emb.ndim))))
        name = f"{what} {bad[0]}" + (f" (id {ids[bad[0]]!r})" if ids is not None else "")
        raise NonFiniteEmbeddingError(
            f"{name}: non-finite embedding (NaN/Inf); {len(bad)} of {len(emb)} {what} "
            "embeddings are non-finite, so no ranking is meaningful (a diverged model?)"
        )


def _row_hashes(x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """A uint64 hash of each row's bytes (a random linear form, wrapping): [N]."""
    b = x.reshape(len(x), -1).view(np.uint8)
    lanes = next(
        b.view(t) for t in (np.uint64, np.uint32, np.uint8) if b.shape[1] % t().itemsize == 0
    )
    w = np.random.default_rng(0).integers(1, 2**63, lanes.shape[1], dtype=np.uint64) | 1
    h = np.empty(len(x), np.uint64)
    for s in range(0, len(x), chunk):
        h[s : s + chunk] = (lanes[s : s + chunk].astype(np.uint64) * w).sum(1, dtype=np.uint64)
    return h


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bit-distinct rows of `x` [N, E] and, for each row, the index of its distinct row.

    Distances are computed once per distinct gallery vector and copied to its duplicates, so
    bit-identical vectors get bit-identical distances and the stable sort keeps them in
    gallery order. A BLAS matmul does not guarantee that: its result for a column depends on
    where the kernel's blocking puts it (one ulp apart for three copies of one vector).

    Returns:
      (rows [U, E] in order of first occurrence, inverse [N] int with x == rows[inverse]).
    """
    x = np.ascontiguousarray(x)
    if len(np.unique(_row_hashes(x))) == len(x):  # distinct hashes: distinct rows (usual case)
        return x, np.arange(len(x))
    keys = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # distinct rows in order of first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return x[first[order]], rank[inverse.ravel()]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rank_gallery(query_emb, gallery_emb, *, exclude_self: bool = False) -> np.ndarray:
    """Gallery indices of every query, nearest first (cosine), stable on ties.

    Equal gallery vectors always tie (see `distinct_rows`), whatever the BLAS kernel.

    Args:
      query_emb: [Q, E].
      gallery_emb: [N, E].
      exclude_self: query i is gallery item i and is dropped from its own ranking.

    Returns:
      [Q, N] (or [Q, N - 1] with `exclude_self`) int indices.

    Raises:
      NonFiniteEmbeddingError: a NaN/Inf embedding (named).
    """
    check_finite(query_emb, "query")
    check_finite(gallery_emb, "gallery item")
    rows, inverse = distinct_rows(np.asarray(gallery_emb))
    d = (1.0 - _unit(query_emb) @ _unit(rows).T)[:, inverse]  # [Q, N]
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    return order[:, :-1] if exclude_self else order


def precision_at_relevant(relevance: np.ndarray, class_sizes: np.ndarray) -> np.ndarray:
    """P_k = k / rank(k-th relevant) for k = 1..C, zero-padded: [Q, max C]."""
    q, n = relevance.shape
    cmax = int(class_sizes.max()) if len(class_sizes) else 0
    out = np.zeros((q, max(cmax, 1)))
    for i in range(q):  # C differs per query; the loop is over queries only
        ranks = np.flatnonzero(relevance[i])[: class_sizes[i]] + 1
        out[i, : len(ranks)] = np.arange(1, len(ranks) + 1) / ranks
    return out


def pr_curve(prec: np.ndarray, class_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """20-point interpolated precision at recall j/20 per query, with the SHREC skip rule.

    Args:
      prec: [Q, max C] from `precision_at_relevant`.
      class_sizes: [Q] C per query.

    Returns:
      (precision [Q, 20], valid [Q, 20]) where a query is skipped (valid False) at recall
      point j when C < 2 or C < 20 / j.
    """
    c = class_sizes.astype(np.float64)[:, None]  # [Q, 1]
    r = np.arange(1, NUM_PR_POINTS + 1)[None] / NUM_PR_POINTS  # [1, 20]
    x = r * c
    x1 = np.clip(np.floor(x), 1, np.maximum(c, 1)).astype(int)
    x2 = np.clip(x1 + 1, 1, np.maximum(c, 1)).astype(int)
    rows = np.arange(len(prec))[:, None]
    p1, p2 = prec[rows, x1 - 1], prec[rows, x2 - 1]
    p = p1 + (x - x1) * (p2 - p1)
    p = np.where(x2 == x1, p1, p)
    valid = (c >= 2) & (c >= NUM_PR_POINTS / np.arange(1, NUM_PR_POINTS + 1)[None])
    return np.where(valid, p, 0.0), valid


def per_query_metrics(relevance: np.ndarray, class_sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-query SHREC quantity from ranked relevance.

    Args:
      relevance: [Q, N] bool, relevance of the gallery items in ranked order.
      class_sizes: [Q] int C per query (>= 1).

    Returns:
      Dict of [Q] arrays: NN, FT, ST, E, DCG, AP, AP_shrec_matlab, P@10, and `pr` [Q, 20] with
      `pr_valid` [Q, 20].
    """
    g = relevance.astype(np.float64)
    q, n = g.shape
    c = class_sizes.astype(np.int64)
    cum = np.cumsum(g, axis=1)
    at = lambda k: cum[np.arange(q), np.clip(k, 1, n) - 1]  # Gsum_k with k clipped to N
    nn = g[:, 0]
    ft = at(c) / c
    st = at(2 * c) / c
    g32 = at(np.full(q, E_DEPTH))
    p32, r32 = g32 / E_DEPTH, g32 / c
    e = np.where(p32 + r32 > 0, 2 * p32 * r32 / np.maximum(p32 + r32, 1e-12), 0.0)
    disc = np.ones(n)
    disc[1:] = 1.0 / np.log2(np.arange(2, n + 1))
    dcg = (g * disc[None]).sum(1)
    ideal = np.cumsum(disc)[np.clip(c, 1, n) - 1]
    prec = precision_at_relevant(relevance, c)
    ap = prec.sum(1) / c
    ap_matlab = prec.sum(1) / prec.shape[1]
    pr, valid = pr_curve(prec, c)
    return {
        "NN": nn,
        "FT": ft,
        "ST": st,
        "E": e,
        "DCG": dcg / ideal,
        "AP": ap,
        "AP_shrec_matlab": ap_matlab,
        "P@10": at(np.full(q, 10)) / 10.0,
        "pr": pr,
        "pr_valid": valid,
    }


def summarise(per_query: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict:
    """Means over queries (optionally a subset `rows`) of the per-query metrics.

    Returns:
      Dict with NN, FT, ST, E, DCG, mAP, mAP_shrec_matlab, mAP_pr_mean, P@10, pr_curve (20
      floats; NaN at a recall point where every query was skipped), num_queries.
    """
    sel = (lambda a: a) if rows is None else (lambda a: a[rows])
    nq = len(sel(per_query["NN"]))
    out = {"num_queries": int(nq)}
    if nq == 0:
        return out
    for k, name in (
        ("NN", "NN"),
        ("FT", "FT"),
        ("ST", "ST"),
        ("E", "E"),
        ("DCG", "DCG"),
        ("AP", "mAP"),
        ("AP_shrec_matlab", "mAP_shrec_matlab"),
        ("P@10", "P@10"),
    ):
        out[name] = float(np.mean(sel(per_query[k])))
    pr, valid = sel(per_query["pr"]), sel(per_query["pr_valid"])
    counts = valid.sum(0)
    curve = np.where(counts > 0, pr.sum(0) / np.maximum(counts, 1), np.nan)
    out["pr_curve"] = [float(v) for v in curve]
    out["mAP_pr_mean"] = float(np.nanmean(curve)) if np.isfinite(curve).any() else float("nan")
    return out


def metrics_from_ranking(ranked_relevance: np.ndarray, class_sizes: np.ndarray) -> dict:
    """The SHREC summary from ranked relevance (the core; testable on hand-built lists).

    Args:
      ranked_relevance: [Q, N] bool.
      class_sizes: [Q] C per query.

    Returns:
      See `summarise`.
    """
    return summarise(per_query_metrics(np.asarray(ranked_relevance, bool), np.asarray(class_sizes)))


def evaluate_retrieval(
    query_emb,
    query_labels,
    gallery_emb,
    gallery_labels,
    *,
    exclude_self: bool = False,
    class_names: list[str] | None = None,
    group_thresholds: tuple[int, int] = (20, 5),
    num_classes: int | None = None,
    query_ids: list[str] | None = None,
    gallery_ids: list[str] | None = None,
) -> dict:
    """Runs the full protocol: ranking, SHREC metrics, per-class and per-group breakdowns.

    Args:
      query_emb: [Q, E] query embeddings (student sketches, or shapes for shape-to-shape).
      query_labels: [Q] int classes.
      gallery_emb: [N, E] gallery embeddings.
      gallery_labels: [N] int classes.
      exclude_self: leave-one-out (queries are the gallery; C = class size - 1; queries with
        C = 0 are skipped and counted in `num_skipped`).
      class_names: names for the per-class table (default: the indices).
      group_thresholds: (head_min, tail_max) on the number of gallery items per class.
      num_classes: number of classes (default: inferred from the labels).
      query_ids: ids of the queries, named in errors.
      gallery_ids: ids of the gallery items, named in errors.

    Returns:
      The summary (see `summarise`) plus `per_class`, `groups` ({head, medium, tail}, a group
      without queries is absent), `num_gallery`, `num_skipped`.

    Raises:
      NonFiniteEmbeddingError: a query or gallery embedding holds NaN/Inf (the message names
        the item).
    """
    check_finite(query_emb, "query", query_ids)
    check_finite(gallery_emb, "gallery item", gallery_ids)
    ql, gl = np.asarray(query_labels, np.int64), np.asarray(gallery_labels, np.int64)
    if len(gl) == 0:
        raise ValueError("evaluate_retrieval: empty gallery")
    nc = int(num_classes or max(ql.max(initial=0), gl.max(initial=0)) + 1)
    counts = np.bincount(gl, minlength=nc)
    order = rank_gallery(query_emb, gallery_emb, exclude_self=exclude_self)
    if exclude_self:
        order = order  # [Q, N-1], self removed
    relevance = gl[order] == ql[:, None]
    c = counts[ql] - (1 if exclude_self else 0)
    keep = c > 0
    pq = per_query_metrics(relevance[keep], c[keep])
    labels = ql[keep]
    out = summarise(pq)
    out.update(num_gallery=int(len(gl)), num_skipped=int((~keep).sum()))
    names = class_names or [str(i) for i in range(nc)]
    out["per_class"] = {names[y]: summarise(pq, labels == y) for y in np.unique(labels)}
    groups = class_groups(counts, *group_thresholds)
    out["groups"] = {}
    for g in GROUPS:
        rows = groups[labels] == g
        if rows.any():
            out["groups"][g] = summarise(pq, rows)
    return out


def knn_accuracy(emb, labels, k: int = 1) -> float:
    """Leave-one-out k-NN classification accuracy with cosine similarity.

    Majority vote among the k nearest; ties go to the class of the nearest tied neighbour.

    Args:
      emb: [N, E].
      labels: [N].
      k: neighbours.

    Returns:
      The accuracy in [0, 1].
    """
    return float(np.mean(knn_predict(emb, labels, k) == np.asarray(labels)))


def knn_predict(emb, labels, k: int = 1) -> np.ndarray:
    """Leave-one-out k-NN predictions (see `knn_accuracy`)."""
    labels = np.asarray(labels)
    order = rank_gallery(emb, emb, exclude_self=True)[:, :k]  # [N, k]
    nb = labels[order]
    preds = np.empty(len(labels), labels.dtype)
    for i, row in enumerate(nb):
        vals, cnt = np.unique(row, return_counts=True)
        best = vals[cnt == cnt.max()]
        preds[i] = next(v for v in row if v in best)  # nearest among the tied classes
    return preds
