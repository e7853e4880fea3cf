"""The per-item work of a dataset build, shared by the in-process and the Apache Beam builds.

A build turns each listed item into an `Outcome`: a rendered mesh or a rasterised sketch, or a
reason it was skipped (`DataError`), or "left out" (a sketch whose class has no target model).
Everything between the item list and the records, the index of each kept record and the skip
report included, is derived here from the outcomes alone, never from the order in which they
were produced:

- a record's `index` is its item's position in the split's item list minus the number of
  items before it that produced no record (`record_index`), so records are numbered 0..N-1 in
  list order however many workers rendered them, and in whatever order;
- a split's report entries (`stage_report`) are its skipped items in list order, then one entry
  per class (shapes: every class with no loaded model; sketches: every class whose sketches
  were left out, in the order its first such sketch is listed).

`tfds_builders` runs these functions in its generator; `beam_build` runs the same functions in
Beam transforms. Neither has a copy of them, so the two builds cannot drift apart. This module
imports neither TensorFlow nor Beam: Beam workers import it to do the work.
"""

from __future__ import annotations

import bisect
import dataclasses
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from sb3dr_jax.data.errors import DataError
from sb3dr_jax.data.layouts import ShapeItem, SketchItem
from sb3dr_jax.data.meshes import load_mesh
from sb3dr_jax.data.render import RenderConfig, render_views
from sb3dr_jax.data.sketches import load_sketch, rasterize_strokes, read_quickdraw_ndjson

# QuickDraw `.ndjson` files already parsed, by path (one per worker or in-process build).
NdjsonCache = dict[pathlib.Path, dict]


@dataclasses.dataclass(frozen=True)
class ItemSettings:
    """Everything the per-item work needs (small and picklable: Beam ships it to workers).

    Attributes:
      render: views, resolution, channels.
      max_faces: meshes with more faces are decimated.
      sketch_size: side of the stored sketch.
      stroke_width: QuickDraw stroke width in pixels (at `sketch_size`).
      classes: class names in label order (the model `.cla`).
    """

    render: RenderConfig
    max_faces: int
    sketch_size: int
    stroke_width: float
    classes: tuple[str, ...]

    def label(self, class_name: str) -> int:
        """Returns the integer label of a class name."""
        return self.classes.index(class_name)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one item.

    Attributes:
      stage: "shapes", "sketch_train" or "sketch_test" (the split, and the report's stage).
      position: the item's position in its split's item list.
      key: the record key and `id` (model id or sketch id).
      label: integer label.
      data: views uint8 [V, H, W, C] or sketch uint8 [S, S, 1]; None when no record is made.
      skip: the report entry of a skipped item, else None.
      left_out: True for a sketch left out because its class has no target model.
    """

    stage: str
    position: int
    key: str
    label: int
    data: np.ndarray | None = None
    skip: dict | None = None
    left_out: bool = False

    @property
    def is_record(self) -> bool:
        """Whether this outcome becomes a record."""
        return self.data is not None

    def without_data(self) -> Outcome:
        """The outcome less its pixels (what the report needs)."""
        return dataclasses.replace(self, data=None)


def _skip_entry(item: str, err: DataError, stage: str) -> dict:
    return {"item": item, "path": err.path, "reason": err.reason, "stage": stage}


def shape_outcome(position: int, item: ShapeItem, settings: ItemSettings) -> Outcome:
    """Loads and renders one target model; a `DataError` becomes a skip.

    Args:
      position: the item's position in the shapes list.
      item: the model.
      settings: render settings.

    Returns:
      The outcome (views uint8 [V, H, W, C], or the skip entry).
    """
    label = settings.label(item.label)
    try:
        views = render_views(load_mesh(item.path, max_faces=settings.max_faces), settings.render)
    except DataError as e:
        skip = _skip_entry(f"model {item.model_id}", e, "shapes")
        return Outcome("shapes", position, item.model_id, label, skip=skip)
    return Outcome("shapes", position, item.model_id, label, data=views)


def sketch_outcome(
    position: int,
    item: SketchItem,
    settings: ItemSettings,
    has_target: bool,
    ndjson: NdjsonCache,
) -> Outcome:
    """Reads and rasterises one sketch; a `DataError` becomes a skip.

    Args:
      position: the item's position in its sketch split's list.
      item: the sketch (a raster file or one QuickDraw record).
      settings: sketch size and stroke width.
      has_target: whether a target model of the sketch's class loaded; if not, the sketch is
        left out unread (nothing to retrieve for it).
      ndjson: parsed `.ndjson` files by path; filled on first use of a file.

    Returns:
      The outcome (sketch uint8 [S, S, 1], the skip entry, or left out).
    """
    stage = f"sketch_{item.split}"
    label = settings.label(item.label)
    if not has_target:
        return Outcome(stage, position, item.sketch_id, label, left_out=True)
    try:
        if item.ndjson_key is None:
            img = load_sketch(item.path, size=settings.sketch_size)
        else:
            if item.path not in ndjson:
                ndjson[item.path] = read_quickdraw_ndjson(item.path)
            img = rasterize_strokes(
                ndjson[item.path][item.ndjson_key]["drawing"],
                size=settings.sketch_size,
                stroke_width=settings.stroke_width,
                source=f"{item.path}#{item.ndjson_key}",
            )
    except DataError as e:
        skip = _skip_entry(f"{item.split} sketch {item.sketch_id}", e, stage)
        return Outcome(stage, position, item.sketch_id, label, skip=skip)
    return Outcome(stage, position, item.sketch_id, label, data=img[..., None])


def record_index(position: int, dropped: Sequence[int]) -> int:
    """The `index` of a kept item: its position less the dropped items listed before it.

    Args:
      position: the kept item's position in its split's list.
      dropped: positions of the items of the split that made no record, sorted.

    Returns:
      The record's index, in [0, number of records).
    """
    return position - bisect.bisect_left(dropped, position)


def to_record(outcome: Outcome, index: int, settings: ItemSettings) -> tuple[str, dict]:
    """The (key, example) TFDS writes for a kept item.

    Both splits share one feature spec, so a shape record carries an empty sketch
    (uint8 [0, S, 1]) and a sketch record empty views (uint8 [0, H, W, C]).

    Args:
      outcome: a kept item's outcome (`is_record`).
      index: its `record_index`.
      settings: the sizes of the empty tensors.

    Returns:
      (key, example dict).
    """
    r = settings.render
    empty = {
        "views": np.zeros((0, r.resolution, r.resolution, len(r.channels)), np.uint8),
        "image": np.zeros((0, settings.sketch_size, 1), np.uint8),
    }
    field = "views" if outcome.stage == "shapes" else "image"
    return outcome.key, {
        **empty,
        field: outcome.data,
        "id": outcome.key,
        "label": outcome.label,
        "index": index,
    }


def class_counts(labels: Iterable[int], num_classes: int) -> list[int]:
    """Records per class from the labels of the kept shapes.

    Args:
      labels: one label per kept shape.
      num_classes: number of classes.

    Returns:
      [num_classes] counts.
    """
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    return counts


def stage_report(
    stage: str, dropped: Iterable[Outcome], settings: ItemSettings, shape_counts: Sequence[int]
) -> list[dict]:
    """A split's entries of the build report, from its outcomes that made no record.

    Args:
      stage: "shapes", "sketch_train" or "sketch_test".
      dropped: the split's skipped and left-out outcomes, in any order.
      settings: the class names.
      shape_counts: kept shapes per class (for the shapes split's "no target model" entries).

    Returns:
      Report entries: skipped items in list order, then the per-class entries.
    """
    dropped = sorted(dropped, key=lambda o: o.position)
    entries = [o.skip for o in dropped if o.skip is not None]
    if stage == "shapes":
        for name, n in zip(settings.classes, shape_counts):
            if n == 0:
                entries.append(
                    {
                        "item": f"class {name}",
                        "path": None,
                        "reason": "no target model of this class loaded: its sketches are "
                        "left out (nothing to retrieve for them)",
                        "stage": "shapes",
                    }
                )
        return entries
    left_out: dict[str, int] = {}  # class -> sketches left out, in order of first listing
    for o in dropped:
        if o.left_out:
            name = settings.classes[o.label]
            left_out[name] = left_out.get(name, 0) + 1
    split = stage.removeprefix("sketch_")
    for name, n in left_out.items():
        entries.append(
            {
                "item": f"{split} sketches of class {name}",
                "path": None,
                "reason": f"{n} sketches left out: class {name!r} has no target model",
                "stage": stage,
            }
        )
    return entries
