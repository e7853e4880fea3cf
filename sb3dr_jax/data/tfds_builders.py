"""TFDS builders: render every mesh once and store views and sketches as uint8 records.

One builder per source: `sb3dr_demo` (generated, no download), `sb3dr_shared` (a
`../shared/data/*` folder as `manual_dir`), `shrec13` and `shrec14` (the official releases as
`manual_dir`). Each has three splits:

- `shapes`: `views` uint8 [V, H, W, C], `image` uint8 [0, S, 1] (empty), ids, `label`, `index`;
- `sketch_train`, `sketch_test`: `image` uint8 [S, S, 1], `views` uint8 [0, H, W, C] (empty).

TFDS wants one feature spec for all splits, so both tensors are declared with a dynamic leading
dimension and stored zlib-compressed; an empty tensor costs a few bytes. The pipelines restore
static shapes. Build configs are created on the fly from the config file: their names encode
the render settings, so builds at different resolutions never collide in `data_dir`.

An item that fails to read (`DataError`) is skipped and counted; the build never dies on one bad
file. A class none of whose target models loaded is reported too, and its sketches are left
out of both sketch splits (with a count): there is nothing to retrieve for them. Skipped items,
and those the layout reader already rejected, are listed in `build_report.json` next to the
records and summarised in `builder.info.metadata`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from sb3dr_jax.data.demo import build_demo
from sb3dr_jax.data.errors import DataError
from sb3dr_jax.data.layouts import DatasetLayout, SketchItem, read_layout
from sb3dr_jax.data.meshes import load_mesh
from sb3dr_jax.data.render import RenderConfig, render_views
from sb3dr_jax.data.sketches import load_sketch, rasterize_strokes, read_quickdraw_ndjson

SPLITS = ("shapes", "sketch_train", "sketch_test")
REPORT_FILE = "build_report.json"


@dataclasses.dataclass(eq=False)
class Sb3drConfig(tfds.core.BuilderConfig):
    """A build: which source, how to render, how big the sketches are."""

    kind: str = "demo"  # "demo" | "shared" | "shrec13" | "shrec14"
    num_views: int = 12
    resolution: int = 64
    layout: str = "ring"
    elevation: float = 30.0
    channels: tuple[str, ...] = ("depth", "shade", "line")
    sketch_size: int = 64
    stroke_width: float = 2.0
    max_faces: int = 20000
    max_shapes: int = 0
    max_sketches: int = 0
    demo: tuple[tuple[str, float], ...] = ()  # build_demo kwargs, sorted

    def render_config(self) -> RenderConfig:
        return RenderConfig(
            self.num_views, self.resolution, self.layout, self.elevation, tuple(self.channels)
        )


def make_config(kind: str, *, root_name: str = "", **fields) -> Sb3drConfig:
    """Builds a config whose name encodes every setting that changes the records.

    Args:
      kind: the source kind.
      root_name: the source folder's name (part of the config name for shared layouts).
      **fields: any `Sb3drConfig` field.

    Returns:
      The config.
    """
    probe = Sb3drConfig(name="probe", kind=kind, **fields)
    settings = {
        f.name: getattr(probe, f.name)
        for f in dataclasses.fields(Sb3drConfig)
        if f.name
        not in ("name", "version", "release_notes", "supported_versions", "description", "tags")
    }
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :8
    ]
    chans = "".join(c[0] for c in probe.channels)
    stem = "".join(ch if ch.isalnum() else "_" for ch in (root_name or kind))
    name = f"{stem}_v{probe.num_views}_r{probe.resolution}_{chans}_s{probe.sketch_size}_{digest}"
    return Sb3drConfig(name=name, description=f"{kind} {root_name}".strip(), kind=kind, **fields)


class _Sb3drBase(tfds.core.GeneratorBasedBuilder):
    """Shared machinery; subclasses only say where the source folder is."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: list = []

    def _info(self) -> tfds.core.DatasetInfo:
        c: Sb3drConfig = self.builder_config
        f = tfds.features
        features = f.FeaturesDict(
            {
                "views": f.Tensor(
                    shape=(None, c.resolution, c.resolution, len(c.channels)),
                    dtype=np.uint8,
                    encoding="zlib",
                ),
                "image": f.Tensor(shape=(None, c.sketch_size, 1), dtype=np.uint8, encoding="zlib"),
                "id": f.Text(),
                "label": np.int64,
                "index": np.int64,
            }
        )
        return self.dataset_info_from_configs(features=features, metadata=tfds.core.MetadataDict())

    def _source_layout(self, dl_manager) -> DatasetLayout:
        return read_layout(dl_manager.manual_dir, self.builder_config.kind)

    # TFDS announces "Downloading and preparing dataset Unknown size ..." and "... downloaded
    # and prepared"; nothing is downloaded here, and `[data] building ...` / `[data] done` say
    # what happens.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        c: Sb3drConfig = self.builder_config
        layout = self._source_layout(dl_manager)
        shapes = layout.shapes[: c.max_shapes or None]
        sketches = {s: [k for k in layout.sketches if k.split == s] for s in ("train", "test")}
        if c.max_sketches:
            sketches = {s: v[: c.max_sketches] for s, v in sketches.items()}
        self._report = [
            {"item": p, "path": p, "reason": r, "stage": "layout"} for p, r in layout.problems
        ]
        self._shape_counts = [0] * len(layout.classes)
        self._classes = layout.classes
        self._shapes_done = not shapes  # sketch splits read the shape counts when it is True
        self._finalise_metadata()
        splits = {
            "shapes": shapes,
            "sketch_train": sketches["train"],
            "sketch_test": sketches["test"],
        }
        # TFDS refuses empty splits; a split without items (a broken .cla) is left out and
        # already listed in the report.
        return {k: self._generate_examples(v, layout) for k, v in splits.items() if v}

    def _generate_examples(self, items: list, layout: DatasetLayout):
        """Yields (key, record) for shape items or sketch items."""
        if items and isinstance(items[0], SketchItem):
            return self._sketch_examples(items, layout)
        return self._shape_examples(items, layout)

    def _skip(self, item: str, err: DataError, stage: str) -> None:
        self._report.append({"item": item, "path": err.path, "reason": err.reason, "stage": stage})
        self._finalise_metadata()

    def _finalise_metadata(self) -> None:
        c: Sb3drConfig = self.builder_config
        self.info.metadata.update(
            {
                "class_names": list(self._classes),
                "shape_counts": list(self._shape_counts),
                "render": dataclasses.asdict(c.render_config()),
                "sketch_size": c.sketch_size,
                "num_skipped": len(self._report),
                "skipped": list(self._report),
                "report_file": REPORT_FILE,
            }
        )

    def _shape_examples(self, shapes, layout: DatasetLayout) -> Iterator[tuple[str, dict]]:
        c: Sb3drConfig = self.builder_config
        cls = layout.class_index()
        empty_image = np.zeros((0, c.sketch_size, 1), np.uint8)
        index = 0
        for item in shapes:
            try:
                views = render_views(load_mesh(item.path, max_faces=c.max_faces), c.render_config())
            except DataError as e:
                self._skip(f"model {item.model_id}", e, "shapes")
                continue
            self._shape_counts[cls[item.label]] += 1
            self._finalise_metadata()
            yield (
                item.model_id,
                {
                    "views": views,
                    "image": empty_image,
                    "id": item.model_id,
                    "label": cls[item.label],
                    "index": index,
                },
            )
            index += 1
        for c, n in zip(layout.classes, self._shape_counts):
            if n == 0:
                self._report.append(
                    {
                        "item": f"class {c}",
                        "path": None,
                        "reason": "no target model of this class loaded: its sketches are "
                        "left out (nothing to retrieve for them)",
                        "stage": "shapes",
                    }
                )
        self._shapes_done = True
        self._finalise_metadata()

    def _sketch_examples(self, items: list[SketchItem], layout: DatasetLayout):
        c: Sb3drConfig = self.builder_config
        cls = layout.class_index()
        empty_views = np.zeros((0, c.resolution, c.resolution, len(c.channels)), np.uint8)
        ndjson: dict[pathlib.Path, dict] = {}
        if not self._shapes_done:  # TFDS generates the splits in order, shapes first
            raise RuntimeError("sketch splits must be generated after the shapes split")
        no_target: dict[str, int] = {}  # class -> sketches left out
        index = 0
        for item in items:
            if self._shape_counts[cls[item.label]] == 0:
                no_target[item.label] = no_target.get(item.label, 0) + 1
                continue
            try:
                if item.ndjson_key is None:
                    img = load_sketch(item.path, size=c.sketch_size)
                else:
                    if item.path not in ndjson:
                        ndjson[item.path] = read_quickdraw_ndjson(item.path)
                    img = rasterize_strokes(
                        ndjson[item.path][item.ndjson_key]["drawing"],
                        size=c.sketch_size,
                        stroke_width=c.stroke_width,
                        source=f"{item.path}#{item.ndjson_key}",
                    )
            except DataError as e:
                self._skip(f"{item.split} sketch {item.sketch_id}", e, f"sketch_{item.split}")
                continue
            yield (
                item.sketch_id,
                {
                    "views": empty_views,
                    "image": img[..., None],
                    "id": item.sketch_id,
                    "label": cls[item.label],
                    "index": index,
                },
            )
            index += 1
        for c, n in no_target.items():
            split = items[0].split
            self._report.append(
                {
                    "item": f"{split} sketches of class {c}",
                    "path": None,
                    "reason": f"{n} sketches left out: class {c!r} has no target model",
                    "stage": f"sketch_{split}",
                }
            )
        self._finalise_metadata()


class Sb3drDemo(_Sb3drBase):
    """The built-in procedural demo dataset (generated into `manual_dir`, no download)."""

    # Where the generated source folder goes; set by `get_dataset` before preparing.
    source_dir: str | None = None

    def _source_layout(self, dl_manager) -> DatasetLayout:
        del dl_manager  # nothing to download
        kw = dict(self.builder_config.demo)
        root = pathlib.Path(
            self.source_dir
            or os.path.join(self._data_dir_root, "demo_src", self.builder_config.name)
        )
        return build_demo(
            root,
            num_classes=int(kw.get("num_classes", 10)),
            max_shapes_per_class=int(kw.get("max_shapes_per_class", 30)),
            imbalance_ratio=float(kw.get("imbalance_ratio", 10.0)),
            sketches_per_class=(int(kw.get("sketches_train", 24)), int(kw.get("sketches_test", 8))),
            sketch_size=max(self.builder_config.sketch_size, 128),
            seed=int(kw.get("seed", 0)),
        )


class Sb3drShared(_Sb3drBase):
    """A dataset in the `../shared/data/*` layout (tub16-psb-dev, qd90-psb-dev, ...)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir = a folder with classes/, models/, sketches/."


class Shrec13(_Sb3drBase):
    """SHREC'13 sketch track (Li et al. 2013): the unpacked official release as manual_dir."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir = the folder holding SHREC13_SBR_Model.cla etc."


class Shrec14(_Sb3drBase):
    """SHREC'14 large-scale sketch track: the unpacked official release as manual_dir."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir = the folder holding SHREC14_SBR_Model.cla etc."


BUILDERS = {"demo": Sb3drDemo, "shared": Sb3drShared, "shrec13": Shrec13, "shrec14": Shrec14}


def write_report(builder: tfds.core.DatasetBuilder) -> str:
    """Writes `build_report.json` (every skipped item with its reason) next to the records.

    Args:
      builder: a prepared builder.

    Returns:
      The report's path.
    """
    meta = builder.info.metadata
    path = os.path.join(builder.data_dir, REPORT_FILE)
    report = {
        "dataset": builder.info.full_name,
        "num_skipped": meta.get("num_skipped", 0),
        "skipped": meta.get("skipped", []),
        "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    return path
