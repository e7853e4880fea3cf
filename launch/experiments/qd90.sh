#!/usr/bin/env bash
# qd90-psb-dev (90 classes, long-tailed): teacher, student and ablations per seed, then the
# mean and spread over the seeds (README "Results on qd90-psb-dev").
#
#   bash launch/experiments/qd90.sh [cpu|gpu]      env: SEEDS="0 1 2"  OUT=workdirs/qd90_<mode>
#                                                       ABLATIONS=1 (0: teacher + student only)
#                                                       VAL=0 (0.2: students train on 80% of
#                                                       the training sketches and also report
#                                                       eval/sketch_val/*)
#
# cpu: resnet_tiny teacher 600 steps (BYOL + BCL, batch 16) + `pkaug` student (batch 64 x 6000
# steps, chosen over 2000 on the validation split over 3 seeds); teacher + student ~16
# CPU-minutes of user time per seed (docs/retrieval_diagnosis.md, section 4).
# gpu: the `gpu` configs (ResNet-18, bf16, 128 px views and sketches) with longer schedules.
set -euo pipefail
MODE=${1:-cpu}
SEEDS=${SEEDS:-0 1 2}
OUT=${OUT:-workdirs/qd90_$MODE}
ABLATIONS=${ABLATIONS:-1}
VAL=${VAL:-0}
DATASET=${DATASET:-qd90}
P=sb3dr_jax/configs/pretrain.py
D=sb3dr_jax/configs/distill.py
case $MODE in
  cpu) T_ARG="dataset=$DATASET"; T_STEPS=${T_STEPS:-600}; S_ARG="pkaug"; S_STEPS=${S_STEPS:-6000} ;;
  gpu) T_ARG="dataset=$DATASET,gpu"; T_STEPS=${T_STEPS:-5000}; S_ARG="pkaug,gpu"
       S_STEPS=${S_STEPS:-6000} ;;
  *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac
[[ $VAL != 0 ]] && S_ARG="$S_ARG,val=$VAL"
export PYTHONPATH=${PYTHONPATH:-$PWD}
run() { echo "+ $*"; /usr/bin/env time -f "  (wall %e s, user %U s)" "$@"; }
for s in $SEEDS; do
  W=$OUT/s$s
  run python -m launch.pretrain --config $P:$T_ARG --config.seed=$s --config.total_steps=$T_STEPS \
    --config.eval_every=$T_STEPS --workdir $W/pretrain_bcl
  run python -m launch.distill --config $D:$S_ARG --config.seed=$s --config.total_steps=$S_STEPS \
    --config.teacher_workdir=$W/pretrain_bcl --workdir $W/ssltkd
  if [[ $ABLATIONS == 1 ]]; then
    for ab in no_kd plain_triplet; do
      run python -m launch.distill --config $D:$S_ARG,$ab --config.seed=$s \
        --config.total_steps=$S_STEPS --config.teacher_workdir=$W/pretrain_bcl --workdir $W/$ab
    done
    run python -m launch.pretrain --config $P:$T_ARG,longtail=none --config.seed=$s \
      --config.total_steps=$T_STEPS --config.eval_every=$T_STEPS --workdir $W/pretrain_nolt
    run python -m launch.distill --config $D:$S_ARG --config.seed=$s --config.total_steps=$S_STEPS \
      --config.teacher_workdir=$W/pretrain_nolt --workdir $W/no_longtail
  fi
done
ROWS=(--run "SSLTKD=$OUT/s*/ssltkd")
if [[ $ABLATIONS == 1 ]]; then
  ROWS+=(--run "no KD terms=$OUT/s*/no_kd" --run "plain triplet=$OUT/s*/plain_triplet"
         --run "no long-tail teacher=$OUT/s*/no_longtail")
fi
python -m launch.experiments.summarize "${ROWS[@]}" --out $OUT/students.md
TROWS=(--run "BYOL + BCL=$OUT/s*/pretrain_bcl")
[[ $ABLATIONS == 1 ]] && TROWS+=(--run "BYOL, no long-tail=$OUT/s*/pretrain_nolt")
python -m launch.experiments.summarize "${TROWS[@]}" \
  --metrics eval/shapes/knn_acc,eval/shapes/mAP,eval/shapes/mAP_head,eval/shapes/mAP_tail \
  --out $OUT/teachers.md
