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
    big = np.kron(255 - img, np.ones((5, 5), np.uint8))  # 5x larger canvas, same drawing
    assert [r["model_id"] for r in engine.query(big, k=3)][:1] == [r["model_id"] for r in res][:1]


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
