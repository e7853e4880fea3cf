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
# Largest image read (width x height): 2^25 = 33.5 M pixels, an A4 page scanned at 600 dpi.
# Reading costs a few float32 copies of the image, so this caps a sketch at ~0.5 GB.
MAX_PIXELS = 1 << 25
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, PIL's RGB -> L conversion


def _pil_array(img: Image.Image) -> np.ndarray:
    """The decoded image as an array of its own sample type.

    Returns:
      [H, W] (modes 1, L, I;16*, I, F: bool, uint8, uint16, int32, float32), or uint8
      [H, W, 2|3|4] (grey + alpha, RGB, RGBA); every other mode (P, CMYK, YCbCr, LAB, ...)
      is converted by PIL to RGB, or RGBA when it carries transparency.
    """
    mode, transparent = img.mode, "transparency" in img.info
    if mode in ("1", "I", "F") or mode.startswith("I;16") or (mode == "L" and not transparent):
        return np.asarray(img)
    if mode in ("LA", "RGBA") or (mode == "RGB" and not transparent):
        return np.asarray(img)
    if mode in ("L", "La"):
        return np.asarray(img.convert("LA"))
    rgba = transparent or mode in ("PA", "RGBa") or mode.endswith("A")
    return np.asarray(img.convert("RGBA" if rgba else "RGB"))


def _unit_range(a: np.ndarray) -> np.ndarray:
    """Samples of one channel as float32 in [0, 1], by the sample type's own range.

    bool: {0, 1}; uint8: /255; 16-bit integers: / their maximum (65535 or 32767); wider
    integers (numpy's default int64, PIL's mode I) carry no bit depth of their own, so the
    smallest of 8 bits, 16 bits or the type's range that holds the largest value is taken;
    floats: [0, 1], or [0, 255] when a value exceeds 1 (NaN reads as 0). Negative values
    read as 0.
    """
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if a.dtype.itemsize == 1:
            top = 255.0 if info.max == 255 else float(info.max)
        elif a.dtype.itemsize == 2:
            top = float(info.max)
        else:
            hi = int(a.max(initial=0))
            top = 255.0 if hi <= 255 else 65535.0 if hi <= 65535 else float(info.max)
        out = a.astype(np.float32)
        out *= np.float32(1.0 / top)
    elif np.issubdtype(a.dtype, np.floating):
        out = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if out.size and out.max() > 1.0:
            out *= np.float32(1.0 / 255.0)
    else:
        raise TypeError(f"unsupported sample type {a.dtype}")
    return np.clip(out, 0.0, 1.0, out=out)


def _ink_gray(a: np.ndarray) -> np.ndarray:
    """Any image array -> float32 ink-bright grey [H, W] in [0, 255].

    Args:
      a: [H, W] or [H, W, 1|2|3|4] (grey, grey + alpha, RGB, RGBA) of any integer, bool or
        float type (see `_unit_range`); transparency is composited over white paper.

    Returns:
      float32 [H, W], ink bright: paper (light border) is inverted to 0.
    """
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        gray = _unit_range(a)
    else:
        colour = a[..., : 1 if a.shape[-1] == 2 else 3]
        if colour.shape[-1] == 1:
            gray = _unit_range(colour[..., 0])
        else:  # channel by channel: a few [H, W] float32 buffers, never [H, W, C]
            gray = np.zeros(a.shape[:2], np.float32)
            for c, w in enumerate(_LUMA):
                ch = _unit_range(colour[..., c])
                ch *= np.float32(w)
                gray += ch
        if a.shape[-1] in (2, 4):  # over white paper: v * alpha + (1 - alpha)
            alpha = _unit_range(a[..., -1])
            gray *= alpha
            gray += 1.0 - alpha
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    # Paper is usually light: invert so ink is bright. A dark border means already inverted.
    if np.median(border) > 0.5:
        np.subtract(1.0, gray, out=gray)
    gray *= np.float32(255.0)
    return gray


def _check_pixels(height: int, width: int, source: str | None) -> None:
    if height * width > MAX_PIXELS:
        raise SketchError(
            source,
            f"image of {width}x{height} = {height * width:,} pixels exceeds the limit of "
            f"{MAX_PIXELS:,} (sketches.MAX_PIXELS)",
        )


def _filter(x: np.ndarray, lanczos: bool) -> np.ndarray:
    """PIL's Lanczos-3 (windowed sinc) or bilinear (triangle) kernel."""
    if lanczos:
        return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
    return np.maximum(1.0 - np.abs(x), 0.0)


def _resample_matrix(side: int, size: int, lo: int, n: int, lanczos: bool) -> np.ndarray:
    """Weights [size, n] that resample a line of `side` samples to `size` samples, restricted
    to the samples [lo, lo + n) (the others are zero padding and contribute nothing).

    The weights are PIL's `resize` weights (filter support scaled by the shrink factor,
    normalised over the taps inside the line), so the result is the zero-padded square
    resized by PIL, without the square ever being built.
    """
    scale = side / size
    fscale = max(scale, 1.0)
    support = (3.0 if lanczos else 1.0) * fscale
    centre = (np.arange(size) + 0.5) * scale  # [size]
    xmin = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), side)
    taps = int(np.ceil(support)) * 2 + 1
    x = xmin[:, None] + np.arange(taps)[None]  # [size, taps]
    w = _filter((x - centre[:, None] + 0.5) / fscale, lanczos) * (x < xmax[:, None])
    total = w.sum(1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    inside = (x < xmax[:, None]) & (x >= lo) & (x < lo + n)
    m = np.zeros((size, n), np.float64)
    rows = np.broadcast_to(np.arange(size)[:, None], x.shape)
    np.add.at(m, (rows[inside], x[inside] - lo), w[inside])
    return m


def preprocess_sketch(img: np.ndarray, size: int = 128, *, source: str | None = None) -> np.ndarray:
    """Crops an ink-bright image to its content, pads it square with a margin and resizes it.

    The padded square is never built: resizing is separable, so the crop is resampled by two
    small weight matrices ([size, h] and [size, w]); memory and time grow with the input's
    pixel count and the output size, not with the square of the content's extent.

    Args:
      img: [H, W] ink-bright image (uint8 or float in [0, 255]).
      size: output side length.
      source: the file or id, for error messages.

    Returns:
      uint8 [size, size], ink bright on 0.

    Raises:
      SketchError: the image has no ink, or more than `MAX_PIXELS` pixels.
    """
    a = np.asarray(img)
    if a.ndim != 2 or a.size == 0:
        raise SketchError(source, f"sketch image must be a non-empty [H, W] array, got {a.shape}")
    _check_pixels(*a.shape, source)
    ink = a > INK_THRESHOLD
    if not ink.any():
        raise SketchError(source, "blank sketch (no ink)")
    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    del ink
    crop = np.clip(
        a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64, copy=False), 0, 255
    )
    h, w = crop.shape
    side = int(np.ceil(max(h, w) / (1 - 2 * MARGIN)))
    y0, x0 = (side - h) // 2, (side - w) // 2  # the crop's place in the padded square
    lanczos = side > size
    wy = _resample_matrix(side, size, y0, h, lanczos)  # [size, h]
    wx = _resample_matrix(side, size, x0, w, lanczos)  # [size, w]
    # Horizontal pass, then vertical, each rounded to 8 bits as PIL does (its rounding also
    # clips the Lanczos filter's ringing below 0 between the passes).
    rows8 = np.clip(np.floor(crop @ wx.T + 0.5), 0, 255)  # [h, size]
    return np.clip(np.floor(wy @ rows8 + 0.5), 0, 255).astype(np.uint8)


def load_sketch(src: str | os.PathLike | bytes | np.ndarray, *, size: int = 128) -> np.ndarray:
    """Loads a raster sketch from a path, encoded image bytes or an array.

    Every sample type reads like its 8-bit equivalent: 16-bit PNGs (PIL modes I;16, I), 32-bit
    float images (F), bilevel (1), palette, CMYK ... and integer, bool or float arrays (see
    `_unit_range`).

    Args:
      src: image path or bytes (any format PIL reads), or an array [H, W], [H, W, 1|2|3|4];
        dark-on-light or light-on-dark, detected from the border.
      size: output side length.

    Returns:
      uint8 [size, size], ink bright on 0.

    Raises:
      SketchError: unreadable, empty, blank or oversized input, or one that runs out of
        memory (the message names the file).
    """
    name = None
    try:
        if isinstance(src, np.ndarray):
            a = src[..., 0] if src.ndim == 3 and src.shape[-1] == 1 else src
            if (
                a.ndim not in (2, 3)
                or a.size == 0
                or (a.ndim == 3 and a.shape[-1] not in (2, 3, 4))
            ):
                raise SketchError(
                    None, f"sketch array must be [H, W] or [H, W, 1|2|3|4], got {src.shape}"
                )
            _check_pixels(a.shape[0], a.shape[1], None)
            try:
                gray = _ink_gray(a)
            except TypeError as e:
                raise SketchError(None, f"sketch array: {e}") from None
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
                _check_pixels(img.height, img.width, name)  # from the header, before decoding
                img.load()
                arr = _pil_array(img)
            except SketchError:
                raise
            except (MemoryError, Image.DecompressionBombError):
                raise
            except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
                raise SketchError(name, f"not a readable image: {type(e).__name__}: {e}") from None
            gray = _ink_gray(arr)
            del arr, img
        return preprocess_sketch(gray, size, source=name)
    except (MemoryError, Image.DecompressionBombError, OverflowError) as e:
        raise SketchError(name, f"too large to read: {type(e).__name__}: {e}") from None


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
