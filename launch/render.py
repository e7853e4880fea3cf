"""Build (render) a dataset and write a contact sheet: `python -m launch.render`.

python -m launch.render                       # the built-in demo dataset
python -m launch.render --dataset tub16       # ../shared/data/tub16-psb-dev
python -m launch.render --dataset shrec13 --root /data/SHREC13 --data_dir /data/tfds
python -m launch.render --dataset tub16 --beam --beam_workers 2   # on Apache Beam, locally
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file("config", common.config_path("render"), "Render config.")
flags.DEFINE_string("dataset", None, "demo | tub16 | qd90 | shared | shrec13 | shrec14")
flags.DEFINE_string("root", None, "Source folder for shared/shrec13/shrec14.")
flags.DEFINE_string("data_dir", None, "Where the TFDS records go (default data_cache/tfds).")
flags.DEFINE_bool(
    "beam", None, "Render through Apache Beam (`pip install 'sb3dr_jax[beam]'`): same records."
)
flags.DEFINE_integer("beam_workers", None, "Beam DirectRunner worker processes (default 2).")
flags.DEFINE_string(
    "beam_options",
    None,
    "Extra Beam pipeline flags, one quoted string, e.g. '--runner=DataflowRunner "
    "--project=P --region=R --temp_location=gs://B/tmp' (a --runner replaces the DirectRunner).",
)
flags.adopt_module_key_flags(common)  # --debug in --help


def _config():
    """The config with the command-line flags applied."""
    from sb3dr_jax.configs.common import dataset_config

    cfg = common.FLAGS.config
    if flags.FLAGS.dataset:
        fresh = dataset_config(flags.FLAGS.dataset)
        fresh.render, fresh.sketch_size = cfg.dataset.render, cfg.dataset.sketch_size
        cfg.dataset = fresh
    if flags.FLAGS.root:
        cfg.dataset.root = flags.FLAGS.root
    if flags.FLAGS.data_dir:
        cfg.dataset.data_dir = flags.FLAGS.data_dir
    for flag, field in (
        ("beam", "enabled"),
        ("beam_workers", "workers"),
        ("beam_options", "options"),
    ):
        if flags.FLAGS[flag].value is not None:
            cfg.beam[field] = flags.FLAGS[flag].value
    return cfg


def run(config) -> None:
    """Builds the dataset (in this process or on Beam), prints a summary, writes a contact sheet.

    Args:
      config: a `sb3dr_jax/configs/render.py` config.
    """
    beam = None
    if config.beam.enabled:
        from sb3dr_jax.data.beam_build import BeamConfig, import_beam

        import_beam()  # before any work: a missing extra is a one-line error
        beam = BeamConfig(int(config.beam.workers), str(config.beam.options))
        beam.pipeline_options()  # a bad flag fails now, not after the layout is read
    common.setup()
    from sb3dr_jax.data import dataset_from_config
    from sb3dr_jax.data.contact_sheet import contact_sheet

    builder = dataset_from_config(config.dataset, beam=beam)
    info, meta = builder.info, builder.info.metadata
    print(f"dataset: {info.full_name} in {builder.data_dir}")
    print("splits: " + ", ".join(f"{k}={v.num_examples}" for k, v in info.splits.items()))
    print(f"classes: {len(meta['class_names'])}; shapes per class: {list(meta['shape_counts'])}")
    report = f"{builder.data_dir}/build_report.json"  # data_dir may be gs://...
    print(f"skipped items: {meta['num_skipped']} (report: {report})")
    for item in list(meta["skipped"])[:10]:
        print("  " + json.dumps(dict(item)))
    path = contact_sheet(builder, f"{builder.data_dir}/contact_sheet.png")
    print(f"contact sheet: {path}")


@common.main
def main(argv):
    del argv
    run(_config())


if __name__ == "__main__":
    app.run(main)
