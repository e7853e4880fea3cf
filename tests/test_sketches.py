import io
import tracemalloc

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image

from sb3dr_jax.data import sketches
from sb3dr_jax.data.errors import SketchError
from sb3dr_jax.data.layouts import read_layout
from sb3dr_jax.data.sketches import load_sketch, rasterize_strokes, read_quickdraw_ndjson


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_paper_sketch_is_inverted_cropped_and_resized():
    a = np.full((200, 300), 255, np.uint8)
    a[50:60, 100:200] = 0  # a black bar on white paper
    out = load_sketch(_png(a), size=64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out.max() > 200 and out[0, 0] == 0  # ink bright, background 0
    cols = np.flatnonzero(out.max(0) > 32)
    assert cols.min() < 10 and cols.max() > 54  # cropped to content, padded with a margin


def test_array_bytes_and_path_agree(tmp_path):
    a = np.full((100, 100), 255, np.uint8)
    a[20:80, 48:52] = 0
    p = tmp_path / "s.png"
    Image.fromarray(a).save(p)
    ref = load_sketch(p, size=32)
    np.testing.assert_array_equal(ref, load_sketch(_png(a), size=32))
    np.testing.assert_array_equal(ref, load_sketch(a, size=32))
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[20:80, 48:52] = (0, 0, 0, 255)  # transparent background, opaque ink
    assert np.abs(load_sketch(rgba, size=32).astype(int) - ref).max() <= 1


@pytest.mark.parametrize(
    "data, reason", [(b"", "empty"), (b"not a png", "not a readable"), (None, "blank")]
)
def test_bad_input(tmp_path, data, reason):
    p = tmp_path / "bad.png"
    if data is None:
        Image.fromarray(np.full((50, 50), 255, np.uint8)).save(p)
    else:
        p.write_bytes(data)
    with pytest.raises(SketchError) as e:
        load_sketch(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_tub16_png_loads_ink_bright(tub16):
    item = read_layout(tub16).sketches[0]
    img = load_sketch(item.path, size=64)
    assert img[0, 0] == 0 and 0.02 < (img > 32).mean() < 0.5


def test_quickdraw_raw_and_simplified(qd90):
    layout = read_layout(qd90)
    forms = {}
    for item in layout.sketches:
        rec = read_quickdraw_ndjson(item.path)[item.ndjson_key]
        form = "raw" if len(rec["drawing"][0]) == 3 else "simplified"
        forms.setdefault(form, rec)
        if len(forms) == 2:
            break
    assert set(forms) == {"raw", "simplified"}
    imgs = {k: rasterize_strokes(r["drawing"], size=64, stroke_width=2.0) for k, r in forms.items()}
    for img in imgs.values():
        assert img.shape == (64, 64) and img[0, 0] == 0 and 0.02 < (img > 32).mean() < 0.6


def test_quickdraw_errors(tmp_path):
    p = tmp_path / "x.ndjson"
    p.write_text('{"key_id": "1", "drawing": [[[0, 1], [0, 1]]]}\n{broken\n')
    with pytest.raises(SketchError, match=f"{p}:2"):
        read_quickdraw_ndjson(p)
    with pytest.raises(SketchError, match="empty drawing"):
        rasterize_strokes([])
    with pytest.raises(SketchError, match="stroke 0"):
        rasterize_strokes([[[0, 1], [float("nan"), 2]]])


def _reference_8bit() -> np.ndarray:
    """Dark strokes on light paper, with grey levels (an 8-bit sketch)."""
    a = np.full((60, 90), 250, np.uint8)
    a[10:50, 20:24] = 0
    a[30:34, 10:80] = 90
    a[12:16, 40:70] = 160
    return a


def _encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_every_sample_type_reads_like_its_8bit_equivalent():
    """16-bit, 32-bit, float, bool, palette, CMYK ... read like the 8-bit image (issue 19.1)."""
    a8 = _reference_8bit()
    ref = load_sketch(a8, size=32)
    f = a8.astype(np.float64) / 255.0
    rgb = np.repeat(a8[..., None], 3, -1)
    variants = {
        "uint16 array": (a8.astype(np.uint16) * 257),
        "int16 array": np.round(f * 32767).astype(np.int16),
        "int32 array": a8.astype(np.int32),
        "int64 16-bit values": a8.astype(np.int64) * 257,
        "float32 [0, 1]": f.astype(np.float32),
        "float64 [0, 255]": a8.astype(np.float64),
        "RGB array": rgb,
        "RGBA array": np.concatenate([rgb, np.full(a8.shape + (1,), 255, np.uint8)], -1),
        "grey+alpha array": np.stack([a8, np.full_like(a8, 255)], -1),
        "I;16 PNG": _encoded(Image.fromarray(a8.astype(np.uint16) * 257)),
        "I TIFF": _encoded(Image.fromarray(a8.astype(np.int32) * 257), "TIFF"),
        "F TIFF": _encoded(Image.fromarray(f.astype(np.float32)), "TIFF"),
        "L PNG": _encoded(Image.fromarray(a8)),
        "LA PNG": _encoded(Image.fromarray(a8).convert("LA")),
        "P PNG": _encoded(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)),
        "RGB PNG": _encoded(Image.fromarray(rgb)),
        "RGBA PNG": _encoded(Image.fromarray(rgb).convert("RGBA")),
        "CMYK TIFF": _encoded(Image.fromarray(rgb).convert("CMYK"), "TIFF"),
    }
    for name, src in variants.items():
        out = load_sketch(src, size=32)
        assert out.shape == (32, 32) and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - ref).max() <= 2, name
    bw = a8 < 128  # bilevel: bool arrays and mode 1 read like 0/255
    ref_bw = load_sketch(np.where(bw, 0, 255).astype(np.uint8), size=32)
    np.testing.assert_array_equal(load_sketch(~bw, size=32), ref_bw)
    np.testing.assert_array_equal(load_sketch(_encoded(Image.fromarray(~bw)), size=32), ref_bw)


def test_16bit_png_of_the_issue_is_not_blank():
    a = np.full((64, 64), 65535, np.uint16)
    a[16:48, 30:34] = 7453
    out = load_sketch(_encoded(Image.fromarray(a)), size=32)
    assert out.max() > 200 and 0.02 < (out > 32).mean() < 0.5


def test_long_thin_sketch_costs_memory_of_its_pixels_not_its_square():
    """A 3 x 8000 line: the padded square would be 9524^2 floats (363 MB) (issue 19.2)."""
    a = np.full((8000, 3), 255, np.uint8)
    a[:, 1] = 0
    png = _encoded(Image.fromarray(a))
    tracemalloc.start()
    try:
        out = load_sketch(png, size=64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (64, 64)
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB"


def test_oversized_and_out_of_memory_images_are_sketch_errors(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    Image.new("L", (400, 300), 255).save(p)
    monkeypatch.setattr(sketches, "MAX_PIXELS", 100_000)
    with pytest.raises(SketchError, match="120,000 pixels exceeds") as e:
        load_sketch(p)
    assert str(p) in str(e.value)
    monkeypatch.setattr(sketches, "MAX_PIXELS", 1 << 25)

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 19.0 GiB")

    monkeypatch.setattr(sketches, "_resample_matrix", no_memory)
    a = np.full((50, 50), 255, np.uint8)
    a[10:40, 20:25] = 0
    Image.fromarray(a).save(p)
    with pytest.raises(SketchError, match="too large to read: MemoryError") as e:
        load_sketch(p)
    assert str(p) in str(e.value)


_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]
_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.float32]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    stretch=st.sampled_from([1, 1, 1, 50]),
    mode=st.sampled_from(_MODES),
    dtype=st.sampled_from(_DTYPES),
    channels=st.sampled_from([0, 1, 2, 3, 4]),
    as_file=st.booleans(),
    size=st.sampled_from([8, 32, 64]),
    seed=st.integers(0, 2**16),
)
def test_reader_property(h, w, stretch, mode, dtype, channels, as_file, size, seed):
    """Any shape, PIL mode or dtype: the configured size or a SketchError, in bounded memory."""
    rng = np.random.default_rng(seed)
    h = h * stretch  # long thin images too
    shape = (h, w) if channels == 0 else (h, w, channels)
    if np.issubdtype(dtype, np.floating):
        a = rng.uniform(0, 1, shape).astype(dtype)
    elif dtype == np.bool_:
        a = rng.uniform(size=shape) < 0.5
    else:
        info = np.iinfo(dtype)
        a = rng.integers(max(info.min, -1000), min(info.max, 70000), shape, endpoint=True)
        a = a.astype(dtype)
    src = a
    if as_file:
        img = Image.fromarray(
            (np.asarray(a, np.float64) % 256).astype(np.uint8).reshape(h, w, -1)[..., 0]
        )
        try:
            img = img.convert(mode)
        except ValueError:
            img = img.convert("L")
        fmt = {"CMYK": "TIFF", "F": "TIFF", "I": "TIFF", "YCbCr": "JPEG"}.get(img.mode, "PNG")
        src = _encoded(img, fmt)
    tracemalloc.start()
    try:
        out = load_sketch(src, size=size)
        assert out.shape == (size, size) and out.dtype == np.uint8
    except SketchError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # A few float copies of the input plus the [size, h] / [size, w] weights and the output.
    bound = 64 * h * w * max(channels, 1) + 64 * size * (h + w + size) + 2e6
    assert peak < bound, (peak, bound)
