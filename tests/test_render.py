import chex
import numpy as np
import pytest
import trimesh
from scipy import ndimage

from sb3dr_jax.data import render
from sb3dr_jax.data.errors import MeshError
from sb3dr_jax.data.meshes import load_mesh, normalize_mesh
from sb3dr_jax.data.render import (
    RenderConfig,
    camera_directions,
    render_from_directions,
    render_views,
    resolve_backend,
)

BACKENDS = ["raster"] + (["embree"] if render.has_embree() else [])


def _dilate(m: np.ndarray) -> np.ndarray:
    """3x3 dilation of one [H, W] mask (no wrap-around at the border)."""
    return ndimage.binary_dilation(m, np.ones((3, 3), bool))


def _boundary(fg: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour (outside the image counts as background)."""
    return fg & ~ndimage.binary_erosion(fg, border_value=0)


def _check_channels_agree(views: np.ndarray) -> None:
    depth, shade, line = views[..., 0] > 0, views[..., 1] > 0, views[..., 2] > 0
    np.testing.assert_array_equal(depth, shade)  # same foreground
    for v in range(len(views)):
        fg = depth[v]
        # Every silhouette pixel is covered by a line within 1 px, and lines stay on the object.
        assert np.all(_dilate(line[v])[_boundary(fg)])
        assert np.all(fg[line[v]])


def _primitive(shape: str) -> trimesh.Trimesh:
    return normalize_mesh(
        {
            "box": trimesh.creation.box((1, 0.5, 0.8)),
            "sphere": trimesh.creation.icosphere(),
            "cylinder": trimesh.creation.cylinder(0.3, 1.0),
        }[shape]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ["box", "sphere", "cylinder"])
def test_primitives_render_and_channels_agree(shape, backend):
    views = render_views(
        _primitive(shape), RenderConfig(num_views=4, resolution=48, backend=backend)
    )
    chex.assert_shape(views, (4, 48, 48, 3))
    assert views.dtype == np.uint8
    assert all((views[v, ..., c] > 0).sum() > 20 for v in range(4) for c in range(3))
    _check_channels_agree(views)


@pytest.mark.parametrize("backend", BACKENDS)
def test_surface_has_no_holes_and_the_right_size(backend):
    # A coarse sphere has large triangles: any crack between them would be a hole.
    r = 64
    cfg = RenderConfig(num_views=6, resolution=r, channels=("depth",), backend=backend)
    fg = render_views(normalize_mesh(trimesh.creation.icosphere(1)), cfg)[..., 0] > 0
    for v in range(6):
        np.testing.assert_array_equal(fg[v], ndimage.binary_fill_holes(fg[v]))
        # The unit sphere spans the frame: its silhouette is (nearly) the inscribed disc.
        assert 0.85 * np.pi * r * r / 4 < fg[v].sum() < np.pi * r * r / 4 * 1.01


def test_box_creases_are_drawn_inside_the_silhouette():
    views = render_views(
        normalize_mesh(trimesh.creation.box((1, 1, 1))),
        RenderConfig(num_views=1, resolution=64, elevation=30),
    )
    fg, line = views[0, ..., 0] > 0, views[0, ..., 2] > 0
    interior = fg & ~_dilate(~fg)
    assert (line & interior).sum() > 20  # the cube's visible edges, not only its outline
    # A smooth sphere has no creases: its lines hug the outline (the rim's grazing depth steps
    # may add a pixel), the rest of the disc stays blank.
    sphere = render_views(
        trimesh.creation.icosphere(3, radius=0.8), RenderConfig(num_views=2, resolution=64)
    )
    for v in sphere:
        fg, line = v[..., 0] > 0, v[..., 2] > 0
        assert ndimage.distance_transform_edt(fg)[line].max() <= 2.5


def test_hidden_edges_are_not_drawn():
    # A small box behind a large slab: seen from +z its outline is hidden, from -z it shows.
    big = trimesh.creation.box((1.0, 1.0, 0.2))
    small = trimesh.creation.box((0.3, 0.3, 0.3))
    small.apply_translation((0, 0, -0.6))
    mesh = normalize_mesh(trimesh.util.concatenate([big, small]))
    cfg = RenderConfig(resolution=64, channels=("line",))
    front, back = render_from_directions(mesh, [[0, 0, 1], [0, 0, -1]], cfg)[..., 0] > 0
    # The small box projects around the image centre; the slab's outline is far from it.
    assert not front[22:42, 22:42].any()
    assert back[22:42, 22:42].sum() > 20
    assert front.sum() > 50  # the slab's outline itself is drawn


def test_orientation_y_up_and_x_right():
    # An upward cone seen from the default first ring camera (+z, 30 deg up).
    cone = normalize_mesh(trimesh.creation.cone(0.5, 1.5))
    cone.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    fg = render_views(cone, RenderConfig(num_views=1, resolution=64))[0, ..., 0] > 0
    rows = np.flatnonzero(fg.any(1))
    top, bottom = fg[rows[2]].sum(), fg[rows[-3]].sum()
    assert top < bottom  # the apex is at the top of the image
    box = trimesh.creation.box((0.2, 0.2, 0.2))
    box.apply_translation((0.7, 0, 0))
    both = normalize_mesh(trimesh.util.concatenate([box, trimesh.creation.icosphere(1, 0.1)]))
    fg = render_from_directions(both, [[0, 0, 1]], RenderConfig(resolution=64))[0, ..., 0] > 0
    assert fg[:, 40:].sum() > fg[:, :24].sum()  # +x lies to the right


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_and_nearer_is_brighter(backend):
    m = normalize_mesh(trimesh.creation.box((1, 1, 1)))
    cfg = RenderConfig(num_views=3, resolution=32, backend=backend)
    np.testing.assert_array_equal(render_views(m, cfg), render_views(m, cfg))
    cfg = RenderConfig(
        num_views=1, resolution=32, elevation=0.0, channels=("depth",), backend=backend
    )
    sphere = render_views(normalize_mesh(trimesh.creation.icosphere(3)), cfg)[0, ..., 0]
    assert sphere[16, 16] > sphere[16, 3] > 0  # the centre faces the camera


def test_rasteriser_chunking_does_not_change_the_result(monkeypatch):
    m = normalize_mesh(trimesh.creation.icosphere(2))
    dirs = camera_directions(3)
    tri, dist = render._rasterize(m, dirs, 40)
    monkeypatch.setattr(render, "_MAX_CANDIDATES", 97)  # many small chunks
    tri_c, dist_c = render._rasterize(m, dirs, 40)
    np.testing.assert_array_equal(tri, tri_c)
    np.testing.assert_array_equal(dist, dist_c)


@pytest.mark.skipif(not render.has_embree(), reason="embreex not installed")
def test_raster_matches_ray_casting():
    m = normalize_mesh(trimesh.creation.cylinder(0.4, 1.2, sections=12))
    dirs = camera_directions(5, elevation=20.0)
    tri_r, dist_r = render._rasterize(m, dirs, 48)
    tri_e, dist_e = render._cast(m, dirs, 48)
    assert ((tri_r >= 0) != (tri_e >= 0)).mean() < 1e-3
    both = (tri_r >= 0) & (tri_e >= 0)
    np.testing.assert_allclose(dist_r[both], dist_e[both], atol=1e-4)
    assert (tri_r[both] == tri_e[both]).mean() > 0.99  # pixels on shared edges may differ


def test_dodecahedron_and_config_errors():
    d = camera_directions(20, "dodecahedron")
    chex.assert_shape(d, (20, 3))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert len({tuple(np.round(x, 6)) for x in d}) == 20
    ring = camera_directions(12)
    np.testing.assert_allclose(ring[:, 1], np.sin(np.deg2rad(30.0)))
    views = render_views(
        normalize_mesh(trimesh.creation.box((1, 0.6, 0.3))),
        RenderConfig(num_views=20, layout="dodecahedron", resolution=16, channels=("depth",)),
    )
    chex.assert_shape(views, (20, 16, 16, 1))
    with pytest.raises(ValueError, match="channels"):
        RenderConfig(channels=("normals",))
    with pytest.raises(ValueError, match="20"):
        RenderConfig(layout="dodecahedron", num_views=12)
    with pytest.raises(ValueError, match="backend"):
        RenderConfig(backend="opengl")
    assert resolve_backend("raster") == "raster"
    assert resolve_backend("auto") in ("raster", "embree")


def test_bad_meshes_raise_mesh_error():
    with pytest.raises(MeshError, match="no triangles"):
        render_views(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), np.int64)))
    with pytest.raises(MeshError, match="unit sphere"):
        render_views(trimesh.creation.box((4, 4, 4)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_psb_mesh_renders_in_all_channels(tub16, backend):
    m = load_mesh(tub16 / "models" / "m1472.off")
    views = render_views(m, RenderConfig(num_views=12, resolution=64, backend=backend))
    chex.assert_shape(views, (12, 64, 64, 3))
    assert all((views[v, ..., c] > 0).sum() > 30 for v in range(12) for c in range(3))
    _check_channels_agree(views)
