"""What an export carries for the web front end, and how serving reads it.

`<export>/web/manifest.json` lists, per gallery model (by its row in the index), a small
thumbnail (`thumbs/<row>.png`), a strip of all its rendered views (`views/<row>.png`) and a
decimated web mesh (`meshes/<row>.glb`), and the loaded dataset's benchmark sketches of the
test split (`sketches/<split>/<n>.png`, dark ink on white, as a person would draw them). Files
are named by position, not by id, because ids are arbitrary strings (QuickDraw key ids, PSB
numbers) that should never become paths.

The writer lives on the training side (`sb3dr_jax.data.web_assets`, it needs trimesh and the
TFDS records); this reader needs neither: serving needs nothing but the export folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

WEB_DIR = "web"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelAssets:
    """One gallery model's files (paths relative to the web folder; None when missing)."""

    model_id: str
    label: str
    thumbnail: str | None
    views: str | None
    num_views: int
    mesh: str | None


@dataclasses.dataclass(frozen=True)
class SketchAsset:
    """One benchmark sketch."""

    sketch_id: str
    label: str
    split: str
    file: str


class WebAssets:
    """The web folder of an export: a read-only view of `manifest.json` and its files."""

    def __init__(self, root: pathlib.Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.models: dict[str, ModelAssets] = {
            m["id"]: ModelAssets(
                m["id"], m["label"], m.get("thumbnail"), m.get("views"), m.get("num_views", 0),
                m.get("mesh"),
            )
            for m in manifest.get("models", [])
        }  # fmt: skip
        self.sketches: list[SketchAsset] = [
            SketchAsset(s["id"], s["label"], s["split"], s["file"])
            for s in manifest.get("sketches", [])
        ]
        self._sketch_by_key = {(s.split, s.sketch_id): s for s in self.sketches}

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> WebAssets:
        """Reads `<export_dir>/web/manifest.json`.

        Args:
          export_dir: the export folder.

        Returns:
          The assets; an export without a web folder gives an empty set (the query API still
          works, the front end shows no thumbnails).

        Raises:
          ValueError: a manifest in an unknown format (the message names the file).
        """
        root = pathlib.Path(export_dir) / WEB_DIR
        path = root / MANIFEST
        if not path.exists():
            return cls(root, {"format_version": FORMAT_VERSION, "models": [], "sketches": []})
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable web manifest: {e}") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: web manifest format {manifest.get('format_version')} is not "
                f"{FORMAT_VERSION}; export again with `python -m launch.distill`"
            )
        return cls(root, manifest)

    @property
    def available(self) -> bool:
        """True when the export carries web assets."""
        return bool(self.models)

    def file(self, relative: str | None) -> pathlib.Path | None:
        """The absolute path of a manifest entry, or None when missing on disk."""
        if not relative:
            return None
        p = self.root / relative
        return p if p.is_file() else None

    def sketch(self, split: str, sketch_id: str) -> SketchAsset | None:
        """The benchmark sketch `sketch_id` of `split`, or None."""
        return self._sketch_by_key.get((split, sketch_id))

    def splits(self) -> list[str]:
        """The splits with benchmark sketches."""
        return sorted({s.split for s in self.sketches})
