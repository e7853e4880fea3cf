import numpy as np
import pytest
import trimesh

from sb3dr_jax.data.meshes import load_mesh, normalize_mesh
from sb3dr_jax.data.render import RenderConfig, camera_directions, render_views


def _dilate(m):
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def _check_channels_agree(views):
    depth, shade, line = views[..., 0] > 0, views[..., 1] > 0, views[..., 2] > 0
    np.testing.assert_array_equal(depth, shade)  # same foreground
    for v in range(len(views)):
        fg = depth[v]
        boundary = fg & ~(
            np.roll(fg, 1, 0) & np.roll(fg, -1, 0) & np.roll(fg, 1, 1) & np.roll(fg, -1, 1)
        )
        # every silhouette pixel is drawn (within 1 px) and lines stay on the object
        assert np.all(_dilate(line[v])[boundary])
        assert np.all(_dilate(fg)[line[v]])


@pytest.mark.parametrize("shape", ["box", "sphere", "cylinder"])
def test_primitives(shape):
    mesh = {
        "box": trimesh.creation.box((1, 0.5, 0.8)),
        "sphere": trimesh.creation.icosphere(),
        "cylinder": trimesh.creation.cylinder(0.3, 1.0),
    }[shape]
    views = render_views(normalize_mesh(mesh), RenderConfig(num_views=4, resolution=48))
    assert views.shape == (4, 48, 48, 3) and views.dtype == np.uint8
    assert all(v.max() > 0 for v in views[..., 0])
    _check_channels_agree(views)


def test_box_creases_are_drawn_inside_the_silhouette():
    views = render_views(
        normalize_mesh(trimesh.creation.box((1, 1, 1))),
        RenderConfig(num_views=1, resolution=64, elevation=30),
    )
    fg, line = views[0, ..., 0] > 0, views[0, ..., 2] > 0
    interior = fg & ~_dilate(~fg)
    assert (line & interior).sum() > 20  # the cube's visible edges, not only its outline


def test_deterministic_and_nearer_is_brighter():
    m = normalize_mesh(trimesh.creation.box((1, 1, 1)))
    a = render_views(m, RenderConfig(num_views=3, resolution=32))
    np.testing.assert_array_equal(a, render_views(m, RenderConfig(num_views=3, resolution=32)))
    cfg = RenderConfig(num_views=1, resolution=32, elevation=0.0, channels=("depth",))
    sphere = render_views(normalize_mesh(trimesh.creation.icosphere(3)), cfg)[0, ..., 0]
    assert sphere[16, 16] > sphere[16, 3] > 0  # the centre faces the camera


def test_dodecahedron_and_config_errors():
    d = camera_directions(20, "dodecahedron")
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert len({tuple(np.round(x, 6)) for x in d}) == 20
    with pytest.raises(ValueError, match="channels"):
        RenderConfig(channels=("normals",))
    with pytest.raises(ValueError, match="20"):
        RenderConfig(layout="dodecahedron", num_views=12)


def test_psb_mesh_renders_in_all_channels(tub16):
    m = load_mesh(tub16 / "models" / "m1472.off")
    views = render_views(m, RenderConfig(num_views=12, resolution=64))
    assert views.shape == (12, 64, 64, 3)
    assert all((views[v, ..., c] > 0).sum() > 30 for v in range(12) for c in range(3))
    _check_channels_agree(views)
