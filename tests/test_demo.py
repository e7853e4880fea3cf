import filecmp

import numpy as np

from sb3dr_jax.data.demo import build_demo, class_counts, demo_classes, make_demo_mesh
from sb3dr_jax.data.meshes import load_mesh
from sb3dr_jax.data.render import RenderConfig, render_views
from sb3dr_jax.data.sketches import load_sketch


def test_long_tail_counts():
    c = class_counts(10, 30, 10.0)
    assert c[0] == 30 and c[-1] == 3 and all(a >= b for a, b in zip(c, c[1:]))
    assert min(class_counts(5, 4, 100.0)) == 2


def test_deterministic_layout_and_readable(tmp_path):
    kw = dict(
        num_classes=3,
        max_shapes_per_class=4,
        imbalance_ratio=2.0,
        sketches_per_class=(3, 2),
        sketch_size=64,
        seed=3,
    )
    a = build_demo(tmp_path / "a", **kw)
    build_demo(tmp_path / "b", **kw)
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for sub in ("models", "classes"):
        c = filecmp.dircmp(tmp_path / "a" / sub, tmp_path / "b" / sub)
        assert not c.diff_files and c.common_files
    assert a.problems == [] and len(a.classes) == 3
    assert len(a.sketches) == 3 * 5
    for s in a.sketches[:3]:
        img = load_sketch(s.path, size=64)
        assert (img > 32).mean() > 0.01
    for item in a.shapes:
        load_mesh(item.path)  # the written .off files read back


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
