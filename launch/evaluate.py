"""Evaluate distilled students: `python -m launch.evaluate [--run W] [--run W2 ...]`.

`--run` names a distill run's folder (the `--workdir` it was trained with; default
`workdirs/distill`); repeat it, or separate folders with commas, to compare several side by
side. Prints the SHREC table (NN, FT, ST, E, DCG, mAP and its two variants, long-tail group
mAPs) and writes metrics.json, per_class.csv, pr_curve.png (one line per run) and table.md into
`--output_dir` (default `<first run>/eval`).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file("config", common.config_path("evaluate"), "Evaluation config.")
flags.DEFINE_multi_string(
    "run",
    None,
    "A distill run's folder to evaluate (its --workdir; default workdirs/distill). Repeat it "
    "or separate folders with commas to compare runs.",
)
flags.DEFINE_string("output_dir", None, "Where the reports go (default: <first run>/eval).")
flags.adopt_module_key_flags(common)  # --debug and the multi-host flags in --help


@common.main
def main(argv):
    del argv
    common.setup()
    runs = [w for part in flags.FLAGS.run or ["workdirs/distill"] for w in part.split(",") if w]
    from sb3dr_jax import evaluate

    evaluate.run(common.FLAGS.config, runs, flags.FLAGS.output_dir)


if __name__ == "__main__":
    common.start(main)  # tcmalloc re-exec, then absl
