"""Train and evaluate one literature baseline: `python -m launch.baseline`.

    python -m launch.baseline --config sb3dr_jax/configs/compare.py:method=dca \
        --workdir workdirs/baselines/dca
    python -m launch.baseline --config sb3dr_jax/configs/compare.py:method=cgn,dataset=tub16,trials=2

Writes checkpoints, metrics and `summary.json` (the SHREC figures of the test sketches) to
`--workdir`; a workdir with checkpoints is resumed.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch import common

config_flags.DEFINE_config_file("config", common.config_path("compare"), "Compare config file.")
common.define_output_workdir("")
flags.adopt_module_key_flags(common)


@common.main
def main(argv):
    del argv
    config = common.FLAGS.config
    workdir = common.setup(f"workdirs/baselines/{config.method}")
    from sb3dr_jax import baselines

    baselines.run(config, workdir)


if __name__ == "__main__":
    common.start(main)  # tcmalloc re-exec, then absl
