"""Distil the sketch student from a trained teacher: `python -m launch.distill`.

With no arguments it uses the teacher in `workdirs/pretrain` (and its dataset) and writes
`workdirs/distill`, whose `export/` the evaluation and the query API load. The teacher is
`--config.teacher_workdir` (an input), the output is `--workdir`. Examples:

    python -m launch.distill --config sb3dr_jax/configs/distill.py:no_kd --workdir workdirs/no_kd
    python -m launch.distill --config.teacher_workdir=workdirs/pretrain_tub16
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file("config", common.config_path("distill"), "Student config file.")
common.define_output_workdir("workdirs/distill")
flags.adopt_module_key_flags(common)  # --debug and the multi-host flags in --help


@common.main
def main(argv):
    del argv
    workdir = common.setup("workdirs/distill")
    from sb3dr_jax import distill

    config = common.FLAGS.config
    print(
        f"[distill] teacher: {os.path.abspath(config.teacher_workdir)} "
        f"(--config.teacher_workdir); output: {os.path.abspath(workdir)} (--workdir)",
        flush=True,
    )
    distill.run(config, workdir)


if __name__ == "__main__":
    common.start(main)  # tcmalloc re-exec, then absl
