"""Compare every method on the same data, backbone and budget: `python -m launch.compare`.

    python -m launch.compare --workdir workdirs/compare_demo
    python -m launch.compare --config sb3dr_jax/configs/compare.py:dataset=tub16,trials=2 \
        --workdir workdirs/compare_tub16
    python -m launch.compare --config sb3dr_jax/configs/compare.py:methods=dca+ssltkd,steps=200

Writes `results.md`, `results.json`, `pr_curves.png` and one folder per method (and the shared
teachers) into `--workdir`; rerunning skips the methods already done.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file("config", common.config_path("compare"), "Compare config file.")
common.define_output_workdir("workdirs/compare")
flags.adopt_module_key_flags(common)


@common.main
def main(argv):
    del argv
    workdir = common.setup("workdirs/compare")
    from sb3dr_jax import compare

    compare.run(common.FLAGS.config, workdir)


if __name__ == "__main__":
    common.start(main)  # tcmalloc re-exec, then absl
