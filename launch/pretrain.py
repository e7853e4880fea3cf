"""Train the multi-view SSL teacher: `python -m launch.pretrain [--config ...] [--workdir ...]`.

With no arguments it trains on the built-in demo data into `workdirs/pretrain`. Examples:

    python -m launch.pretrain --config sb3dr_jax/configs/pretrain.py:dataset=tub16
    python -m launch.pretrain --config.total_steps=1000 --config.longtail.method=none
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file("config", common.config_path("pretrain"), "Teacher config file.")
common.define_output_workdir("workdirs/pretrain")
flags.adopt_module_key_flags(common)  # --debug and the multi-host flags in --help


@common.main
def main(argv):
    del argv
    workdir = common.setup("workdirs/pretrain")
    from sb3dr_jax import pretrain

    pretrain.run(common.FLAGS.config, workdir)


if __name__ == "__main__":
    common.start(main)  # tcmalloc re-exec, then absl
