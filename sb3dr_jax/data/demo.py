"""The built-in demo dataset: procedural meshes of recognisable classes and synthetic sketches.

No download and no shared data: `build_demo` writes a folder in exactly the `../shared/data/*`
layout (`classes/*.cla`, `models/m<id>.off`, `sketches/<class>/<id>.png`), so the same readers,
builders and pipelines serve demo and real data.

- Meshes: each class is a small part-based generator (boxes, cylinders, cones, spheres, tori)
  with randomised proportions and optional parts (a chair with or without arms, a four-legged
  or pedestal table, ...). Shapes stay upright (y up): the ring cameras circle the up axis.
- Long tail: class c (in a seeded random order) gets
  n_c = round(max_shapes_per_class * imbalance_ratio ** (-rank_c / (C - 1))) shapes, at least 2.
- Sketches: the `line` channel of a random shape of the class seen from a random viewpoint
  (azimuth uniform, elevation 0-45 degrees), then stroke dropout (random connected line
  fragments removed), a smooth elastic displacement (stroke jitter), an affine distortion
  (rotation, scale, shear, translation) and a thickness that varies along the strokes; saved
  black-on-white like TU-Berlin PNGs, so the TU-Berlin reader serves both.
Everything is derived from `seed`, so two builds are byte-identical. At the defaults (10 classes,
122 shapes, 320 sketches of 128 px) a build takes ~3.5 s on a shared 2-core CPU.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage

from sb3dr_jax.data.cla import Cla, ClaClass, write_cla
from sb3dr_jax.data.layouts import DatasetLayout, read_shared_layout
from sb3dr_jax.data.meshes import normalize_arrays
from sb3dr_jax.data.render import RenderConfig, render_from_directions

Parts = list[trimesh.Trimesh]


def _box(ext, at) -> trimesh.Trimesh:
    return trimesh.creation.box(
        extents=ext, transform=trimesh.transformations.translation_matrix(at)
    )


def _along(m: trimesh.Trimesh, axis: str, at, flip_y: bool = False) -> trimesh.Trimesh:
    """Turns a primitive built along z to lie along `axis`, then moves it to `at`."""
    sign = -1 if flip_y else 1
    rot = {
        "y": trimesh.transformations.rotation_matrix(sign * np.pi / 2, [1, 0, 0]),
        "x": trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]),
        "z": np.eye(4),
    }[axis]
    m.apply_transform(rot)
    m.apply_translation(at)
    return m


def _cyl(r, h, at, axis="y", sections=20) -> trimesh.Trimesh:
    return _along(trimesh.creation.cylinder(radius=r, height=h, sections=sections), axis, at)


def _cone(r, h, at, axis="y") -> trimesh.Trimesh:
    # Cones point along +z; flipping the y rotation makes them point up.
    return _along(trimesh.creation.cone(radius=r, height=h, sections=20), axis, at, flip_y=True)


def _sphere(r, at, scale=(1, 1, 1)) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=2, radius=r)
    m.apply_scale(scale)
    m.apply_translation(at)
    return m


def _torus(major, minor, at, axis="z") -> trimesh.Trimesh:
    m = trimesh.creation.torus(
        major_radius=major, minor_radius=minor, major_sections=24, minor_sections=8
    )
    if axis == "x":
        m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    m.apply_translation(at)
    return m


def _legs(w, d, h, t, y0=0.0) -> Parts:
    return [
        _box((t, h, t), (sx * (w / 2 - t / 2), y0 + h / 2, sz * (d / 2 - t / 2)))
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]


def chair(rng: np.random.Generator) -> Parts:
    w, d, sh = rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1)
    t, bh = rng.uniform(0.06, 0.12), rng.uniform(0.8, 1.4)
    if rng.random() < 0.3:  # office chair: a pedestal on a five-spoke base
        base = [_cyl(0.06, sh, (0, sh / 2, 0))]
        for k in range(5):
            a = 2 * np.pi * k / 5
            spoke = _box((0.5 * w, 0.06, 0.08), (0.25 * w, 0.05, 0))
            spoke.apply_transform(trimesh.transformations.rotation_matrix(a, [0, 1, 0]))
            base.append(spoke)
    else:
        base = _legs(w, d, sh, t)
    parts = base + [
        _box((w, 0.1, d), (0, sh + 0.05, 0)),
        _box((w, bh, 0.08), (0, sh + 0.1 + bh / 2, -d / 2 + 0.04)),
    ]
    if rng.random() < 0.5:  # arms
        parts += [_box((0.06, 0.06, d), (s * w / 2, sh + 0.35, 0)) for s in (-1, 1)]
        parts += [_box((0.05, 0.3, 0.05), (s * w / 2, sh + 0.2, d / 2 - 0.05)) for s in (-1, 1)]
    return parts


def table(rng) -> Parts:
    w, d, h = rng.uniform(1.4, 2.2), rng.uniform(0.8, 1.3), rng.uniform(0.8, 1.1)
    top = _box((w, 0.08, d), (0, h, 0))
    if rng.random() < 0.6:
        return [top] + _legs(w * 0.95, d * 0.95, h, rng.uniform(0.06, 0.12))
    return [top, _cyl(0.08, h, (0, h / 2, 0)), _cyl(rng.uniform(0.3, 0.5), 0.05, (0, 0.025, 0))]


def mug(rng) -> Parts:
    r, h = rng.uniform(0.4, 0.6), rng.uniform(0.8, 1.3)
    return [
        _cyl(r, h, (0, h / 2, 0), sections=28),
        _torus(h * 0.28, 0.05, (r + h * 0.15, h / 2, 0), axis="z"),
    ]


def lamp(rng) -> Parts:
    h = rng.uniform(1.5, 2.2)
    parts = [_cyl(rng.uniform(0.3, 0.45), 0.06, (0, 0.03, 0)), _cyl(0.04, h, (0, h / 2, 0))]
    shade_r = rng.uniform(0.3, 0.55)
    parts.append(_cone(shade_r, rng.uniform(0.4, 0.6), (0, h - 0.1, 0)))
    return parts


def bottle(rng) -> Parts:
    r, h = rng.uniform(0.25, 0.4), rng.uniform(1.0, 1.6)
    nh = rng.uniform(0.3, 0.6)
    return [
        _cyl(r, h, (0, h / 2, 0), sections=28),
        _cone(r, 0.3, (0, h, 0)),
        _cyl(r * 0.35, nh, (0, h + 0.15 + nh / 2, 0)),
    ]


def airplane(rng) -> Parts:
    L, span = rng.uniform(2.0, 2.8), rng.uniform(2.0, 3.0)
    return [
        _cyl(0.15, L, (0, 0, 0), axis="z"),
        _cone(0.15, 0.4, (0, 0, L / 2), axis="z"),
        _box((span, 0.04, rng.uniform(0.35, 0.55)), (0, 0, rng.uniform(-0.1, 0.3))),
        _box((span * 0.35, 0.03, 0.25), (0, 0, -L / 2 + 0.15)),
        _box((0.03, rng.uniform(0.35, 0.55), 0.3), (0, 0.25, -L / 2 + 0.15)),
    ]


def car(rng) -> Parts:
    L, w, h = rng.uniform(2.0, 2.6), rng.uniform(0.9, 1.1), rng.uniform(0.35, 0.5)
    parts = [
        _box((w, h, L), (0, 0.25 + h / 2, 0)),
        _box(
            (w * 0.9, rng.uniform(0.3, 0.45), L * rng.uniform(0.4, 0.6)), (0, 0.25 + h + 0.18, -0.1)
        ),
    ]
    parts += [
        _cyl(0.22, 0.15, (sx * w / 2, 0.22, sz * L * 0.33), axis="x")
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]
    return parts


def bed(rng) -> Parts:
    w, L = rng.uniform(1.3, 1.8), rng.uniform(1.9, 2.3)
    return _legs(w, L, 0.25, 0.1) + [
        _box((w, 0.3, L), (0, 0.4, 0)),
        _box((w, rng.uniform(0.6, 1.0), 0.1), (0, 0.6, -L / 2)),
        _box((w * 0.8, 0.12, 0.35), (0, 0.61, -L / 2 + 0.3)),
    ]


def guitar(rng) -> Parts:
    r1, r2 = rng.uniform(0.35, 0.45), rng.uniform(0.25, 0.33)
    nl = rng.uniform(1.0, 1.4)
    return [
        _sphere(r1, (0, r1, 0), (1, 1, 0.3)),
        _sphere(r2, (0, 2 * r1 + r2 * 0.6, 0), (1, 1, 0.3)),
        _box((0.1, nl, 0.05), (0, 2 * r1 + r2 + nl / 2, 0)),
        _box((0.18, 0.25, 0.06), (0, 2 * r1 + r2 + nl + 0.12, 0)),
    ]


def sofa(rng) -> Parts:
    w, d = rng.uniform(1.8, 2.6), rng.uniform(0.8, 1.0)
    ah = rng.uniform(0.55, 0.75)
    return [
        _box((w, 0.35, d), (0, 0.25, 0)),
        _box((w, 0.7, 0.2), (0, 0.6, -d / 2 + 0.1)),
        _box((0.2, ah, d), (-w / 2, ah / 2 + 0.05, 0)),
        _box((0.2, ah, d), (w / 2, ah / 2 + 0.05, 0)),
    ]


def umbrella(rng) -> Parts:
    h, r = rng.uniform(1.6, 2.0), rng.uniform(0.8, 1.2)
    return [
        _cyl(0.03, h, (0, h / 2, 0)),
        _cone(r, rng.uniform(0.3, 0.5), (0, h, 0)),
        _torus(0.12, 0.025, (0.12, 0.05, 0), axis="z"),
    ]


def ladder(rng) -> Parts:
    h, w = rng.uniform(2.0, 2.8), rng.uniform(0.5, 0.8)
    n = int(rng.integers(4, 8))
    return [_box((0.06, h, 0.06), (s * w / 2, h / 2, 0)) for s in (-1, 1)] + [
        _cyl(0.025, w, (0, h * (k + 1) / (n + 1), 0), axis="x") for k in range(n)
    ]


GENERATORS: dict[str, Callable[[np.random.Generator], Parts]] = {
    "chair": chair,
    "table": table,
    "mug": mug,
    "lamp": lamp,
    "bottle": bottle,
    "airplane": airplane,
    "car": car,
    "bed": bed,
    "guitar": guitar,
    "sofa": sofa,
    "umbrella": umbrella,
    "ladder": ladder,
}


def demo_classes() -> list[str]:
    """Returns the names of all demo classes (at most this many can be built)."""
    return list(GENERATORS)


def make_demo_mesh(class_name: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """Generates one random shape of a demo class, normalised into the unit sphere.

    Args:
      class_name: one of `demo_classes()`.
      rng: the random generator (consumed).

    Returns:
      A unit-sphere mesh, y up.
    """
    mesh = trimesh.util.concatenate(GENERATORS[class_name](rng))
    return trimesh.Trimesh(normalize_arrays(np.asarray(mesh.vertices)), mesh.faces, process=False)


def class_counts(num_classes: int, max_per_class: int, imbalance_ratio: float) -> list[int]:
    """Long-tailed shape counts per rank: max * ratio^(-rank/(C-1)), at least 2."""
    if num_classes == 1:
        return [max_per_class]
    return [
        max(2, int(round(max_per_class * imbalance_ratio ** (-r / (num_classes - 1)))))
        for r in range(num_classes)
    ]


def _drop_fragments(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stroke dropout: removes random connected line fragments of a binary [S, S] drawing.

    A randomly offset grid cuts the lines into short pieces (what a hand draws in one go); each
    8-connected piece is dropped with a small probability. At least 70% of the ink is kept.
    """
    s = ink.shape[0]
    cell = int(rng.integers(s // 8, s // 4 + 1))
    oy, ox = rng.integers(0, cell, 2)
    yy, xx = np.mgrid[:s, :s]
    cut = ((yy + oy) % cell == 0) | ((xx + ox) % cell == 0)
    lab, n = ndimage.label(ink & ~cut, structure=np.ones((3, 3), bool))
    # Pixels on the cut belong to a neighbouring piece, so dropping one leaves no stray dots.
    lab = np.where(ink & cut, ndimage.grey_dilation(lab, size=(3, 3)), lab)
    drop = rng.random(n + 1) < rng.uniform(0.0, 0.15)
    drop[0] = False  # label 0 is the background
    kept = ink & ~drop[lab]
    return kept if kept.sum() >= 0.7 * ink.sum() else ink


def _smooth_field(s: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A smooth random field [s, s] with unit standard deviation (before smoothing)."""
    f = ndimage.gaussian_filter(rng.standard_normal((s, s)), sigma)
    return f / (f.std() + 1e-12)


def _distort(line: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turns a clean line drawing [S, S] (ink 255 on 0) into a sketch-like one."""
    s = line.shape[0]
    img = _drop_fragments(line > 127, rng).astype(np.float32)
    # Smooth elastic displacement (stroke jitter) plus an affine distortion, in one resampling.
    amp = rng.uniform(0.005, 0.015) * s  # jitter amplitude in pixels (one standard deviation)
    dy, dx = (_smooth_field(s, rng, s / 10) * amp for _ in range(2))
    ang, sc = rng.uniform(-0.2, 0.2), rng.uniform(0.85, 1.1)
    sh = rng.uniform(-0.15, 0.15)
    a = (
        np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        @ np.array([[1, sh], [0, 1]])
        / sc
    )
    c = (s - 1) / 2
    ty, tx = rng.uniform(-0.05, 0.05, 2) * s
    yy, xx = np.mgrid[:s, :s]
    src_y = a[0, 0] * (yy - c) + a[0, 1] * (xx - c) + c - ty + dy
    src_x = a[1, 0] * (yy - c) + a[1, 1] * (xx - c) + c - tx + dx
    img = ndimage.map_coordinates(img, [src_y, src_x], order=1, mode="constant")
    # Thickness variation along the strokes: thicker where a smooth random field is high.
    thick = ndimage.grey_dilation(img, size=(2, 2))
    where = _smooth_field(s, rng, s / 8) > rng.uniform(-0.5, 1.5)
    img = np.where(where, thick, img)
    return np.clip(img * 255 * rng.uniform(0.8, 1.0), 0, 255).astype(np.uint8)


def synth_sketch(mesh: trimesh.Trimesh, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draws one synthetic sketch of a mesh from a random viewpoint.

    Args:
      mesh: unit-sphere mesh.
      rng: random generator (consumed).
      size: side length in pixels.

    Returns:
      uint8 [size, size], ink 255 on 0.
    """
    az, el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(0, 45))
    d = np.array([[np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)]])
    cfg = RenderConfig(
        num_views=1, resolution=size, channels=("line",), line_width=2 if size >= 96 else 1
    )
    line = render_from_directions(mesh, d, cfg)[0, ..., 0]
    out = _distort(line, rng)
    return out if out.max() > 0 else line  # distortion can, rarely, push ink off the canvas


def build_demo(
    root: str | os.PathLike,
    *,
    num_classes: int = 10,
    max_shapes_per_class: int = 30,
    imbalance_ratio: float = 10.0,
    sketches_per_class: tuple[int, int] = (24, 8),
    sketch_size: int = 128,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> DatasetLayout:
    """Writes the demo dataset in the `../shared/data/*` layout.

    Args:
      root: output folder (created; existing files are overwritten).
      num_classes: number of classes, at most `len(demo_classes())`.
      max_shapes_per_class: shapes of the most frequent class.
      imbalance_ratio: most / least frequent class size.
      sketches_per_class: (train, test) sketches per class (balanced, as in TU-Berlin).
      sketch_size: sketch PNG side length.
      seed: everything derives from it.
      progress: optional callback for progress messages.

    Returns:
      The layout of the written folder.
    """
    names = demo_classes()
    if not 1 <= num_classes <= len(names):
        raise ValueError(f"build_demo: num_classes must be in [1, {len(names)}], got {num_classes}")
    if max_shapes_per_class < 2 or imbalance_ratio < 1.0:
        raise ValueError(
            "build_demo: max_shapes_per_class >= 2 and imbalance_ratio >= 1 required, got "
            f"{max_shapes_per_class}, {imbalance_ratio}"
        )
    if len(sketches_per_class) != 2 or min(sketches_per_class) < 1 or sketch_size < 16:
        raise ValueError(
            "build_demo: sketches_per_class must be (train >= 1, test >= 1) and sketch_size >= "
            f"16, got {sketches_per_class}, {sketch_size}"
        )
    root = pathlib.Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = names[:num_classes]
    # A seeded order decides which classes are head and which are tail.
    order = rng.permutation(num_classes)
    counts = dict(
        zip(
            [classes[i] for i in order],
            class_counts(num_classes, max_shapes_per_class, imbalance_ratio),
        )
    )
    model_cla, train_cla, test_cla = [], [], []
    next_model, next_sketch = 0, 100000
    for ci, cls in enumerate(classes):
        crng = np.random.default_rng([seed, ci])
        meshes, ids = [], []
        for _ in range(counts[cls]):
            m = make_demo_mesh(cls, crng)
            mid = str(next_model)
            next_model += 1
            m.export(root / "models" / f"m{mid}.off", file_type="off")
            meshes.append(m)
            ids.append(mid)
        model_cla.append(ClaClass(cls, "0", tuple(ids)))
        (root / "sketches" / cls).mkdir(parents=True, exist_ok=True)
        for n, target in ((sketches_per_class[0], train_cla), (sketches_per_class[1], test_cla)):
            sids = []
            for _ in range(n):
                img = synth_sketch(meshes[int(crng.integers(len(meshes)))], crng, sketch_size)
                sid = str(next_sketch)
                next_sketch += 1
                Image.fromarray(255 - img).save(
                    root / "sketches" / cls / f"{sid}.png", optimize=False
                )
                sids.append(sid)
            target.append(ClaClass(cls, "0", tuple(sids)))
        if progress:
            progress(f"demo class {cls}: {counts[cls]} shapes")
    write_cla(root / "classes" / "Model.cla", Cla(tuple(model_cla)))
    write_cla(root / "classes" / "Sketch_Train.cla", Cla(tuple(train_cla)))
    write_cla(root / "classes" / "Sketch_Test.cla", Cla(tuple(test_cla)))
    return read_shared_layout(root)
