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

The per-item work (render one mesh, rasterise one sketch, skip a bad item, number the kept
ones, build the report) lives in `items.py`; the in-process generator here and the Apache Beam
pipeline (`beam_build.py`, `builder.use_beam`) both call it, and write the same records.
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
from etils import epath

from sb3dr_jax.data import items as items_lib
from sb3dr_jax.data.demo import build_demo
from sb3dr_jax.data.layouts import DatasetLayout, read_layout
from sb3dr_jax.data.render import RenderConfig

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

    def _plan(self, dl_manager) -> dict[str, list]:
        """Reads the layout, starts the report; returns the non-empty splits' item lists."""
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
        self._settings = items_lib.ItemSettings(
            c.render_config(), c.max_faces, c.sketch_size, c.stroke_width, tuple(layout.classes)
        )
        self._shapes_done = not shapes  # sketch splits read the shape counts when it is True
        self._finalise_metadata()
        splits = {
            "shapes": shapes,
            "sketch_train": sketches["train"],
            "sketch_test": sketches["test"],
        }
        # TFDS refuses empty splits; a split without items (a broken .cla) is left out and
        # already listed in the report.
        return {k: v for k, v in splits.items() if v}

    def _split_generators(self, dl_manager):
        return {k: self._generate_examples(k, v) for k, v in self._plan(dl_manager).items()}

    def use_beam(self, results_dir: str) -> None:
        """Makes `download_and_prepare` build the records on Apache Beam (`beam_build`).

        Args:
          results_dir: where the workers leave the skipped items and class counts for the
            report (a fresh folder the workers can reach: local, or `gs://` on a cluster).
        """
        self._beam_results = results_dir
        # TFDS passes its Beam pipeline to `_split_generators` only when that method's
        # signature has a `pipeline` argument, and creating the pipeline imports Beam: so the
        # Beam variant is chosen per builder, here, and the in-process build never sees it.
        self._split_generators = self._beam_split_generators

    def _beam_split_generators(self, dl_manager, pipeline):
        from sb3dr_jax.data import beam_build

        splits = self._plan(dl_manager)
        self._beam_stages = list(splits)
        return beam_build.expand_splits(pipeline, splits, self._settings, self._beam_results)

    def _process_pipeline_result(self, pipeline_result) -> None:
        """After a Beam build: the report and class counts the workers left, merged."""
        del pipeline_result  # the workers' results are in files, on any runner
        from sb3dr_jax.data import beam_build

        counts, dropped = beam_build.read_results(self._beam_results, self._beam_stages)
        epath.Path(self._beam_results).rmtree()  # read once; a stale copy would only mislead
        self._shape_counts = counts
        for stage in self._beam_stages:
            self._report.extend(
                items_lib.stage_report(stage, dropped[stage], self._settings, counts)
            )
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

    def _generate_examples(self, stage: str, items: list) -> Iterator[tuple[str, dict]]:
        """Yields (key, record) for one split's items, in list order (in-process build)."""
        settings = self._settings
        if stage != "shapes" and not self._shapes_done:  # TFDS generates the splits in order
            raise RuntimeError("sketch splits must be generated after the shapes split")
        ndjson: items_lib.NdjsonCache = {}
        dropped: list[items_lib.Outcome] = []
        dropped_positions: list[int] = []
        for position, item in enumerate(items):
            if stage == "shapes":
                o = items_lib.shape_outcome(position, item, settings)
            else:
                has_target = self._shape_counts[settings.label(item.label)] > 0
                o = items_lib.sketch_outcome(position, item, settings, has_target, ndjson)
            if not o.is_record:
                dropped.append(o)
                dropped_positions.append(position)
                continue
            if stage == "shapes":
                self._shape_counts[o.label] += 1
            yield items_lib.to_record(
                o, items_lib.record_index(position, dropped_positions), settings
            )
        self._report.extend(items_lib.stage_report(stage, dropped, settings, self._shape_counts))
        self._shapes_done = self._shapes_done or stage == "shapes"
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
    path = epath.Path(builder.data_dir, REPORT_FILE)  # local or gs://
    report = {
        "dataset": builder.info.full_name,
        "num_skipped": meta.get("num_skipped", 0),
        "skipped": meta.get("skipped", []),
        "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
    }
    path.write_text(json.dumps(report, indent=2))
    return str(path)
