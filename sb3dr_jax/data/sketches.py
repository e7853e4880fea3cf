"""Sketch readers: raster images (TU-Berlin, SHREC) and QuickDraw stroke records.

Every sketch leaves here as uint8 [S, S] with ink bright (255) on 0, cropped to its content,
padded to a square with a margin and resized; the same function serves training, evaluation
and the query API, so preprocessing cannot drift between them.
"""

from __future__ import annotations

import io
import json
import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from sb3dr_jax.data.errors import SketchError

MARGIN = 0.08  # fraction of the square side left empty around the content
INK_THRESHOLD = 32  # pixel value (ink-bright) above which a pixel counts as ink


def _to_ink_gray(img: Image.Image) -> np.ndarray:
    """Converts any PIL image to float ink-bright grey [H, W] in [0, 255]."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    gray = np.asarray(img.convert("L"), np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    # Paper is usually light: invert so ink is bright. A dark border means already inverted.
    return 255.0 - gray if np.median(border) > 127 else gray


def preprocess_sketch(img: np.ndarray, size: int = 128, *, source: str | None = None) -> np.ndarray:
    """Crops an ink-bright image to its content, pads it square with a margin and resizes it.

    Args:
      img: [H, W] ink-bright image (uint8 or float in [0, 255]).
      size: output side length.
      source: the file or id, for error messages.

    Returns:
      uint8 [size, size], ink bright on 0.

    Raises:
      SketchError: the image has no ink.
    """
    a = np.asarray(img, np.float32)
    ink = a > INK_THRESHOLD
    if not ink.any():
        raise SketchError(source, "blank sketch (no ink)")
    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = a.shape
    side = int(np.ceil(max(h, w) / (1 - 2 * MARGIN)))
    canvas = np.zeros((side, side), np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = a
    out = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.LANCZOS if side > size else Image.Resampling.BILINEAR
    )
    return np.asarray(out, np.uint8)


def load_sketch(src: str | os.PathLike | bytes | np.ndarray, *, size: int = 128) -> np.ndarray:
    """Loads a raster sketch from a path, encoded image bytes or an array.

    Args:
      src: PNG/JPEG path or bytes, or an array [H, W], [H, W, 1|3|4] (uint8 or float in
        [0, 1] or [0, 255]); dark-on-light or light-on-dark, detected from the border.
      size: output side length.

    Returns:
      uint8 [size, size], ink bright on 0.

    Raises:
      SketchError: unreadable, empty or blank input (the message names the file).
    """
    name = None
    if isinstance(src, np.ndarray):
        a = np.asarray(src)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
            raise SketchError(None, f"sketch array must be [H, W] or [H, W, 1|3|4], got {a.shape}")
        if a.dtype != np.uint8:
            a = a.astype(np.float32)
            if a.size and np.nanmax(a) <= 1.0:
                a = a * 255.0
            a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        img = Image.fromarray(a)
    else:
        if isinstance(src, (bytes, bytearray)):
            name, data = "<bytes>", bytes(src)
        else:
            name = os.fspath(src)
            try:
                data = pathlib.Path(name).read_bytes()
            except OSError as e:
                raise SketchError(name, f"cannot read: {e}") from None
        if not data:
            raise SketchError(name, "empty file")
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            raise SketchError(name, f"not a readable image: {type(e).__name__}: {e}") from None
    return preprocess_sketch(_to_ink_gray(img), size, source=name)


def read_quickdraw_ndjson(path: str | os.PathLike) -> dict[str, dict]:
    """Reads a QuickDraw `.ndjson` file (one JSON record per line).

    Args:
      path: the file.

    Returns:
      A map from `key_id` (string) to the record.

    Raises:
      SketchError: unreadable file, or a malformed line (named as `path:line`).
    """
    path = os.fspath(path)
    try:
        lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SketchError(path, f"cannot read: {e}") from None
    records: dict[str, dict] = {}
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            key = str(rec["key_id"])
            if not isinstance(rec["drawing"], list):
                raise TypeError("'drawing' is not a list")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SketchError(f"{path}:{n}", f"malformed QuickDraw record: {e}") from None
        records[key] = rec
    return records


def _strokes_xy(drawing: list, source: str | None) -> list[np.ndarray]:
    """Validates strokes in raw [x, y, t] or simplified [x, y] form; returns [n, 2] arrays."""
    strokes = []
    for i, stroke in enumerate(drawing):
        try:
            xy = np.asarray(stroke[:2], np.float64).T  # [n, 2]; drops t when present
        except (ValueError, TypeError, IndexError):
            raise SketchError(source, f"stroke {i} is not [[x...], [y...](, [t...])]") from None
        if xy.ndim != 2 or xy.shape[1] != 2 or not np.all(np.isfinite(xy)):
            raise SketchError(source, f"stroke {i} has malformed coordinates")
        if len(xy):
            strokes.append(xy)
    if not strokes:
        raise SketchError(source, "empty drawing (no points)")
    return strokes


def rasterize_strokes(
    drawing: list,
    *,
    size: int = 128,
    stroke_width: float = 3.0,
    source: str | None = None,
) -> np.ndarray:
    """Rasterises QuickDraw strokes with the same crop/pad rule as raster sketches.

    Args:
      drawing: list of strokes, each `[[x...], [y...]]` (simplified) or `[[x...], [y...], [t...]]`
        (raw).
      size: output side length.
      stroke_width: line width in output pixels.
      source: the record id or file, for error messages.

    Returns:
      uint8 [size, size], ink bright on 0.

    Raises:
      SketchError: empty or malformed drawing.
    """
    strokes = _strokes_xy(drawing, source)
    pts = np.concatenate(strokes)
    lo, hi = pts.min(0), pts.max(0)
    extent = max(float((hi - lo).max()), 1e-6)
    ss = 4  # draw at 4x and downsample for antialiased lines
    big = size * ss
    inner = big * (1 - 2 * MARGIN)
    offset = (big - (hi - lo) / extent * inner) / 2
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    width = max(int(round(stroke_width * ss)), 1)
    for xy in strokes:
        p = (xy - lo) / extent * inner + offset
        seq = [tuple(q) for q in p]
        if len(seq) == 1:
            r = width / 2
            draw.ellipse([seq[0][0] - r, seq[0][1] - r, seq[0][0] + r, seq[0][1] + r], fill=255)
        else:
            draw.line(seq, fill=255, width=width, joint="curve")
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), np.uint8)
