"""A PNG contact sheet of a built dataset: views in every channel, and sketches, per class."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageDraw


def _tile(img: np.ndarray, size: int) -> Image.Image:
    # Display ink dark on white, as people draw; the records keep ink bright on 0.
    return Image.fromarray(255 - img).resize((size, size), Image.Resampling.NEAREST)


def contact_sheet(
    builder,
    path: str,
    *,
    classes: int = 12,
    views: tuple[int, ...] = (0, 3, 6),
    sketches: int = 3,
    tile: int = 64,
) -> str:
    """Writes a grid: one row per class: one shape's views per channel, then sample sketches.

    Args:
      builder: a prepared dataset.
      path: output PNG.
      classes: at most this many classes (rows).
      views: which view indices to show for every channel.
      sketches: sketches per class (from sketch_train).
      tile: tile size in pixels.

    Returns:
      The path.
    """
    meta = builder.info.metadata
    names, channels = list(meta["class_names"]), list(meta["render"]["channels"])
    shape_of, sketch_of = {}, {}
    for ex in tfds.as_numpy(builder.as_dataset(split="shapes")):
        shape_of.setdefault(int(ex["label"]), ex["views"])
    for ex in tfds.as_numpy(builder.as_dataset(split="sketch_train")):
        sketch_of.setdefault(int(ex["label"]), []).append(ex["image"][..., 0])
    rows = [c for c in range(len(names)) if c in shape_of][:classes]
    label_w, cols = 110, len(views) * len(channels) + sketches
    sheet = Image.new("L", (label_w + cols * (tile + 2), 18 + len(rows) * (tile + 2)), 255)
    draw = ImageDraw.Draw(sheet)
    headers = [f"{ch} v{v}" for ch in channels for v in views] + ["sketch"] * sketches
    for j, h in enumerate(headers):
        draw.text((label_w + j * (tile + 2) + 2, 3), h, fill=0)
    for i, c in enumerate(rows):
        y = 18 + i * (tile + 2)
        draw.text((4, y + tile // 2 - 6), names[c][:16], fill=0)
        tiles = [shape_of[c][v, ..., k] for k in range(len(channels)) for v in views]
        tiles += sketch_of.get(c, [])[:sketches]
        for j, t in enumerate(tiles):
            sheet.paste(_tile(t, tile), (label_w + j * (tile + 2), y))
    with epath.Path(path).open("wb") as f:  # beside the records, local or gs://
        sheet.save(f, format="PNG")
    return path
