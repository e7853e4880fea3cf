import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from sb3dr_jax.configs.common import dataset_config
from sb3dr_jax.data import dataset_from_config
from sb3dr_jax.data.cla import Cla, ClaClass, read_cla, write_cla
from sb3dr_jax.data.pipeline import (
    decoded_views_gib,
    eval_batches,
    per_device_batch,
    process_split,
    shape_batches,
    sketch_batches,
)


def test_smoke_demo_records(smoke_builder):
    info = smoke_builder.info
    meta = info.metadata
    assert set(info.splits) == {"shapes", "sketch_train", "sketch_test"}
    assert sum(meta["shape_counts"]) == info.splits["shapes"].num_examples
    assert len(meta["class_names"]) == 4 and meta["num_skipped"] == 0
    assert os.path.exists(os.path.join(smoke_builder.data_dir, "build_report.json"))


def test_shape_and_sketch_batches(smoke_builder):
    b = next(shape_batches(smoke_builder, global_batch=16, seed=0))
    assert b["views"].shape == (8, 2, 12, 32, 32, 3) and b["views"].dtype == np.uint8
    assert b["label"].shape == (8, 2) and b["index"].dtype == np.int32
    s = next(sketch_batches(smoke_builder, global_batch=8, seed=0))
    assert s["image"].shape == (8, 1, 32, 32, 1) and s["image"].dtype == np.uint8
    a1 = next(shape_batches(smoke_builder, global_batch=8, seed=5))["index"]
    a2 = next(shape_batches(smoke_builder, global_batch=8, seed=5))["index"]
    np.testing.assert_array_equal(a1, a2)  # deterministic given the seed
    with pytest.raises(ValueError, match="multiple"):
        per_device_batch(12, 1, 8)


def test_cached_shape_batches_match_streaming_and_stop_reading(smoke_builder, tmp_path):
    import tensorflow_datasets as tfds

    # A private copy of the records: the test deletes them mid-run.
    copy = tmp_path / "records"
    shutil.copytree(smoke_builder.data_dir, copy)
    builder = tfds.builder_from_directory(str(copy))
    n = builder.info.splits["shapes"].num_examples
    r = builder.info.metadata["render"]
    assert decoded_views_gib(builder) == pytest.approx(
        n * r["num_views"] * r["resolution"] ** 2 * len(r["channels"]) / 2**30
    )
    stream = shape_batches(builder, global_batch=8, seed=3)
    cached = shape_batches(builder, global_batch=8, seed=3, cache_gib=1.0)
    over = shape_batches(builder, global_batch=8, seed=3, cache_gib=decoded_views_gib(builder) / 2)
    epoch = -(-n // 8) + 1  # past the end of the first pass
    for _ in range(epoch):
        a, b, c = next(stream), next(cached), next(over)
        for k in ("views", "index", "label"):  # the same batches, in the same order
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], c[k])
    for f in copy.glob("*shapes.tfrecord*"):
        f.unlink()
    for _ in range(2 * epoch):  # the cached pipeline no longer reads the records
        next(cached)
    with pytest.raises(Exception, match="shapes.tfrecord"):  # over its budget: it streams
        for _ in range(2 * epoch):
            next(over)


@pytest.mark.parametrize("split", ["shapes", "sketch_test"])
def test_eval_covers_every_item_once(smoke_builder, split):
    ids, masked = [], 0
    for b in eval_batches(smoke_builder, split, global_batch=8):
        assert b["mask"].shape == (8, 1)
        ids += [i for i, m in zip(b["id"].ravel(), b["mask"].ravel()) if m]
        masked += int((~b["mask"]).sum())
    n = smoke_builder.info.splits[split].num_examples
    assert len(ids) == len(set(ids)) == n
    assert masked == (-n) % 8


def test_class_balanced_sampling(smoke_builder):
    it = sketch_batches(smoke_builder, global_batch=64, seed=0, class_balanced=True)
    labels = np.concatenate([next(it)["label"].ravel() for _ in range(10)])
    freq = np.bincount(labels, minlength=4) / len(labels)
    np.testing.assert_allclose(freq, 0.25, atol=0.06)


def test_process_shards_are_disjoint_and_cover(smoke_builder):
    import tensorflow_datasets as tfds

    ids = []
    for p in range(2):
        ds = smoke_builder.as_dataset(split=process_split("sketch_train", p, 2))
        ids.append({x["id"] for x in tfds.as_numpy(ds)})
    assert not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == smoke_builder.info.splits["sketch_train"].num_examples


def _png(arr: np.ndarray, path) -> None:
    Image.fromarray(arr).save(path)


def test_bad_input_build_reports_exactly_the_bad_items(tub16, tmp_path, capfd):
    """Bad items of every kind are reported with their reason; every good item is kept."""
    root = tmp_path / "src"
    (root / "models").mkdir(parents=True)
    model_cla = read_cla(tub16 / "classes" / "Model.cla")
    classes = [ClaClass(c.name, "0", c.ids[:2]) for c in model_cla.classes[:4]]
    for c in classes:
        for i in c.ids:
            shutil.copy(tub16 / "models" / f"m{i}.off", root / "models")
    trunc_id, nan_id, under_id = classes[0].ids[0], classes[1].ids[0], classes[2].ids[0]
    text = (root / "models" / f"m{trunc_id}.off").read_text().splitlines()
    (root / "models" / f"m{trunc_id}.off").write_text("\n".join(text[: len(text) // 2]))
    (root / "models" / f"m{nan_id}.off").write_text("OFF\n3 1 0\n0 0 0\nnan 1 0\n0 1 1\n3 0 1 2\n")

    def undercount(model_id):  # item 5: the header counts half the faces
        lines = (root / "models" / f"m{model_id}.off").read_text().splitlines()
        nv, nf = (int(t) for t in lines[1].split()[:2])
        lines[1] = f"{nv} {nf // 2} 0"
        (root / "models" / f"m{model_id}.off").write_text("\n".join(lines))

    undercount(under_id)
    lost_class = classes[3]  # item 10: every target model of this class fails
    (root / "models" / f"m{lost_class.ids[0]}.off").unlink()
    undercount(lost_class.ids[1])
    write_cla(root / "classes" / "Model.cla", Cla(tuple(classes)))
    sketches = {}
    for fname in ("Sketch_Train.cla", "Sketch_Test.cla"):
        by_name = {c.name: c for c in read_cla(tub16 / "classes" / fname).classes}
        sketches[fname] = [ClaClass(c.name, "0", by_name[c.name].ids[:2]) for c in classes]
        for c in sketches[fname]:
            (root / "sketches" / c.name).mkdir(parents=True, exist_ok=True)
            for i in c.ids:
                shutil.copy(tub16 / "sketches" / c.name / f"{i}.png", root / "sketches" / c.name)
    sk = sketches["Sketch_Train.cla"]
    # item 1: a 16-bit sketch (kept); item 2: a 3 x 20000 sketch of one stroke (kept)
    p16 = root / "sketches" / sk[0].name / f"{sk[0].ids[0]}.png"
    _png(np.asarray(Image.open(p16).convert("L"), np.uint16) * 257, p16)
    long_line = np.full((20000, 3), 255, np.uint8)
    long_line[:, 1] = 0
    _png(long_line, root / "sketches" / sk[1].name / f"{sk[1].ids[0]}.png")
    empty_id = sk[2].ids[0]
    (root / "sketches" / sk[2].name / f"{empty_id}.png").write_bytes(b"")
    write_cla(root / "classes" / "Sketch_Train.cla", Cla(tuple(sk)))
    te = sketches["Sketch_Test.cla"]  # item 3: the first class listed twice
    write_cla(
        root / "classes" / "Sketch_Test.cla", Cla((*te, ClaClass(te[0].name, "0", te[0].ids)))
    )
    cfg = dataset_config("shared", smoke=True)
    cfg.root, cfg.data_dir = str(root), str(tmp_path / "tfds")
    cfg.render.num_views = 4
    b = dataset_from_config(cfg)
    assert "Downloading and preparing" not in capfd.readouterr().out  # nothing is downloaded
    report = json.loads(
        (tmp_path / "tfds")
        .joinpath(os.path.relpath(b.data_dir, tmp_path / "tfds"), "build_report.json")
        .read_text()
    )
    assert report["num_skipped"] == len(report["skipped"])
    why = {(r["item"], r["stage"]): r["reason"] for r in report["skipped"]}
    assert "truncated" in why[(f"model {trunc_id}", "shapes")]
    assert "non-finite" in why[(f"model {nan_id}", "shapes")]
    assert "more lines follow" in why[(f"model {under_id}", "shapes")]
    assert "more lines follow" in why[(f"model {lost_class.ids[1]}", "shapes")]
    assert "no target model of this class loaded" in why[(f"class {lost_class.name}", "shapes")]
    assert "empty file" in why[(f"train sketch {empty_id}", "sketch_train")]
    for split in ("train", "test"):
        item = (f"{split} sketches of class {lost_class.name}", f"sketch_{split}")
        assert "2 sketches left out" in why[item]
    layout = [r["reason"] for r in report["skipped"] if r["stage"] == "layout"]
    assert any("file not found" in r for r in layout)
    assert any("appears twice" in r for r in layout)
    assert report["splits"] == {"shapes": 3, "sketch_train": 5, "sketch_test": 6}


def test_tub16_builds_at_small_resolution(tub16, tmp_path):
    cfg = dataset_config("tub16", smoke=True)
    cfg.data_dir = str(tmp_path)
    cfg.render.update(num_views=4, resolution=24)
    cfg.max_sketches = 20
    b = dataset_from_config(cfg)
    assert b.info.splits["shapes"].num_examples == 110
    assert len(b.info.metadata["class_names"]) == 16
    views = next(shape_batches(b, global_batch=8, seed=0))["views"]
    assert views.shape[2:] == (4, 24, 24, 3) and views.max() > 0
    Image.fromarray(views[0, 0, 0])  # valid image data
