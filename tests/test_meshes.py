import numpy as np
import pytest
import trimesh

from sb3dr_jax.data.errors import MeshError
from sb3dr_jax.data.meshes import load_mesh


def test_every_tub16_mesh_loads_or_is_reported(tub16):
    loaded, reported = 0, []
    for f in sorted((tub16 / "models").glob("*.off")):
        try:
            m = load_mesh(f)
        except MeshError as e:
            assert str(f) in str(e)
            reported.append(str(e))
            continue
        loaded += 1
        r = np.linalg.norm(m.vertices, axis=1)
        assert r.max() == pytest.approx(1.0, abs=1e-6)
        assert len(m.faces) <= 20000
    assert loaded + len(reported) == 110
    assert loaded >= 100


def test_face_budget_decimates(tub16):
    big = max((tub16 / "models").glob("*.off"), key=lambda p: p.stat().st_size)
    m = load_mesh(big, max_faces=500)
    assert 0 < len(m.faces) <= 500
    assert np.ptp(m.vertices, axis=0).max() > 0.5  # the shape survived


@pytest.mark.parametrize("fmt", ["off", "obj", "ply", "stl"])
def test_formats(tmp_path, fmt):
    box = trimesh.creation.box(extents=(2, 1, 1))
    box.apply_translation((5, 5, 5))
    path = tmp_path / f"box.{fmt}"
    box.export(path)
    m = load_mesh(path)
    assert len(m.faces) == 12
    np.testing.assert_allclose(np.linalg.norm(m.vertices, axis=1).max(), 1.0, atol=1e-6)
    np.testing.assert_allclose((m.vertices.min(0) + m.vertices.max(0)) / 2, 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("OFF\n4 2 0\n0 0 0\n1 0 0\n", "truncated"),
        ("OFF\n3 1 0\n0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n", "non-finite"),
        ("OFF\n0 0 0\n", "empty"),
        ("", "empty"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "out-of-range"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n", "zero area"),
        ("PLY garbage", "not an OFF"),
        # the header counts 1 face, the file holds 2 (issue 19.5: was loaded half, silently)
        ("OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n", "more lines follow"),
    ],
)
def test_bad_meshes_raise_naming_the_file(tmp_path, text, reason):
    p = tmp_path / "bad.off"
    p.write_text(text)
    with pytest.raises(MeshError) as e:
        load_mesh(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_glued_header_and_polygons(tmp_path):
    p = tmp_path / "q.off"
    p.write_text("OFF4 1 0\n# a comment\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    assert len(load_mesh(p).faces) == 2  # the quad was fan-triangulated


def test_missing_file():
    with pytest.raises(MeshError, match="not found"):
        load_mesh("/nonexistent/m1.off")
