"""Data: readers, renderer, demo set, TFDS builders and tf.data pipelines.

`dataset_from_config(cfg.dataset)` is the one call the training and evaluation code make.
"""

from __future__ import annotations

import os
import pathlib
import sys

from sb3dr_jax.data.errors import ClaError, DataError, LayoutError, MeshError, SketchError

__all__ = [
    "ClaError",
    "DataError",
    "LayoutError",
    "MeshError",
    "SketchError",
    "dataset_from_config",
    "get_dataset",
    "require_splits",
]


def get_dataset(
    name: str,
    *,
    data_dir: str,
    root: str | None = None,
    prepare: bool = True,
    beam=None,
    **fields,
):
    """Returns a (prepared) TFDS builder for a dataset.

    Args:
      name: "demo", "shared", "shrec13" or "shrec14".
      data_dir: where TFDS keeps the records.
      root: the source folder (`manual_dir`) for "shared", "shrec13" and "shrec14".
      prepare: build the records if they are not there yet.
      beam: a `beam_build.BeamConfig` to build them on Apache Beam (the same records), or None
        to build in this process.
      **fields: `Sb3drConfig` fields (render settings, sketch size, demo settings, caps).

    Returns:
      The builder, with splits `shapes`, `sketch_train`, `sketch_test`.
    """
    from sb3dr_jax.configs.common import SHORTCUTS, ConfigError
    from sb3dr_jax.data import tfds_builders as tb

    if name not in tb.BUILDERS:
        raise ConfigError(
            f"dataset.name: unknown {name!r}; choose from {sorted([*tb.BUILDERS, *SHORTCUTS])} "
            f"({', '.join(SHORTCUTS)}: the ../shared/data sets, e.g. "
            "`--config sb3dr_jax/configs/pretrain.py:dataset=tub16`)"
        )
    if "://" not in data_dir:  # gs://... (a Beam build on a cluster) is used as given
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if name == "demo":
        config = tb.make_config("demo", **fields)
        manual_dir = os.path.join(data_dir, "demo_src", config.name)
    else:
        if not root or not os.path.isdir(root):
            raise LayoutError(
                root or "<empty>", f"dataset.root: source folder for {name!r} not found"
            )
        root = os.path.abspath(root)
        config = tb.make_config(name, root_name=pathlib.Path(root).name, **fields)
        manual_dir = root
    builder = tb.BUILDERS[name](config=config, data_dir=data_dir)
    if name == "demo":
        builder.source_dir = manual_dir
    if prepare and not _is_prepared(builder):
        _prepare(builder, manual_dir, beam)
    return builder


def _is_prepared(builder) -> bool:
    from etils import epath  # local folders and gs:// alike

    return epath.Path(builder.data_dir, "dataset_info.json").exists()


def _prepare(builder, manual_dir: str, beam=None) -> None:
    """Builds the records on process 0; other processes wait at a barrier and then read them.

    With `beam` (a `beam_build.BeamConfig`) process 0 hands the build to Apache Beam.
    """
    import tensorflow_datasets as tfds

    process_index, process_count = 0, 1
    if "jax" in sys.modules:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if process_index == 0:
        print(f"[data] building {builder.info.full_name} into {builder.data_dir} ...", flush=True)
        is_demo = getattr(builder, "source_dir", None) is not None
        beam_kw = {}
        if beam is not None:
            beam_kw = dict(beam_options=beam.pipeline_options())
            builder.use_beam(_beam_results_dir(builder))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=None if is_demo else manual_dir, **beam_kw
            )
        )
        from sb3dr_jax.data.tfds_builders import write_report

        report = write_report(builder)
        print(
            f"[data] done; skipped {builder.info.metadata.get('num_skipped', 0)} items, "
            f"report: {report}",
            flush=True,
        )
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"prepare {builder.info.full_name}")


def _beam_results_dir(builder) -> str:
    """A fresh folder beside the records for a Beam build's report parts (local or gs://)."""
    from etils import epath

    path = epath.Path(builder.data_dir).parent / f"{epath.Path(builder.data_dir).name}.beam"
    if path.exists():
        path.rmtree()
    return str(path)


def dataset_from_config(cfg, *, beam=None) -> object:
    """Returns the prepared TFDS builder described by a config's `dataset` block.

    Args:
      cfg: a ConfigDict from `sb3dr_jax.configs.common.dataset_config`.
      beam: a `beam_build.BeamConfig` to build on Apache Beam, or None (in this process).

    Returns:
      The prepared builder.
    """
    from sb3dr_jax.configs.common import SHORTCUTS, shared_data_root

    name, root = cfg.name, cfg.root
    if name in SHORTCUTS:  # `--config.dataset.name=tub16` means what `:dataset=tub16` means
        name, root = "shared", root or shared_data_root(SHORTCUTS[name])
    r = cfg.render
    demo = tuple(sorted((k, v) for k, v in cfg.demo.to_dict().items())) if name == "demo" else ()
    return get_dataset(
        name,
        data_dir=cfg.data_dir,
        root=root or None,
        num_views=int(r.num_views),
        resolution=int(r.resolution),
        layout=str(r.layout),
        elevation=float(r.elevation),
        channels=tuple(r.channels),
        sketch_size=int(cfg.sketch_size),
        stroke_width=float(cfg.stroke_width),
        max_faces=int(cfg.max_faces),
        max_shapes=int(cfg.max_shapes),
        max_sketches=int(cfg.max_sketches),
        demo=demo,
        beam=beam,
    )


def require_splits(builder, splits: tuple[str, ...], *, needed_by: str) -> None:
    """Checks, before any training, that every split a run needs was built and holds items.

    Args:
      builder: a prepared builder.
      splits: the splits the run reads.
      needed_by: the run, for the message (e.g. "distill").

    Raises:
      LayoutError: a split is missing or empty (a broken `.cla`, every item of it unreadable);
        the message names the build report that lists the skipped items with their reasons.
    """
    from sb3dr_jax.data.tfds_builders import REPORT_FILE

    have = builder.info.splits
    empty = [s for s in splits if s not in have or have[s].num_examples == 0]
    if empty:
        raise LayoutError(
            os.path.join(builder.data_dir, REPORT_FILE),
            f"{needed_by} needs the split(s) {', '.join(empty)}, which the build of "
            f"{builder.info.full_name} left empty; this report lists every skipped item and why",
        )
