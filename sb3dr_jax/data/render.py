"""Multi-view renderer: depth, Lambert shading and line drawings of a normalised mesh.

Orthographic cameras on a ring (default: 12 views at 30 degrees elevation, y up) or at the 20
vertices of a dodecahedron look at the origin; the image spans the unit sphere, so a mesh from
`load_mesh` always fits. Per pixel centre the renderer finds the nearest triangle and its
distance from the camera plane (two interchangeable backends, below). From those buffers:

- `depth`: 0 background; the surface maps distance 1 (nearest possible point of the unit
  sphere) to 255 and distance 3 (farthest) to 1, so nearer is brighter.
- `shade`: two-sided Lambert shading with a light slightly above-left of the camera (a
  headlight that moves with it), 1..255 on the surface, 0 background.
- `line`: the modality closest to a sketch, 255 on 0: silhouette (foreground next to
  background), occluding contours (depth jumps between neighbouring pixels, where a surface
  folds away from the viewer in front of another) and creases (neighbouring pixels on faces
  whose normals differ by more than `crease_deg`). Lines are found in image space from the
  visible-surface buffers, so every line is visible by construction (hidden edges never reach a
  pixel: the depth test is the z-buffer itself); they are 1-2 px wide.

Backends (`RenderConfig.backend`):
- `raster`: a vectorised numpy triangle rasteriser. All (view, face) pairs are projected at
  once; each face enumerates the pixel centres of its bounding box, keeps those inside it by
  barycentric (edge-function) tests with a tiny tolerance (so shared edges leave no cracks),
  and a z-buffer keeps the nearest with `np.minimum.at` (ties go to the lower face index:
  deterministic). Work is chunked to bound memory on meshes with large faces.
- `embree`: trimesh ray casting with Embree (`trimesh.ray.ray_pyembree`), all V*H*W rays in one
  batch; needs the `embreex` package.

Both produce the same per-pixel buffers: on 20 PSB meshes of tub16-psb-dev (12 views, 128 px)
the foreground and line masks of the two are identical, 99.9997% of the pixels see the same
triangle and depths differ by < 3e-7 (Embree works in float32); so neither has holes or ragged
silhouettes. A point splat (~860 views/s vs ~430 for ray casting in the foundation
measurements) was rejected on quality: pin holes on large triangles and ragged silhouettes,
which the line channel turns into false strokes.

Throughput, `benchmarks/render.py` (40 PSB meshes, mean 6530 faces, 12 views, all three channels,
one core of a shared 2-core CPU, two runs): embree 750 / 730 views/s at 64 px and 255 / 267 at
128 px; raster 590 / 556 at 64 px and 215 / 247 at 128 px. `auto` therefore picks Embree when it
is importable and the rasteriser otherwise: trimesh's pure-numpy ray intersector is no
fallback (0.18 views/s on a 9114-face PSB mesh at 64 px, against 327 for the rasteriser).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import trimesh

from sb3dr_jax.data.errors import MeshError

CHANNELS = ("depth", "shade", "line")
BACKENDS = ("auto", "raster", "embree")
# Candidate pixels processed at once by the rasteriser (~100 MB of temporaries per chunk).
_MAX_CANDIDATES = 1 << 22


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """How to render the views of one mesh.

    Attributes:
      num_views: number of cameras (must be 20 for the dodecahedron layout).
      resolution: image side length in pixels.
      layout: "ring" (equal azimuth steps at `elevation`) or "dodecahedron" (20 views).
      elevation: ring elevation in degrees above the xz plane (y is up).
      channels: any non-empty subset of ("depth", "shade", "line"), in output order.
      crease_deg: dihedral angle above which a crease is drawn in the line channel.
      line_width: line thickness in pixels (1 = the 1-2 px raw lines; n dilates by n - 1).
      backend: "auto" (Embree when importable, else the rasteriser), "raster" or "embree".
    """

    num_views: int = 12
    resolution: int = 128
    layout: str = "ring"
    elevation: float = 30.0
    channels: tuple[str, ...] = CHANNELS
    crease_deg: float = 60.0
    line_width: int = 1
    backend: str = "auto"

    def __post_init__(self):
        bad = [c for c in self.channels if c not in CHANNELS]
        if bad or not self.channels:
            raise ValueError(f"RenderConfig.channels: unknown {bad}; choose from {CHANNELS}")
        if self.layout not in ("ring", "dodecahedron"):
            raise ValueError(f"RenderConfig.layout must be 'ring' or 'dodecahedron': {self.layout}")
        if self.layout == "dodecahedron" and self.num_views != 20:
            raise ValueError("RenderConfig.num_views must be 20 for the dodecahedron layout")
        if self.num_views < 1 or self.resolution < 8:
            raise ValueError("RenderConfig: num_views >= 1 and resolution >= 8 required")
        if self.backend not in BACKENDS:
            raise ValueError(f"RenderConfig.backend must be one of {BACKENDS}: {self.backend!r}")
        if self.line_width < 1 or not 0.0 < self.crease_deg < 180.0:
            raise ValueError("RenderConfig: line_width >= 1 and 0 < crease_deg < 180 required")


def camera_directions(num_views: int, layout: str = "ring", elevation: float = 30.0) -> np.ndarray:
    """Unit vectors from the origin towards each camera.

    Args:
      num_views: number of views (20 for the dodecahedron).
      layout: "ring" (equal azimuth steps at `elevation`, starting on +z) or "dodecahedron".
      elevation: ring elevation in degrees above the xz plane (y is up).

    Returns:
      [V, 3] float64 unit vectors.
    """
    if layout == "ring":
        az = 2 * np.pi * np.arange(num_views) / num_views
        el = np.deg2rad(elevation)
        d = np.stack(
            [np.cos(el) * np.sin(az), np.full_like(az, np.sin(el)), np.cos(el) * np.cos(az)], 1
        )
    elif layout == "dodecahedron":
        if num_views != 20:
            raise ValueError("the dodecahedron layout has exactly 20 views")
        phi = (1 + 5**0.5) / 2
        pts = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
        for a in (-1, 1):
            for b in (-1, 1):
                pts += [(0, a / phi, b * phi), (a / phi, b * phi, 0), (a * phi, 0, b / phi)]
        d = np.asarray(pts, np.float64)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _camera_frames(dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and up vectors per camera (world y up; a camera on the pole uses -z as up)."""
    up = np.tile([0.0, 1.0, 0.0], (len(dirs), 1))
    polar = np.abs(dirs @ np.array([0.0, 1.0, 0.0])) > 0.999
    up[polar] = [0.0, 0.0, -1.0]
    right = np.cross(up, dirs)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    true_up = np.cross(dirs, right)
    return right, true_up


@functools.cache
def has_embree() -> bool:
    """Returns whether Embree ray casting (trimesh + embreex) is importable."""
    try:
        import trimesh.ray.ray_pyembree  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - any import failure means: no Embree
        return False


def resolve_backend(backend: str) -> str:
    """Maps "auto" to the backend actually used ("embree" when importable, else "raster").

    Args:
      backend: a `RenderConfig.backend` value.

    Returns:
      "raster" or "embree".
    """
    if backend == "auto":
        return "embree" if has_embree() else "raster"
    return backend


def _cast(mesh: trimesh.Trimesh, dirs: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray casts every pixel centre; returns (triangle id or -1, distance), [V, r, r] each."""
    v = len(dirs)
    right, up = _camera_frames(dirs)
    # Pixel centres in [-1, 1]; row 0 is the top of the image.
    s = (np.arange(r) + 0.5) / r * 2 - 1
    xs, ys = np.meshgrid(s, -s)
    origins = (
        2.0 * dirs[:, None, None, :]
        + xs[None, :, :, None] * right[:, None, None, :]
        + ys[None, :, :, None] * up[:, None, None, :]
    ).reshape(-1, 3)  # [V*H*W, 3]
    ray_dirs = np.repeat(-dirs, r * r, axis=0)
    if not has_embree():
        raise RuntimeError("render backend 'embree' needs the embreex package; use 'raster'")
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    tri, ray, loc = RayMeshIntersector(mesh).intersects_id(
        origins, ray_dirs, multiple_hits=False, return_locations=True
    )
    tri_id = np.full(v * r * r, -1, np.int64)
    dist = np.full(v * r * r, np.inf)
    tri_id[ray] = tri
    dist[ray] = np.einsum("ij,ij->i", loc - origins[ray], ray_dirs[ray])
    return tri_id.reshape(v, r, r), dist.reshape(v, r, r)


def _project(
    verts: np.ndarray, faces: np.ndarray, dirs: np.ndarray, r: int
) -> tuple[np.ndarray, ...]:
    """Screen-space corners of every (view, face): (x [V, F, 3], y [V, F, 3], z [V, F, 3]).

    x is the column and y the row coordinate, with pixel centres at integers (the same centres
    as `_cast`); z is the distance from the camera plane at 2 along the view direction.
    """
    right, up = _camera_frames(dirs)
    # einsum, not `@`: these skinny products would wake the BLAS thread pool, which then spins
    # on every core (costly when several render workers share a machine).
    sx = np.einsum("vc,nc->vn", right, verts) * (r / 2) + (r / 2 - 0.5)  # [V, N]
    sy = np.einsum("vc,nc->vn", up, verts) * (-r / 2) + (r / 2 - 0.5)  # rows grow downwards
    sz = 2.0 - np.einsum("vc,nc->vn", dirs, verts)
    return sx[:, faces], sy[:, faces], sz[:, faces]  # [V, F, 3] each


def _face_setup(x: np.ndarray, y: np.ndarray, z: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """Per (view, face) pair covering at least one pixel centre: bounding box and the affine
    maps (col, row) -> barycentric weight of corners 0 and 1 and -> depth, as [3] coefficients.
    """
    x0 = np.ceil(x.min(-1) - 1e-6).clip(0, r).astype(np.int64)  # [V, F]
    x1 = np.floor(x.max(-1) + 1e-6).clip(-1, r - 1).astype(np.int64)
    y0 = np.ceil(y.min(-1) - 1e-6).clip(0, r).astype(np.int64)
    y1 = np.floor(y.max(-1) + 1e-6).clip(-1, r - 1).astype(np.int64)
    area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (
        y[..., 1] - y[..., 0]
    )
    # Edge-on faces cover no area in an orthographic view; their neighbours cover the pixels.
    item = np.flatnonzero((x1 >= x0) & (y1 >= y0) & (np.abs(area) > 1e-12))  # view-major order
    ax, bx, cx = (x[..., k].reshape(-1)[item] for k in range(3))
    ay, by, cy = (y[..., k].reshape(-1)[item] for k in range(3))
    za, zb, zc = (z[..., k].reshape(-1)[item] for k in range(3))
    inv = 1.0 / area.reshape(-1)[item]
    ka = np.stack([(by - cy) * inv, (cx - bx) * inv, (bx * cy - by * cx) * inv])  # [3, I]
    kb = np.stack([(cy - ay) * inv, (ax - cx) * inv, (cx * ay - cy * ax) * inv])
    kz = ka * (za - zc) + kb * (zb - zc)  # depth is affine in screen space (orthographic)
    kz[2] += zc
    x0, y0 = x0.reshape(-1)[item], y0.reshape(-1)[item]
    w = x1.reshape(-1)[item] - x0 + 1
    h = y1.reshape(-1)[item] - y0 + 1
    view, face = np.divmod(item, x.shape[1])
    return dict(view=view, face=face, x0=x0, y0=y0, w=w, count=w * h, ka=ka, kb=kb, kz=kz)


def _raster_chunk(s: dict, lo: int, hi: int, r: int, zbuf: np.ndarray, ibuf: np.ndarray):
    """Rasterises items [lo, hi) of `_face_setup` into the flat z-buffer (in place)."""
    c = s["count"][lo:hi]
    rep = np.repeat(np.arange(lo, hi), c)  # item of each candidate pixel
    off = np.arange(len(rep)) - np.repeat(np.cumsum(c) - c, c)  # position in its bounding box
    w = s["w"][rep]
    col, row = s["x0"][rep] + off % w, s["y0"][rep] + off // w
    ka, kb = s["ka"][:, rep], s["kb"][:, rep]
    wa = ka[0] * col + ka[1] * row + ka[2]
    wb = kb[0] * col + kb[1] * row + kb[2]
    eps = 1e-9  # include the edges: two faces sharing an edge both claim it, never neither
    inside = (wa >= -eps) & (wb >= -eps) & (wa + wb <= 1 + eps)
    rep, col, row = rep[inside], col[inside], row[inside]
    kz = s["kz"][:, rep]
    z = kz[0] * col + kz[1] * row + kz[2]
    key = s["view"][rep] * (r * r) + row * r + col
    zc = np.full_like(zbuf, np.inf)
    np.minimum.at(zc, key, z)
    win = z == zc[key]
    ic = np.full_like(ibuf, np.iinfo(np.int64).max)
    np.minimum.at(ic, key[win], s["face"][rep[win]])  # ties: lowest face index
    # Strict: on a tie with an earlier chunk, its (lower) face index stays.
    better = zc < zbuf
    zbuf[better] = zc[better]
    ibuf[better] = ic[better]


def _rasterize(mesh: trimesh.Trimesh, dirs: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation; returns (triangle id or -1, distance), [V, r, r] each."""
    verts = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64)
    s = _face_setup(*_project(verts, faces, dirs, r), r)
    zbuf = np.full(len(dirs) * r * r, np.inf)
    ibuf = np.full(len(dirs) * r * r, -1, np.int64)
    ends = np.cumsum(s["count"])
    if len(ends):
        # Chunk boundaries so that no chunk holds more than ~_MAX_CANDIDATES candidate pixels.
        cuts = np.searchsorted(ends, np.arange(_MAX_CANDIDATES, ends[-1], _MAX_CANDIDATES))
        bounds = np.unique(np.r_[0, cuts, len(ends)])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            _raster_chunk(s, int(lo), int(hi), r, zbuf, ibuf)
    return ibuf.reshape(-1, r, r), zbuf.reshape(-1, r, r)


def _neighbour_diff(
    a: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """OR over the 4-neighbourhood of fn(a[pixel], a[neighbour]) (edges padded by replication)."""
    out = np.zeros(a.shape[:3], bool)
    for axis in (1, 2):
        for shift in (1, -1):
            b = np.roll(a, shift, axis=axis)
            # Do not wrap around the image border.
            idx = [slice(None)] * a.ndim
            idx[axis] = 0 if shift == 1 else -1
            b[tuple(idx)] = a[tuple(idx)]
            out |= fn(a, b)
    return out


def _dilate(mask: np.ndarray, width: int) -> np.ndarray:
    """4-connected dilation of [V, H, W] masks, `width` times."""
    for _ in range(width):
        grown = mask.copy()
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        grown[:, :, 1:] |= mask[:, :, :-1]
        grown[:, :, :-1] |= mask[:, :, 1:]
        mask = grown
    return mask


def _depth_channel(fg: np.ndarray, dist: np.ndarray) -> np.ndarray:
    # Distance from the camera plane (at 2) lies in [1, 3] for the unit sphere.
    d = np.clip((3.0 - np.where(fg, dist, 3.0)) / 2.0, 0.0, 1.0)
    return np.where(fg, 1 + np.round(d * 254), 0).astype(np.uint8)


def _shade_channel(fg: np.ndarray, n: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    right, up = _camera_frames(dirs)
    light = dirs + 0.35 * up - 0.35 * right
    light /= np.linalg.norm(light, axis=1, keepdims=True)
    # Two-sided Lambert: PSB faces have mixed orientation; 0.15 ambient keeps grazing faces > 0.
    lam = np.abs(np.einsum("vhwc,vc->vhw", n, light))
    return np.where(fg, 1 + np.round((0.15 + 0.85 * lam) * 254), 0).astype(np.uint8)


def _line_channel(fg: np.ndarray, dist: np.ndarray, n: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    px = 2.0 / cfg.resolution  # one pixel in world units
    # Outside the frame counts as background: a part touching the border still gets its outline.
    inner = np.pad(fg, ((0, 0), (1, 1), (1, 1)))
    inner = inner[:, :-2, 1:-1] & inner[:, 2:, 1:-1] & inner[:, 1:-1, :-2] & inner[:, 1:-1, 2:]
    sil = fg & ~inner
    far = np.where(fg, dist, 1e9)  # finite stand-in for background: no inf - inf
    # A jump of more than 4 px in depth between neighbours is an occluding contour; smooth
    # surfaces seen at a grazing angle change by at most a few pixels per pixel.
    contour = fg & _neighbour_diff(far, lambda a, b: (b < 1e8) & (b - a > 4 * px))
    cos_t = np.cos(np.deg2rad(cfg.crease_deg))
    # |cos|: mixed face orientation in real meshes makes the sign of a normal meaningless.
    crease = fg & _neighbour_diff(n, lambda a, b: np.abs(np.einsum("...c,...c->...", a, b)) < cos_t)
    crease &= _neighbour_diff(fg, lambda a, b: b)  # isolated pixels have no neighbour to differ
    lines = _dilate(sil | contour | crease, cfg.line_width - 1)
    return np.where(lines, 255, 0).astype(np.uint8)


def _check_mesh(mesh: trimesh.Trimesh) -> None:
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    if faces.ndim != 2 or len(faces) == 0 or faces.shape[1] != 3:
        raise MeshError(None, f"render: the mesh has no triangles (faces {faces.shape})")
    if not np.isfinite(verts).all():
        raise MeshError(None, "render: the mesh has non-finite vertices")
    if np.linalg.norm(verts, axis=1).max() > 1.0 + 1e-3:
        # Orthographic frame spans the unit sphere: anything outside would be clipped.
        raise MeshError(None, "render: the mesh is not inside the unit sphere (normalize_mesh)")


def render_views(mesh: trimesh.Trimesh, cfg: RenderConfig | None = None) -> np.ndarray:
    """Renders the configured views and channels of a unit-sphere-normalised mesh.

    Args:
      mesh: a mesh inside the unit sphere (see `sb3dr_jax.data.meshes.load_mesh`).
      cfg: views, resolution, channels and backend.

    Returns:
      uint8 [V, H, W, C] with C = len(cfg.channels), background 0.
    """
    cfg = cfg or RenderConfig()
    return render_from_directions(
        mesh, camera_directions(cfg.num_views, cfg.layout, cfg.elevation), cfg
    )


def render_from_directions(
    mesh: trimesh.Trimesh, dirs: np.ndarray, cfg: RenderConfig | None = None
) -> np.ndarray:
    """Renders views from arbitrary camera directions (e.g. random viewpoints for sketches).

    Args:
      mesh: a mesh inside the unit sphere.
      dirs: [V, 3] directions from the origin towards the cameras (normalised here).
      cfg: resolution, channels, line settings and backend (its view layout is ignored).

    Returns:
      uint8 [V, H, W, C], background 0.
    """
    cfg = cfg or RenderConfig()
    _check_mesh(mesh)
    dirs = np.asarray(dirs, np.float64).reshape(-1, 3)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    cast = _cast if resolve_backend(cfg.backend) == "embree" else _rasterize
    tri_id, dist = cast(mesh, dirs, cfg.resolution)  # [V, H, W] each
    fg = tri_id >= 0
    normals = np.asarray(mesh.face_normals, np.float64)
    n = np.where(fg[..., None], normals[np.maximum(tri_id, 0)], 0.0)  # [V, H, W, 3]
    make = {
        "depth": lambda: _depth_channel(fg, dist),
        "shade": lambda: _shade_channel(fg, n, dirs),
        "line": lambda: _line_channel(fg, dist, n, cfg),
    }
    return np.stack([make[name]() for name in cfg.channels], axis=-1)  # [V, H, W, C]
