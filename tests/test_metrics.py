"""SHREC metrics on hand-computed ranked lists."""

import math

import numpy as np
import pytest

from sb3dr_jax.evals import class_groups, evaluate_retrieval, knn_accuracy, metrics_from_ranking
from sb3dr_jax.evals.metrics import NonFiniteEmbeddingError, rank_gallery


def _dcg(rel, c):
    g = sum(r / (1 if i == 0 else math.log2(i + 1)) for i, r in enumerate(rel))
    ideal = 1 + sum(1 / math.log2(j) for j in range(2, c + 1))
    return g / ideal


def test_single_query_by_hand():
    rel = [0, 1, 1, 0, 0, 1]  # C = 3, relevant at ranks 2, 3, 6
    m = metrics_from_ranking(np.array([rel], bool), np.array([3]))
    assert m["NN"] == 0
    assert m["FT"] == pytest.approx(2 / 3)
    assert m["ST"] == pytest.approx(1.0)  # 2C = 6 <= N
    p, r = 3 / 32, 1.0
    assert m["E"] == pytest.approx(2 * p * r / (p + r))
    assert m["DCG"] == pytest.approx(_dcg(rel, 3))
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 6) / 3)  # last relevant at the last rank


def test_class_of_size_one_and_two():
    m1 = metrics_from_ranking(np.array([[0, 0, 1, 0]], bool), np.array([1]))
    assert (m1["NN"], m1["FT"], m1["ST"]) == (0, 0, 0)
    assert m1["mAP"] == pytest.approx(1 / 3)
    assert m1["DCG"] == pytest.approx(1 / math.log2(3))
    assert all(math.isnan(v) for v in m1["pr_curve"])  # C < 2: skipped at every recall point
    m2 = metrics_from_ranking(np.array([[1, 0, 0, 1]], bool), np.array([2]))
    assert m2["FT"] == 0.5 and m2["ST"] == 1.0  # 2C = 4 = N
    assert m2["mAP"] == pytest.approx((1 + 2 / 4) / 2)
    # C = 2: only recall points j >= 10 are used; r*C = 1 at j = 10 -> P_1 = 1, at j = 20 -> P_2
    curve = m2["pr_curve"]
    assert all(math.isnan(v) for v in curve[:9])
    assert curve[9] == pytest.approx(1.0) and curve[19] == pytest.approx(0.5)
    assert curve[14] == pytest.approx(1.0 + 0.5 * (0.5 - 1.0))  # r*C = 1.5: linear interpolation


def test_class_larger_than_32_and_st_clipping():
    c, n = 40, 60
    rel = np.zeros((1, n), bool)
    rel[0, :c] = True
    m = metrics_from_ranking(rel, np.array([c]))
    assert m["FT"] == 1.0 and m["ST"] == 1.0  # 2C = 80 clipped to N = 60
    p, r = 32 / 32, 32 / 40
    assert m["E"] == pytest.approx(2 * p * r / (p + r))
    assert m["mAP"] == pytest.approx(1.0) and m["DCG"] == pytest.approx(1.0)


def test_matlab_and_pr_mean_variants():
    # query A: C = 1, found first; query B: C = 3 at ranks 1, 2, 4.
    rel = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 1, 0]], bool)
    m = metrics_from_ranking(rel, np.array([1, 3]))
    ap_b = (1 + 1 + 3 / 4) / 3
    assert m["mAP"] == pytest.approx((1.0 + ap_b) / 2)
    # MATLAB quirk: every row averaged over max C = 3 columns, zeros included.
    assert m["mAP_shrec_matlab"] == pytest.approx((1 / 3 + (1 + 1 + 3 / 4) / 3) / 2)
    # pr_mean: A (C = 1) is skipped everywhere; B is used where C >= 20 / j, i.e. j >= 7.
    prec = np.array([1, 1, 3 / 4])
    curve = []
    for j in range(7, 21):
        x = j / 20 * 3
        x1 = min(max(math.floor(x), 1), 3)
        x2 = min(x1 + 1, 3)
        curve.append(
            prec[x1 - 1] if x1 == x2 else prec[x1 - 1] + (x - x1) * (prec[x2 - 1] - prec[x1 - 1])
        )
    assert m["mAP_pr_mean"] == pytest.approx(np.mean(curve))


def test_ties_keep_gallery_order():
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r1 = evaluate_retrieval(q, [1], g, [0, 1, 0])  # the relevant tie comes second
    r2 = evaluate_retrieval(q, [1], g[[1, 0, 2]], [1, 0, 0])  # ... or first
    assert r1["NN"] == 0 and r2["NN"] == 1


def test_ties_of_identical_high_dimensional_vectors_keep_gallery_order():
    """Three copies of one 8-d vector: a BLAS matmul gave them distances one ulp apart, ranked
    [2 0 1] for some queries (issue 19.4); equal vectors must always tie."""
    v = np.random.default_rng(9).normal(size=8)
    g = np.tile(v, (3, 1))
    queries = np.random.default_rng(0).normal(size=(300, 8))
    for q in queries:  # one query at a time (gemv), as in the issue (seed 22's query here)
        np.testing.assert_array_equal(rank_gallery(q[None], g), [[0, 1, 2]])
    np.testing.assert_array_equal(rank_gallery(queries, g), np.tile([0, 1, 2], (300, 1)))
    q22 = np.random.default_rng(22).normal(size=(1, 8))
    assert evaluate_retrieval(q22, [1], g, [0, 0, 1])["NN"] == 0.0


@pytest.mark.parametrize("where", ["query", "gallery"])
def test_non_finite_embeddings_are_an_error_naming_the_item(where):
    """NaN embeddings gave silently wrong metrics (issue 19.6)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 4))
    bad = emb.copy()
    bad[3, 1] = np.nan
    q, g = (bad, emb) if where == "query" else (emb, bad)
    ids = [f"m{i}" for i in range(6)]
    kw = {f"{where}_ids": ids}
    name = "query" if where == "query" else "gallery item"
    with pytest.raises(NonFiniteEmbeddingError, match=f"{name} 3 \\(id 'm3'\\)"):
        evaluate_retrieval(q, np.arange(6) % 2, g, np.arange(6) % 2, **kw)
    with pytest.raises(NonFiniteEmbeddingError, match="query 3"):  # leave-one-out too
        evaluate_retrieval(bad, np.arange(6) % 2, bad, np.arange(6) % 2, exclude_self=True)


def test_exclude_self_and_groups():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    labels = np.repeat([0, 1, 2], [25, 10, 1])
    emb = centres[labels] + 0.01 * rng.normal(size=(36, 8))
    r = evaluate_retrieval(
        emb,
        labels,
        emb,
        labels,
        exclude_self=True,
        group_thresholds=(20, 5),
        class_names=["a", "b", "c"],
    )
    assert r["num_skipped"] == 1  # the class of one has no other member
    assert r["mAP"] == pytest.approx(1.0) and set(r["groups"]) == {"head", "medium"}
    assert r["per_class"]["a"]["num_queries"] == 25
    assert list(class_groups([25, 10, 1], 20, 5)) == ["head", "medium", "tail"]
    assert knn_accuracy(emb[:35], labels[:35]) == 1.0
    with pytest.raises(ValueError, match="empty gallery"):
        evaluate_retrieval(emb, labels, emb[:0], labels[:0])
