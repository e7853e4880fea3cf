"""Evaluate distilled students: `python -m launch.evaluate --workdir W [--workdir W2 ...]`.

Prints the SHREC table (NN, FT, ST, E, DCG, mAP and its two variants, long-tail group mAPs)
and writes metrics.json, per_class.csv, pr_curve.png (one line per workdir) and table.md.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common
from sb3dr_jax import allocator

config_flags.DEFINE_config_file("config", common.config_path("evaluate"), "Evaluation config.")
flags.DEFINE_multi_string("eval_workdir", None, "More distill workdirs to compare (repeatable).")
flags.DEFINE_string("output_dir", None, "Where reports go (default: <first workdir>/eval).")


def main(argv):
    del argv
    first = common.setup("workdirs/distill")
    workdirs = [
        w for part in [first, *(flags.FLAGS.eval_workdir or [])] for w in part.split(",") if w
    ]
    from sb3dr_jax import evaluate

    try:
        evaluate.run(common.FLAGS.config, workdirs, flags.FLAGS.output_dir)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    allocator.reexec_with_tcmalloc()  # XLA:CPU steps ~24% shorter: sb3dr_jax/allocator.py
    app.run(main)
