import subprocess
import sys

import numpy as np
import pytest

from sb3dr_jax.evals.index import IndexMismatchError, RetrievalIndex


def test_serving_never_imports_training_code():
    code = (
        "import sys, sb3dr_jax.serving.query, sb3dr_jax.serving.export; "
        "bad = [m for m in sys.modules if m.startswith(('sb3dr_jax.train', 'sb3dr_jax.pretrain', "
        "'sb3dr_jax.distill', 'sb3dr_jax.evaluate'))]; print(bad); assert not bad"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_query_engine_ranks_like_the_evaluation(student_workdir, smoke_builder):
    import tensorflow_datasets as tfds

    from sb3dr_jax.serving.query import QueryEngine

    engine = QueryEngine.from_export(f"{student_workdir}/export")
    ex = next(iter(tfds.as_numpy(smoke_builder.as_dataset(split="sketch_test"))))
    img = ex["image"][..., 0]
    res = engine.query(255 - img, k=5)  # a dark-on-light drawing of any size works
    assert len(res) == 5 and res[0]["score"] >= res[-1]["score"]
    assert {"model_id", "label", "score"} <= set(res[0])
    # Ranks like the evaluation: cosine similarity of the unit embeddings, best first.
    q = engine.embed([255 - img])[0]
    g = engine.index.embeddings
    cos = g @ q / (np.linalg.norm(g, axis=1) * np.linalg.norm(q))
    np.testing.assert_allclose([r["score"] for r in res], np.sort(cos)[::-1][:5], atol=1e-5)
    assert cos[engine.index.model_ids.index(res[0]["model_id"])] == pytest.approx(cos.max())
    # A 5x larger canvas of the same drawing is preprocessed to (almost) the same input, so it
    # lands at (almost) the same point of the embedding space.
    big = np.kron(255 - img, np.ones((5, 5), np.uint8))
    qb = engine.embed([big])[0]
    sim = qb @ q / (np.linalg.norm(qb) * np.linalg.norm(q))
    assert sim > 0.95


def test_export_refuses_another_teachers_index(student_workdir, tmp_path):
    import shutil

    from sb3dr_jax.serving.export import load_export

    shutil.copytree(f"{student_workdir}/export", tmp_path / "export")
    idx = RetrievalIndex.load(tmp_path / "export")
    RetrievalIndex(idx.embeddings, idx.model_ids, idx.labels, idx.class_names, "another").save(
        tmp_path / "export"
    )
    with pytest.raises(IndexMismatchError, match="another"):
        load_export(tmp_path / "export")
