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
