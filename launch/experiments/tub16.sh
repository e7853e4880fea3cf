#!/usr/bin/env bash
# The tub16-psb-dev figures in the README: teacher with and without the long-tail optimisation,
# the student, and the ablations, then one side-by-side evaluation. CPU: ~15-20 minutes on 2 cores.
#
#   bash launch/experiments/tub16.sh [OUT=workdirs/tub16]
set -euo pipefail
OUT=${1:-workdirs/tub16}
CONFIGS=$(python -c "import os, sb3dr_jax.configs as c; print(os.path.dirname(c.__file__))")
P=$CONFIGS/pretrain.py
D=$CONFIGS/distill.py
STEPS=${STEPS:-600}

python -m launch.pretrain --config $P:dataset=tub16 --config.total_steps=$STEPS \
  --config.eval_every=$STEPS --workdir $OUT/pretrain_bcl
python -m launch.pretrain --config $P:dataset=tub16,longtail=none --config.total_steps=$STEPS \
  --config.eval_every=$STEPS --workdir $OUT/pretrain_nolt
python -m launch.distill --config $D --config.teacher_workdir=$OUT/pretrain_bcl --workdir $OUT/ssltkd
python -m launch.distill --config $D:no_kd --config.teacher_workdir=$OUT/pretrain_bcl --workdir $OUT/no_kd
python -m launch.distill --config $D:plain_triplet --config.teacher_workdir=$OUT/pretrain_bcl \
  --workdir $OUT/plain_triplet
python -m launch.distill --config $D --config.teacher_workdir=$OUT/pretrain_nolt --workdir $OUT/no_longtail
python -m launch.evaluate --run $OUT/ssltkd --run $OUT/no_kd \
  --run $OUT/plain_triplet --run $OUT/no_longtail --output_dir $OUT/eval
