import io

import numpy as np
import pytest
from PIL import Image

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
