"""Dataset folder layouts: `../shared/data/*`, the official SHREC'13 and SHREC'14 releases.

A layout reader lists items and their classes; it never opens a mesh or an image (the dataset
builder does, and records what fails). A file named in a `.cla` but missing on disk, or a sketch
class absent from the target classes, is recorded in `layout.problems` and skipped. A sketch
`.cla` is read leniently: each inconsistency (a wrong count, a class or id listed twice) is
recorded and its good items kept; only an unreadable one (or a missing header) leaves its split
empty. A broken or missing model `.cla` is fatal, since the target classes define the labels.

SHREC'13 (Li et al., 2013)::

    SHREC13_SBR_Model.cla  SHREC13_SBR_Sketch_Train.cla  SHREC13_SBR_Sketch_Test.cla
    SHREC13_SBR_TARGET_MODELS/models/m<id>.off
    SHREC13_SBR_TRAINING_SKETCHES/<class>/train/<id>.png
    SHREC13_SBR_TESTING_SKETCHES/<class>/test/<id>.png

SHREC'14 (Li et al., 2014; the large-scale track)::

    SHREC14_SBR_Model.cla  SHREC14_SBR_Sketch_Train.cla  SHREC14_SBR_Sketch_Test.cla
    SHREC14LSSTB_TARGET_MODELS/M<id zero-padded to 6>.off   (cla ids are plain numbers)
    SHREC14LSSTB_SKETCHES/<class>/{train,test}/<id>.png

Both the zero-padded and the plain spelling of SHREC'14 model files are accepted, and sketch
folders are also found without the `train`/`test` level, since unpacked copies differ.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable

from sb3dr_jax.data.cla import Cla, read_cla
from sb3dr_jax.data.errors import ClaError, LayoutError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class ShapeItem:
    """A target 3D model."""

    model_id: str
    label: str
    path: pathlib.Path


@dataclasses.dataclass(frozen=True)
class SketchItem:
    """A sketch: a raster file, or one record (`ndjson_key`) of a QuickDraw `.ndjson` file."""

    sketch_id: str
    label: str
    split: str  # "train" | "test"
    path: pathlib.Path
    ndjson_key: str | None = None


@dataclasses.dataclass
class DatasetLayout:
    """Everything a builder needs to know about a dataset folder."""

    name: str
    classes: list[str]
    shapes: list[ShapeItem]
    sketches: list[SketchItem]
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def class_index(self) -> dict[str, int]:
        """Returns the map from class name to index (order of the model `.cla`)."""
        return {c: i for i, c in enumerate(self.classes)}


def _find(candidates: list[pathlib.Path]) -> pathlib.Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _read_models(
    cla_path: pathlib.Path, locate: Callable[[str], list[pathlib.Path]], problems: list
) -> tuple[list[str], list[ShapeItem]]:
    if not cla_path.is_file():
        raise LayoutError(cla_path, "model class file not found")
    cla = read_cla(cla_path)  # ClaError propagates: fatal
    shapes = []
    for c in cla.classes:
        for i in c.ids:
            path = _find(locate(i))
            if path is None:
                problems.append((str(locate(i)[0]), f"model {i} of class {c.name}: file not found"))
            else:
                shapes.append(ShapeItem(i, c.name, path))
    return cla.class_names(), shapes


def _read_sketch_cla(cla_path: pathlib.Path, problems: list) -> Cla | None:
    if not cla_path.is_file():
        problems.append((str(cla_path), "sketch class file not found; split left empty"))
        return None
    try:
        return read_cla(cla_path, problems=problems)  # recoverable problems: recorded, kept
    except ClaError as e:
        problems.append((str(cla_path), f"{e}; split left empty"))
        return None


def _read_sketches(
    cla: Cla | None,
    split: str,
    classes: list[str],
    locate: Callable[[str, str], tuple[pathlib.Path, str | None] | None],
    problems: list,
    cla_path: pathlib.Path,
) -> list[SketchItem]:
    if cla is None:
        return []
    known = set(classes)
    items = []
    for c in cla.classes:
        if c.name not in known:
            problems.append((str(cla_path), f"sketch class {c.name!r} has no target models"))
            continue
        for i in c.ids:
            found = locate(c.name, i)
            if found is None:
                problems.append((f"{c.name}/{i}", f"{split} sketch {i}: file not found"))
            else:
                items.append(SketchItem(i, c.name, split, found[0], found[1]))
    return items


def _image_in(folders: list[pathlib.Path], sketch_id: str) -> pathlib.Path | None:
    return _find([f / f"{sketch_id}{s}" for f in folders for s in IMAGE_SUFFIXES])


def read_shared_layout(root: str | os.PathLike) -> DatasetLayout:
    """Reads the `../shared/data/*` layout (also written by the demo dataset).

    Args:
      root: the folder holding `classes/`, `models/` and `sketches/`.

    Returns:
      The dataset layout.
    """
    root = pathlib.Path(root)
    problems: list[tuple[str, str]] = []
    classes, shapes = _read_models(
        root / "classes" / "Model.cla", lambda i: [root / "models" / f"m{i}.off"], problems
    )
    ndjson_keys: dict[pathlib.Path, set[str]] = {}

    def locate(cls: str, sid: str):
        img = _image_in([root / "sketches" / cls], sid)
        if img is not None:
            return img, None
        nd = root / "sketches" / f"{cls}.ndjson"
        if nd.is_file():
            if nd not in ndjson_keys:  # read keys once per file (json-free scan is enough)
                ndjson_keys[nd] = _ndjson_keys(nd)
            if sid in ndjson_keys[nd]:
                return nd, sid
        return None

    sketches = []
    for split, fname in (("train", "Sketch_Train.cla"), ("test", "Sketch_Test.cla")):
        p = root / "classes" / fname
        sketches += _read_sketches(
            _read_sketch_cla(p, problems), split, classes, locate, problems, p
        )
    return DatasetLayout(root.name, classes, shapes, sketches, problems)


def _ndjson_keys(path: pathlib.Path) -> set[str]:
    import json

    keys = set()
    for ln in path.read_text(encoding="utf-8").splitlines():
        if ln.strip():
            try:
                keys.add(str(json.loads(ln)["key_id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # the builder reports malformed records when it reads them
    return keys


def _shrec_sketches(root: pathlib.Path, classes: list[str], problems: list, specs) -> list:
    """Sketches of the SHREC releases: `<folder>/<class>/<split>/<id>.png` (or without the
    split level) for each (split, folder, cla file) in `specs`."""
    sketches = []
    for split, folder, fname in specs:
        base = root / folder

        def locate(cls: str, sid: str, base=base, split=split):
            img = _image_in([base / cls / split, base / cls], sid)
            return None if img is None else (img, None)

        p = root / fname
        sketches += _read_sketches(
            _read_sketch_cla(p, problems), split, classes, locate, problems, p
        )
    return sketches


def read_shrec13_layout(root: str | os.PathLike) -> DatasetLayout:
    """Reads the official SHREC'13 sketch-track layout (see the module docstring)."""
    root = pathlib.Path(root)
    problems: list[tuple[str, str]] = []
    mdir = root / "SHREC13_SBR_TARGET_MODELS"
    classes, shapes = _read_models(
        root / "SHREC13_SBR_Model.cla",
        lambda i: [mdir / "models" / f"m{i}.off", mdir / f"m{i}.off"],
        problems,
    )
    sketches = _shrec_sketches(
        root,
        classes,
        problems,
        (
            ("train", "SHREC13_SBR_TRAINING_SKETCHES", "SHREC13_SBR_Sketch_Train.cla"),
            ("test", "SHREC13_SBR_TESTING_SKETCHES", "SHREC13_SBR_Sketch_Test.cla"),
        ),
    )
    return DatasetLayout("shrec13", classes, shapes, sketches, problems)


def read_shrec14_layout(root: str | os.PathLike) -> DatasetLayout:
    """Reads the official SHREC'14 sketch-track layout (see the module docstring)."""
    root = pathlib.Path(root)
    problems: list[tuple[str, str]] = []
    mdir = root / "SHREC14LSSTB_TARGET_MODELS"

    def model_paths(i: str) -> list[pathlib.Path]:
        padded = i.zfill(6) if i.isdigit() else i
        return [mdir / f"M{padded}.off", mdir / f"M{i}.off", mdir / f"m{i}.off"]

    classes, shapes = _read_models(root / "SHREC14_SBR_Model.cla", model_paths, problems)
    sketches = _shrec_sketches(
        root,
        classes,
        problems,
        (
            ("train", "SHREC14LSSTB_SKETCHES", "SHREC14_SBR_Sketch_Train.cla"),
            ("test", "SHREC14LSSTB_SKETCHES", "SHREC14_SBR_Sketch_Test.cla"),
        ),
    )
    return DatasetLayout("shrec14", classes, shapes, sketches, problems)


READERS = {
    "shared": read_shared_layout,
    "shrec13": read_shrec13_layout,
    "shrec14": read_shrec14_layout,
}


def detect_kind(root: str | os.PathLike) -> str:
    """Guesses the layout kind of a folder from the files present."""
    root = pathlib.Path(root)
    if (root / "SHREC13_SBR_Model.cla").exists():
        return "shrec13"
    if (root / "SHREC14_SBR_Model.cla").exists():
        return "shrec14"
    if (root / "classes" / "Model.cla").exists():
        return "shared"
    raise LayoutError(root, "no Model.cla / SHREC13_SBR_Model.cla / SHREC14_SBR_Model.cla found")


def read_layout(root: str | os.PathLike, kind: str = "auto") -> DatasetLayout:
    """Reads a dataset folder.

    Args:
      root: the dataset folder.
      kind: "shared", "shrec13", "shrec14" or "auto" (detected from the files present).

    Returns:
      The dataset layout, with skipped items in `problems`.

    Raises:
      LayoutError: missing folder or model class file; ClaError: broken model class file.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise LayoutError(root, "dataset folder not found")
    kind = detect_kind(root) if kind == "auto" else kind
    if kind not in READERS:
        raise LayoutError(root, f"unknown layout kind {kind!r}; choose from {sorted(READERS)}")
    return READERS[kind](root)
