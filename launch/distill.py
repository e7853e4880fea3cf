"""Distil the sketch student from a trained teacher: `python -m launch.distill`.

With no arguments it uses the teacher in `workdirs/pretrain` (and its dataset) and writes
`workdirs/distill`, whose `export/` the evaluation and the query API load. Examples:

    python -m launch.distill --config sb3dr_jax/configs/distill.py:no_kd --workdir workdirs/no_kd
    python -m launch.distill --config.teacher_workdir=workdirs/pretrain_tub16
"""

from __future__ import annotations

import sys

from absl import app
from ml_collections import config_flags

from launch import common
from sb3dr_jax import allocator

config_flags.DEFINE_config_file("config", common.config_path("distill"), "Student config file.")


def main(argv):
    del argv
    workdir = common.setup("workdirs/distill")
    from sb3dr_jax import distill

    try:
        distill.run(common.FLAGS.config, workdir)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    allocator.reexec_with_tcmalloc()  # XLA:CPU steps ~24% shorter: sb3dr_jax/allocator.py
    app.run(main)
