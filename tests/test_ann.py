"""The FAISS large-gallery path of RetrievalIndex (sb3dr_jax.evals.ann): recall against exact
search, the exact path unchanged, save/load with index.faiss, identity checks, config errors."""

import json
import sys

import ml_collections
import numpy as np
import pytest

from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.evals import ann
from sb3dr_jax.evals.index import ANN_FILE, IndexMismatchError, RetrievalIndex

N, D = 3000, 32
SMALL = dict(nlist=16, m=8, nbits=6, nprobe=8, rerank=60, hnsw_m=16, ef_search=64)


def _clustered(n: int, seed: int) -> np.ndarray:
    """A small mixture: 30 Gaussians with Zipf sizes, each spread along 4 directions."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 31)
    c = rng.choice(30, n, p=p / p.sum())
    centers, axes = rng.normal(size=(30, D)), 0.5 * rng.normal(size=(30, 4, D))
    x = centers[c] + np.einsum("nr,nrd->nd", rng.normal(size=(n, 4)), axes[c])
    return (x + 0.1 * rng.normal(size=(n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def gallery():
    emb = _clustered(N, 0)
    ids, labels = [f"s{i}" for i in range(N)], np.arange(N) % 3
    exact = RetrievalIndex(emb, ids, labels, ["a", "b", "c"], "teacherA")
    return emb, ids, labels, exact, _clustered(50, 1)


@pytest.fixture(scope="module")
def ivfpq(gallery):
    emb, ids, labels, _, _ = gallery
    cfg = ann.IndexConfig(index="ivfpq", **SMALL)
    return RetrievalIndex(emb, ids, labels, ["a", "b", "c"], "teacherA", index_config=cfg)


def _recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_ann_recall_against_exact_and_exact_rescoring(gallery, ivfpq, kind):
    emb, ids, labels, exact, q = gallery
    index = ivfpq
    if kind == "hnsw":
        cfg = ann.IndexConfig(index="hnsw", **SMALL)
        index = RetrievalIndex(emb, ids, labels, ["a", "b", "c"], "t", index_config=cfg)
    assert index.kind == kind and index.ann_index.ntotal == N
    assert index.embeddings.dtype == np.float16  # the default store
    s, i = index.search(q, 10)
    es, ei = exact.search(q, 10)
    assert _recall(i, ei) >= 0.9
    # Re-ranked scores are the exact cosines of the returned items (to float16 precision),
    # best first; the items the ANN path shares with the exact path score as there.
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = exact.embeddings
    np.testing.assert_allclose(s, np.einsum("qe,qke->qk", qn, g[i]), atol=2e-3)
    assert (np.diff(s, axis=1) <= 0).all()
    # With as many candidates as items and every list probed, IVF-PQ + re-ranking is exact.
    if kind == "ivfpq":
        index.index_config = ann.IndexConfig(index="ivfpq", **{**SMALL, "nprobe": 16, "rerank": N})
        assert _recall(index.search(q, 10)[1], ei) == 1.0
        index.index_config = ann.IndexConfig(index="ivfpq", **SMALL)


def test_exact_path_results_identical(gallery, tmp_path):
    """index=exact, and auto below the threshold, give today's results bit for bit (ties too)."""
    emb, ids, labels, exact, q = gallery
    g = emb.copy()
    g[[5, 9, 700]] = g[5]  # copies: ties come back in gallery order
    plain = RetrievalIndex(g, ids, labels, ["a", "b", "c"], "teacherA")
    for cfg in (ann.IndexConfig(index="exact"), ann.IndexConfig(index="auto")):
        idx = RetrievalIndex(g, ids, labels, ["a", "b", "c"], "teacherA", index_config=cfg)
        assert idx.kind == "exact" and idx.ann_index is None
        for k in (1, 10, 50):
            for a, b in zip(idx.search(q, k), plain.search(q, k)):
                np.testing.assert_array_equal(a, b)
        idx.save(tmp_path / "cfg")
    plain.save(tmp_path / "plain")
    assert not (tmp_path / "cfg" / ANN_FILE).exists()
    for name in ("index.json", "index.npz"):
        assert (tmp_path / "cfg" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def test_ann_save_load_round_trip_and_identity(gallery, ivfpq, tmp_path):
    emb, ids, labels, exact, q = gallery
    ivfpq.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    assert (tmp_path / ANN_FILE).exists() and meta["ann"]["kind"] == "ivfpq"
    back = RetrievalIndex.load(tmp_path, expected_encoder_id="teacherA")
    assert back.kind == "ivfpq" and back.index_config == ivfpq.index_config
    assert back.embeddings.dtype == np.float16 and back.model_ids == ids
    for a, b in zip(back.search(q, 10), ivfpq.search(q, 10)):
        np.testing.assert_array_equal(a, b)
    # Another teacher's query encoder is refused, whatever the index kind.
    with pytest.raises(IndexMismatchError, match="teacherB"):
        RetrievalIndex.load(tmp_path, expected_encoder_id="teacherB")
    # An index.faiss that is not the one index.json was saved with is refused.
    other = RetrievalIndex(
        emb[::-1].copy(), ids, labels, ["a", "b", "c"], "teacherA", index_config=ivfpq.index_config
    )
    other.save(tmp_path / "other")
    (tmp_path / ANN_FILE).write_bytes((tmp_path / "other" / ANN_FILE).read_bytes())
    with pytest.raises(IndexMismatchError, match="SHA-256"):
        RetrievalIndex.load(tmp_path, expected_encoder_id="teacherA")
    (tmp_path / ANN_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=ANN_FILE):
        RetrievalIndex.load(tmp_path)
    # A FAISS index of another size is refused at construction.
    with pytest.raises(IndexMismatchError, match="holds"):
        RetrievalIndex(
            emb[:100], ids[:100], labels[:100], ["a", "b", "c"], "t",
            index_config=ivfpq.index_config, ann_index=ivfpq.ann_index,
        )  # fmt: skip
    # Saving an exact index over an ANN export removes the stale index.faiss.
    exact.save(tmp_path / "other")
    assert not (tmp_path / "other" / ANN_FILE).exists()


def test_auto_threshold_picks_exact_then_ann(gallery):
    emb, ids, labels, _, _ = gallery
    cfg = ann.IndexConfig(auto_threshold=1000, **SMALL)
    assert cfg.resolve(999) == "exact" and cfg.resolve(1000) == "ivfpq"
    assert ann.IndexConfig().resolve(999_999) == "exact"  # default threshold 10^6
    assert ann.IndexConfig(auto_kind="hnsw").resolve(10**6) == "hnsw"
    small = RetrievalIndex(
        emb[:999], ids[:999], labels[:999], ["a", "b", "c"], "t", index_config=cfg
    )
    assert small.kind == "exact" and small.ann_index is None


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"export\.index: unknown 'ivf'.*'exact'"):
        ann.IndexConfig(index="ivf")
    with pytest.raises(ConfigError, match=r"export\.ann\.auto_kind"):
        ann.IndexConfig(auto_kind="exact")
    for field, value in (("nprobe", 0), ("rerank", 0), ("m", 0), ("ef_search", 0)):
        with pytest.raises(ConfigError, match=rf"export\.ann\.{field}"):
            ann.IndexConfig(**{field: value})
    with pytest.raises(ConfigError, match=r"export\.ann\.nbits"):
        ann.IndexConfig(nbits=17)
    with pytest.raises(ConfigError, match=r"export\.ann\.nlist"):
        ann.IndexConfig(nlist=-1)
    with pytest.raises(ConfigError, match=r"export\.ann\.store"):
        ann.IndexConfig(store="int8")
    with pytest.raises(ConfigError, match=r"export\.ann\.m: 7 does not divide .* 32"):
        ann.build("ivfpq", np.eye(2000, D, dtype=np.float32), ann.IndexConfig(m=7, nlist=4))
    # From the distill config's export block: defaults, overrides, unknown and mistyped fields.
    from sb3dr_jax.configs import distill

    export = distill.get_config("smoke").export
    assert ann.IndexConfig.from_config(export) == ann.IndexConfig()
    export.index, export.ann.nprobe = "hnsw", 7
    assert ann.IndexConfig.from_config(export).nprobe == 7
    export.ann.nprob = 3
    with pytest.raises(ConfigError, match=r"export\.ann\.nprob: unknown field"):
        ann.IndexConfig.from_config(export)
    bad = ml_collections.ConfigDict({"index": "ivfpq", "ann": {"nlist": "many"}})
    with pytest.raises(ConfigError, match=r"export\.ann\.nlist: expected int"):
        ann.IndexConfig.from_config(bad)


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'sb3dr_jax\[ann\]'"):
        ann.build("hnsw", np.eye(10, D, dtype=np.float32), ann.IndexConfig())


def test_exact_topk_matches_the_exact_index(gallery):
    """The chunked scan (the benchmark's ground truth, the ANN path's fallback) is exact."""
    emb, _, _, exact, q = gallery
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    s, i = ann.exact_topk(qn, exact.embeddings, 10, chunk=700)
    es, ei = exact.search(q, 10)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, atol=1e-5)


def test_web_export_identity_covers_index_faiss(ivfpq, tmp_path):
    pytest.importorskip("fastapi")
    from sb3dr_jax.serving.web.app import export_identity

    ivfpq.save(tmp_path)
    before = export_identity(tmp_path)
    (tmp_path / ANN_FILE).write_bytes((tmp_path / ANN_FILE).read_bytes() + b"\0")
    assert export_identity(tmp_path) != before
