import shutil

import pytest

from sb3dr_jax.data.cla import Cla, ClaClass, read_cla, write_cla
from sb3dr_jax.data.errors import ClaError, LayoutError
from sb3dr_jax.data.layouts import read_layout


def test_shared_layouts(tub16, qd90):
    t = read_layout(tub16)
    assert (len(t.classes), len(t.shapes), len(t.sketches), t.problems) == (16, 110, 640, [])
    q = read_layout(qd90)
    assert (len(q.classes), len(q.shapes), len(q.sketches)) == (90, 692, 1233)
    assert all(s.ndjson_key for s in q.sketches)
    assert {s.split for s in t.sketches} == {"train", "test"}


def _subset(tub16, n_classes=3, n_models=2, n_sketches=2):
    model_cla = read_cla(tub16 / "classes" / "Model.cla")
    classes = model_cla.classes[:n_classes]
    train = {c.name: c for c in read_cla(tub16 / "classes" / "Sketch_Train.cla").classes}
    test = {c.name: c for c in read_cla(tub16 / "classes" / "Sketch_Test.cla").classes}
    return (
        [ClaClass(c.name, c.parent, c.ids[:n_models]) for c in classes],
        [ClaClass(c.name, "0", train[c.name].ids[:n_sketches]) for c in classes],
        [ClaClass(c.name, "0", test[c.name].ids[:n_sketches]) for c in classes],
    )


def test_shrec13_layout(tub16, tmp_path):
    models, train, test = _subset(tub16)
    write_cla(tmp_path / "SHREC13_SBR_Model.cla", Cla(tuple(models)))
    write_cla(tmp_path / "SHREC13_SBR_Sketch_Train.cla", Cla(tuple(train)))
    write_cla(tmp_path / "SHREC13_SBR_Sketch_Test.cla", Cla(tuple(test)))
    (tmp_path / "SHREC13_SBR_TARGET_MODELS" / "models").mkdir(parents=True)
    for c in models:
        for i in c.ids:
            shutil.copy(
                tub16 / "models" / f"m{i}.off", tmp_path / "SHREC13_SBR_TARGET_MODELS" / "models"
            )
    for folder, split, clas in (
        ("SHREC13_SBR_TRAINING_SKETCHES", "train", train),
        ("SHREC13_SBR_TESTING_SKETCHES", "test", test),
    ):
        for c in clas:
            d = tmp_path / folder / c.name / split
            d.mkdir(parents=True)
            for i in c.ids:
                shutil.copy(tub16 / "sketches" / c.name / f"{i}.png", d)
    layout = read_layout(tmp_path)
    assert layout.name == "shrec13" and layout.problems == []
    assert len(layout.shapes) == 6 and len(layout.sketches) == 12


def test_shrec14_layout_zero_padded_models(tub16, tmp_path):
    models, train, test = _subset(tub16)
    write_cla(tmp_path / "SHREC14_SBR_Model.cla", Cla(tuple(models)))
    write_cla(tmp_path / "SHREC14_SBR_Sketch_Train.cla", Cla(tuple(train)))
    write_cla(tmp_path / "SHREC14_SBR_Sketch_Test.cla", Cla(tuple(test)))
    (tmp_path / "SHREC14LSSTB_TARGET_MODELS").mkdir()
    for c in models:
        for i in c.ids:
            shutil.copy(
                tub16 / "models" / f"m{i}.off",
                tmp_path / "SHREC14LSSTB_TARGET_MODELS" / f"M{i.zfill(6)}.off",
            )
    for split, clas in (("train", train), ("test", test)):
        for c in clas:
            d = tmp_path / "SHREC14LSSTB_SKETCHES" / c.name / split
            d.mkdir(parents=True)
            for i in c.ids:
                shutil.copy(tub16 / "sketches" / c.name / f"{i}.png", d)
    layout = read_layout(tmp_path, "shrec14")
    assert layout.problems == [] and len(layout.shapes) == 6 and len(layout.sketches) == 12
    assert layout.shapes[0].path.name.startswith("M0")


def test_problems_recorded_not_fatal(tub16, tmp_path):
    models, train, test = _subset(tub16)
    (tmp_path / "models").mkdir()
    for c in models:
        for i in c.ids[:-1]:  # the last model of each class is missing
            shutil.copy(tub16 / "models" / f"m{i}.off", tmp_path / "models")
    write_cla(tmp_path / "classes" / "Model.cla", Cla(tuple(models)))
    write_cla(tmp_path / "classes" / "Sketch_Train.cla", Cla(tuple(train)))
    (tmp_path / "classes" / "Sketch_Test.cla").write_text("PSB 1\n1 9\n\nant 0 9\n1\n")
    layout = read_layout(tmp_path)
    assert len(layout.shapes) == 3
    assert any("Sketch_Test.cla:4" in p and "declares 9 ids" in r for p, r in layout.problems)
    # models + train sketches + the one id the lenient Sketch_Test.cla kept (no such file)
    assert sum("file not found" in r for _, r in layout.problems) == 3 + 6 + 1
    assert not [s for s in layout.sketches if s.split == "test"]


def test_fatal_layout_errors(tmp_path):
    with pytest.raises(LayoutError):
        read_layout(tmp_path / "nope")
    with pytest.raises(LayoutError):
        read_layout(tmp_path)
    (tmp_path / "classes").mkdir()
    (tmp_path / "classes" / "Model.cla").write_text("PSB 1\n1 2\n\na 0 1\n1\n")
    with pytest.raises(ClaError):
        read_layout(tmp_path)


def test_sketch_cla_with_a_duplicated_class_keeps_its_items(tub16, tmp_path):
    """One class header listed twice used to empty the whole split (issue 19.3)."""
    models, train, test = _subset(tub16)
    (tmp_path / "models").mkdir()
    for c in models:
        for i in c.ids:
            shutil.copy(tub16 / "models" / f"m{i}.off", tmp_path / "models")
    write_cla(tmp_path / "classes" / "Model.cla", Cla(tuple(models)))
    write_cla(tmp_path / "classes" / "Sketch_Train.cla", Cla(tuple(train)))
    for c in test:
        (tmp_path / "sketches" / c.name).mkdir(parents=True, exist_ok=True)
        for i in c.ids:
            shutil.copy(tub16 / "sketches" / c.name / f"{i}.png", tmp_path / "sketches" / c.name)
    first = test[0]
    dup = Cla((*test, ClaClass(first.name, "0", first.ids[:1])))  # first class listed again
    write_cla(tmp_path / "classes" / "Sketch_Test.cla", dup)
    layout = read_layout(tmp_path)
    kept = [s for s in layout.sketches if s.split == "test"]
    assert len(kept) == sum(len(c.ids) for c in test)  # every good test sketch
    reasons = [r for p, r in layout.problems if "Sketch_Test.cla" in p]
    assert any("appears twice" in r for r in reasons) and any(
        "already listed" in r for r in reasons
    )
