"""Build (render) a dataset and write a contact sheet: `python -m launch.render`.

python -m launch.render                       # the built-in demo dataset
python -m launch.render --dataset tub16       # ../shared/data/tub16-psb-dev
python -m launch.render --dataset shrec13 --root /data/SHREC13 --data_dir /data/tfds
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file("config", common.config_path("render"), "Render config.")
flags.DEFINE_string("dataset", None, "demo | tub16 | qd90 | shared | shrec13 | shrec14")
flags.DEFINE_string("root", None, "Source folder for shared/shrec13/shrec14.")
flags.DEFINE_string("data_dir", None, "Where the TFDS records go (default data_cache/tfds).")
flags.adopt_module_key_flags(common)  # --debug in --help


@common.main
def main(argv):
    del argv
    common.setup()
    from sb3dr_jax.configs.common import dataset_config
    from sb3dr_jax.data import dataset_from_config
    from sb3dr_jax.data.contact_sheet import contact_sheet

    cfg = common.FLAGS.config.dataset
    if flags.FLAGS.dataset:
        fresh = dataset_config(flags.FLAGS.dataset)
        fresh.render, fresh.sketch_size = cfg.render, cfg.sketch_size
        cfg = fresh
    if flags.FLAGS.root:
        cfg.root = flags.FLAGS.root
    if flags.FLAGS.data_dir:
        cfg.data_dir = flags.FLAGS.data_dir
    builder = dataset_from_config(cfg)
    info, meta = builder.info, builder.info.metadata
    print(f"dataset: {info.full_name} in {builder.data_dir}")
    print("splits: " + ", ".join(f"{k}={v.num_examples}" for k, v in info.splits.items()))
    print(f"classes: {len(meta['class_names'])}; shapes per class: {list(meta['shape_counts'])}")
    print(
        f"skipped items: {meta['num_skipped']} (report: {os.path.join(builder.data_dir, 'build_report.json')})"
    )
    for item in list(meta["skipped"])[:10]:
        print("  " + json.dumps(dict(item)))
    path = contact_sheet(builder, os.path.join(builder.data_dir, "contact_sheet.png"))
    print(f"contact sheet: {path}")


if __name__ == "__main__":
    app.run(main)
