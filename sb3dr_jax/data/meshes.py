"""Mesh reading, cleaning and normalisation for real-world benchmark files.

PSB/SHREC meshes are messy: `OFF` headers glued to the counts, comments, polygons with more
than three corners, NaN coordinates, out-of-range indices, degenerate faces and hundreds of
thousands of faces. `.off` is parsed here (robustly and fast, with numpy); `.obj`, `.ply` and
`.stl` go through trimesh. Every failure is a `MeshError` naming the file.

Decimation over the face budget uses vertex clustering on a uniform grid: deterministic, keeps
the surface closed where it was (face sampling would punch holes that show in the renders), and
needs no extra compiled package.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import trimesh

from sb3dr_jax.data.errors import MeshError

MESH_SUFFIXES = (".off", ".obj", ".ply", ".stl")


def _parse_off(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses an OFF file into (vertices [N, 3] f64, triangles [F, 3] i64)."""
    try:
        raw = pathlib.Path(path).read_bytes().decode("latin-1")
    except OSError as e:
        raise MeshError(path, f"cannot read: {e}") from None
    lines = []
    for ln in raw.splitlines():
        ln = ln.split("#", 1)[0].strip()
        if ln:
            lines.append(ln)
    if not lines:
        raise MeshError(path, "empty file")
    head = lines[0]
    if not head.upper().startswith(("OFF", "COFF", "NOFF", "CNOFF")):
        raise MeshError(path, f"not an OFF file (header {head[:20]!r})")
    # The counts may be glued to the header ("OFF123 456 0") or on the next line.
    rest = head.lstrip("CNOFcnof").strip()
    body = lines[1:]
    if not rest:
        if not body:
            raise MeshError(path, "missing vertex/face counts")
        rest, body = body[0], body[1:]
    try:
        counts = [int(t) for t in rest.split()[:3]]
        n_vert, n_face = counts[0], counts[1]
    except (ValueError, IndexError):
        raise MeshError(path, f"bad counts line {rest!r}") from None
    if n_vert < 0 or n_face < 0:
        raise MeshError(path, "negative vertex or face count")
    if n_vert == 0 or n_face == 0:
        raise MeshError(path, f"empty mesh ({n_vert} vertices, {n_face} faces)")
    if len(body) < n_vert + n_face:
        raise MeshError(
            path, f"truncated: expected {n_vert} vertices + {n_face} faces, found {len(body)} lines"
        )
    if len(body) > n_vert + n_face:  # a header that undercounts would silently drop data
        raise MeshError(
            path,
            f"header declares {n_vert} vertices + {n_face} faces, but "
            f"{len(body) - n_vert - n_face} more lines follow: counts do not match the data",
        )
    try:
        verts = np.array([ln.split()[:3] for ln in body[:n_vert]], dtype=np.float64)
    except ValueError:
        raise MeshError(path, "malformed vertex line") from None
    if verts.shape != (n_vert, 3):
        raise MeshError(path, "a vertex line has fewer than 3 coordinates")
    tris: list[list[int]] = []
    for ln in body[n_vert : n_vert + n_face]:
        toks = ln.split()
        try:
            k = int(toks[0])
            idx = [int(t) for t in toks[1 : 1 + k]]
        except (ValueError, IndexError):
            raise MeshError(path, f"malformed face line {ln[:40]!r}") from None
        if len(idx) != k or k < 3:
            raise MeshError(path, f"malformed face line {ln[:40]!r}")
        # Fan triangulation of polygons.
        tris.extend([idx[0], idx[j], idx[j + 1]] for j in range(1, k - 1))
    faces = np.array(tris, dtype=np.int64).reshape(-1, 3)
    return verts, faces


def _read_any(path: str) -> tuple[np.ndarray, np.ndarray]:
    suffix = pathlib.Path(path).suffix.lower()
    if suffix == ".off":
        return _parse_off(path)
    if suffix not in MESH_SUFFIXES:
        raise MeshError(path, f"unsupported mesh format {suffix!r} (use one of {MESH_SUFFIXES})")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for broken files
        raise MeshError(path, f"cannot parse: {type(e).__name__}: {e}") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(path, "file holds no triangle mesh")
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


def clean_arrays(
    verts: np.ndarray, faces: np.ndarray, path: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validates and cleans raw mesh arrays.

    Args:
      verts: [N, 3] vertex positions.
      faces: [F, 3] triangle indices.
      path: the source file, for error messages.

    Returns:
      (vertices, faces) with out-of-range, degenerate and duplicate faces and unreferenced
      vertices removed.

    Raises:
      MeshError: empty mesh, non-finite vertices, or no usable face left.
    """
    if len(verts) == 0 or len(faces) == 0:
        raise MeshError(path, "empty mesh (no vertices or no faces)")
    if not np.all(np.isfinite(verts)):
        raise MeshError(path, f"{int((~np.isfinite(verts)).any(1).sum())} non-finite vertices")
    in_range = np.all((faces >= 0) & (faces < len(verts)), axis=1)
    faces = faces[in_range]
    if len(faces) == 0:
        raise MeshError(path, "every face has an out-of-range vertex index")
    tri = verts[faces]  # [F, 3, 3]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    scale = max(np.ptp(verts, axis=0).max(), 1e-300)
    faces = faces[area2 > 1e-12 * scale * scale]
    if len(faces) == 0:
        raise MeshError(path, "every face has zero area")
    return _drop_unreferenced(verts, _unique_faces(faces))


def _unique_faces(faces: np.ndarray) -> np.ndarray:
    """Drops duplicate triangles, keeping the first one's order and winding."""
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    return faces[np.sort(first)]


def _drop_unreferenced(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used, inverse = np.unique(faces.ravel(), return_inverse=True)
    return verts[used], inverse.reshape(-1, 3)


def decimate(verts: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduces a mesh to at most `max_faces` faces by vertex clustering.

    Args:
      verts: [N, 3] vertices.
      faces: [F, 3] triangles.
      max_faces: the face budget.

    Returns:
      (vertices, faces) of the simplified mesh (unchanged when already within budget).
    """
    if len(faces) <= max_faces:
        return verts, faces
    lo, hi = verts.min(0), verts.max(0)
    extent = max(float((hi - lo).max()), 1e-12)
    # Start from a grid whose cell count roughly matches the budget and coarsen until it fits.
    cells = max(int(np.sqrt(max_faces / 2.0)) * 2, 4)
    while cells >= 2:
        key = np.floor((verts - lo) / extent * (cells - 1e-9)).astype(np.int64)
        _, cluster = np.unique(key, axis=0, return_inverse=True)
        cluster = cluster.reshape(-1)
        centres = np.zeros((cluster.max() + 1, 3))
        np.add.at(centres, cluster, verts)
        centres /= np.bincount(cluster)[:, None]
        new_faces = cluster[faces]
        ok = (
            (new_faces[:, 0] != new_faces[:, 1])
            & (new_faces[:, 1] != new_faces[:, 2])
            & (new_faces[:, 0] != new_faces[:, 2])
        )
        new_faces = _unique_faces(new_faces[ok])
        if 0 < len(new_faces) <= max_faces:
            return _drop_unreferenced(centres, new_faces)
        cells = int(cells * 0.8)
    return verts, faces[:max_faces]


def normalize_arrays(verts: np.ndarray) -> np.ndarray:
    """Centres at the bounding-box centre and scales so the farthest vertex has norm 1.

    The bounding-box centre (not the area centroid) is used because it does not depend on the
    tessellation density, which varies wildly across PSB parts.
    """
    centre = (verts.min(0) + verts.max(0)) / 2.0
    v = verts - centre
    radius = float(np.linalg.norm(v, axis=1).max())
    if radius <= 0 or not np.isfinite(radius):
        raise MeshError(None, "mesh has zero extent")
    return v / radius


def normalize_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Returns a copy of `mesh` centred and scaled into the unit sphere.

    Args:
      mesh: any triangle mesh.

    Returns:
      A new mesh whose bounding-box centre is the origin and whose max vertex norm is 1.
    """
    return trimesh.Trimesh(
        normalize_arrays(np.asarray(mesh.vertices, np.float64)),
        np.asarray(mesh.faces),
        process=False,
    )


def load_mesh(path: str | os.PathLike, *, max_faces: int = 20000, seed: int = 0) -> trimesh.Trimesh:
    """Reads, cleans, simplifies and normalises a mesh file.

    Args:
      path: a `.off`, `.obj`, `.ply` or `.stl` file.
      max_faces: face budget; larger meshes are decimated by vertex clustering.
      seed: unused by the deterministic decimation; kept for API stability.

    Returns:
      A `trimesh.Trimesh` in the unit sphere, centred at the origin.

    Raises:
      MeshError: unreadable, truncated, empty or non-finite input (the message names the file).
    """
    del seed
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeshError(path, "file not found")
    verts, faces = _read_any(path)
    try:
        verts, faces = clean_arrays(verts, faces, path)
        verts, faces = decimate(verts, faces, max_faces)
        verts = normalize_arrays(verts)
    except MeshError as e:
        raise MeshError(path, e.reason) from None
    return trimesh.Trimesh(verts.astype(np.float64), faces.astype(np.int64), process=False)
