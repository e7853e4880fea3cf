import filecmp

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sb3dr_jax.data import demo
from sb3dr_jax.data.cla import read_cla
from sb3dr_jax.data.demo import build_demo, class_counts, demo_classes, make_demo_mesh
from sb3dr_jax.data.meshes import load_mesh
from sb3dr_jax.data.render import RenderConfig, render_views
from sb3dr_jax.data.sketches import load_sketch

SMALL = dict(
    num_classes=3,
    max_shapes_per_class=4,
    imbalance_ratio=2.0,
    sketches_per_class=(3, 2),
    sketch_size=64,
    seed=3,
)


def test_long_tail_counts():
    c = class_counts(10, 30, 10.0)
    assert c[0] == 30 and c[-1] == 3 and all(a >= b for a, b in zip(c, c[1:]))
    assert c[5] == round(30 * 10.0 ** (-5 / 9))
    assert min(class_counts(5, 4, 100.0)) == 2


def test_deterministic_layout_and_readable(tmp_path):
    a = build_demo(tmp_path / "a", **SMALL)
    build_demo(tmp_path / "b", **SMALL)
    for sub in ("models", "classes", *(f"sketches/{c}" for c in a.classes)):
        c = filecmp.dircmp(tmp_path / "a" / sub, tmp_path / "b" / sub)
        assert c.common_files and not (c.diff_files or c.left_only or c.right_only), sub
        _, mismatch, errors = filecmp.cmpfiles(
            tmp_path / "a" / sub, tmp_path / "b" / sub, c.common_files, shallow=False
        )
        assert not mismatch and not errors, sub  # byte-identical
    assert a.problems == [] and len(a.classes) == 3
    assert sorted(len([s for s in a.shapes if s.label == c]) for c in a.classes) == [2, 3, 4]
    assert len(a.sketches) == 3 * 5
    assert sum(s.split == "test" for s in a.sketches) == 3 * 2
    model_cla = read_cla(tmp_path / "a" / "classes" / "Model.cla")
    assert model_cla.class_names() == a.classes and model_cla.num_items() == len(a.shapes)
    for s in a.sketches[:3]:
        raw = np.asarray(Image.open(s.path))
        assert raw.shape == (64, 64) and raw.dtype == np.uint8
        assert raw.mean() > 200  # TU-Berlin style: black ink on a white page
        img = load_sketch(s.path, size=64)
        assert (img > 32).mean() > 0.01
    for item in a.shapes:
        load_mesh(item.path)  # the written .off files read back


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        build_demo("/nonexistent", num_classes=99)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        build_demo("/nonexistent", imbalance_ratio=0.5)
    with pytest.raises(ValueError, match="sketches_per_class"):
        build_demo("/nonexistent", sketches_per_class=(3, 0))


def test_stroke_dropout_removes_whole_fragments():
    # A clean drawing: a square outline plus a diagonal.
    ink = np.zeros((64, 64), bool)
    ink[8, 8:56] = ink[55, 8:56] = ink[8:56, 8] = ink[8:56, 55] = True
    ink[np.arange(8, 56), np.arange(8, 56)] = True
    dropped = 0
    for seed in range(20):
        kept = demo._drop_fragments(ink, np.random.default_rng(seed))
        assert not (kept & ~ink).any() and kept.sum() >= 0.7 * ink.sum()
        removed = ink & ~kept
        if removed.any():
            dropped += 1
            # Removed ink comes in pieces several pixels long (short ones only where the cutting
            # grid passes near a corner), not scattered dots.
            lab, n = ndimage.label(removed, structure=np.ones((3, 3), bool))
            sizes = np.bincount(lab.ravel())[1:]
            assert sizes.min() >= 2 and sizes.mean() >= 5
    assert dropped >= 5
    np.testing.assert_array_equal(
        demo._drop_fragments(ink, np.random.default_rng(1)),
        demo._drop_fragments(ink, np.random.default_rng(1)),
    )


def test_synthetic_sketch_is_a_distorted_line_drawing():
    mesh = make_demo_mesh("chair", np.random.default_rng(0))
    a = demo.synth_sketch(mesh, np.random.default_rng(5), 96)
    b = demo.synth_sketch(mesh, np.random.default_rng(5), 96)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (96, 96) and a.dtype == np.uint8
    assert 0.01 < (a > 127).mean() < 0.3  # strokes, not a filled silhouette
    c = demo.synth_sketch(mesh, np.random.default_rng(6), 96)
    assert not np.array_equal(a, c)


def _silhouettes(name: str, seed: int) -> np.ndarray:
    cfg = RenderConfig(num_views=12, resolution=32, channels=("depth",))
    return render_views(make_demo_mesh(name, np.random.default_rng(seed)), cfg)[..., 0] > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a & b).sum(axis=(1, 2)) / (a | b).sum(axis=(1, 2))).mean())


def test_chair_silhouette_differs_from_mug():
    for seed in range(3):
        chair, other_chair, mug = (
            _silhouettes("chair", seed),
            _silhouettes("chair", seed + 10),
            _silhouettes("mug", seed),
        )
        assert _iou(chair, mug) < 0.5
        assert _iou(chair, other_chair) > _iou(chair, mug)


def test_classes_are_visually_distinct():
    rng = np.random.default_rng(0)
    cfg = RenderConfig(num_views=4, resolution=24, channels=("depth",))
    feats, labels = [], []
    for ci, name in enumerate(demo_classes()):
        for _ in range(4):
            feats.append(render_views(make_demo_mesh(name, rng), cfg).astype(np.float32).ravel())
            labels.append(ci)
    x, y = np.stack(feats), np.array(labels)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    acc = (y[d.argmin(1)] == y).mean()
    assert acc > 0.6  # 1-NN on raw depth renders, chance is 1/12
