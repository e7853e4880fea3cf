#!/usr/bin/env bash
# tub16-psb-dev (16 classes, TU-Berlin sketches): the qd90 script's recipe on the small set.
#
#   bash launch/experiments/tub16.sh [cpu|gpu]     env: SEEDS="0 1 2"  OUT=workdirs/tub16_<mode>
#                                                      ABLATIONS=1 (0: teacher + student only)
#                                                      VAL=0 (see qd90.sh)
#
# cpu: teacher 600 steps + `pkaug` student 3000 steps (chosen on the validation split over 3
# seeds: 0.475 -> 0.615 val mAP against 1000 steps; docs/retrieval_diagnosis.md section 4);
# teacher + student ~10 CPU-minutes per seed on 2 cores. gpu: the `gpu` configs with longer schedules.
set -euo pipefail
MODE=${1:-cpu}
case $MODE in
  cpu) S_STEPS=${S_STEPS:-3000} ;;
  gpu) S_STEPS=${S_STEPS:-4000} ;;
  *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac
DATASET=tub16 OUT=${OUT:-workdirs/tub16_$MODE} S_STEPS=$S_STEPS \
  exec bash "$(dirname "$0")/qd90.sh" "$MODE"
