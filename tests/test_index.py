import jax
import numpy as np
import pytest

from sb3dr_jax.evals.index import IndexMismatchError, RetrievalIndex, sharded_topk


def _brute(q, g, k):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = q @ g.T
    order = np.lexsort((np.arange(g.shape[0])[None].repeat(len(q), 0), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), order


def test_sharded_topk_equals_brute_force_on_8_devices():
    assert jax.local_device_count() == 8
    rng = np.random.default_rng(0)
    q, g = (
        rng.normal(size=(5, 16)).astype(np.float32),
        rng.normal(size=(103, 16)).astype(np.float32),
    )
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    s, i = sharded_topk(q / np.linalg.norm(q, axis=1, keepdims=True), g, 10)
    bs, bi = _brute(q, g, 10)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, rtol=1e-5)


def test_index_search_save_load(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8))
    idx = RetrievalIndex(
        emb,
        [f"m{i}" for i in range(50)],
        rng.integers(0, 3, 50),
        ["a", "b", "c"],
        "teacherA",
        query_batch=4,
    )
    q = rng.normal(size=(9, 8))
    s, i = idx.search(q, k=7)
    bs, bi = _brute(q, emb, 7)
    np.testing.assert_array_equal(i, bi)
    sharded = RetrievalIndex(
        emb, idx.model_ids, idx.labels, idx.class_names, "teacherA", num_shards=8
    )
    np.testing.assert_array_equal(sharded.search(q, 7)[1], bi)
    idx.save(tmp_path)
    back = RetrievalIndex.load(tmp_path, expected_encoder_id="teacherA")
    np.testing.assert_allclose(back.embeddings, idx.embeddings, rtol=1e-6)
    assert back.model_ids == idx.model_ids and back.class_names == ["a", "b", "c"]
    assert idx.search(q[0], k=100)[1].shape == (1, 50)  # k clipped to the gallery


def test_index_bad_input(tmp_path):
    rng = np.random.default_rng(2)
    idx = RetrievalIndex(rng.normal(size=(5, 4)), list("abcde"), np.zeros(5), ["x"], "teacherA")
    idx.save(tmp_path)
    with pytest.raises(IndexMismatchError, match="teacherB"):
        RetrievalIndex.load(tmp_path, expected_encoder_id="teacherB")
    with pytest.raises(ValueError, match="empty gallery"):
        RetrievalIndex(np.zeros((0, 4)), [], np.zeros(0), ["x"], "t")
    with pytest.raises(ValueError, match=r"\[Q, 4\]"):
        idx.search(np.zeros((2, 3)))
    with pytest.raises(IndexMismatchError):
        RetrievalIndex(rng.normal(size=(5, 4)), list("abc"), np.zeros(5), ["x"], "t")
    (tmp_path / "index.json").write_text(
        (tmp_path / "index.json").read_text().replace('"format_version": 1', '"format_version": 9')
    )
    with pytest.raises(IndexMismatchError, match="format version"):
        RetrievalIndex.load(tmp_path)


@pytest.mark.parametrize("num_shards", [1, 8])
def test_identical_gallery_vectors_tie_in_gallery_order(num_shards):
    """Copies of one vector come back in gallery order, at equal scores (issue 19.4)."""
    rng = np.random.default_rng(9)
    v = rng.normal(size=8)
    g = rng.normal(size=(40, 8))
    copies = [3, 7, 8, 20, 31, 39]
    g[copies] = v
    idx = RetrievalIndex(g, [f"m{i}" for i in range(40)], np.zeros(40), ["a"], "t")
    idx.num_shards = num_shards
    q = np.concatenate([v[None] + 0.01 * rng.normal(size=(30, 8)), rng.normal(size=(30, 8))])
    for k in (2, 6, 40):
        s, i = idx.search(q, k)
        assert i.shape == (60, k) and len(set(i[0])) == k
        for row_s, row_i in zip(s, i):
            pos = [j for j in row_i if j in copies]
            assert pos == sorted(pos)
            assert len({float(x) for x, j in zip(row_s, row_i) if j in copies}) <= 1
        assert list(i[0, : min(k, 6)]) == copies[:k]  # near v: the copies first, in order
    _, bi = _brute(q, g, 40)
    s, i = idx.search(q, 40)
    assert (i == bi).mean() > 0.9  # otherwise the plain ranking


def test_non_finite_gallery_or_query_is_an_error_naming_it():
    from sb3dr_jax.evals.metrics import NonFiniteEmbeddingError

    g = np.random.default_rng(0).normal(size=(5, 4))
    g[2, 0] = np.inf
    with pytest.raises(NonFiniteEmbeddingError, match="gallery item 2 \\(id 'c'\\)"):
        RetrievalIndex(g, list("abcde"), np.zeros(5), ["x"], "t")
    idx = RetrievalIndex(np.ones((5, 4)), list("abcde"), np.zeros(5), ["x"], "t")
    with pytest.raises(NonFiniteEmbeddingError, match="query 0"):
        idx.search(np.full((1, 4), np.nan))
