#!/usr/bin/env bash
# Validation-split tuning of the student on a fixed teacher (docs/retrieval_diagnosis.md, the
# "what each change gave" table). Every variant trains on 80% of the training sketches and is
# scored on the held-out 20% (`val`, fixed split seed 0); the test queries are never read here.
#
#   bash launch/experiments/tune.sh TEACHER_WORKDIR OUT VARIANT [VARIANT ...]
#
# VARIANT is one of the names below, or NAME:OVERRIDES (config flags, e.g.
# "lr5e-4:--config.optim.lr=5e-4"); SEED (default 0) sets the training seed.
set -euo pipefail
TEACHER=$1; OUT=$2; shift 2
SEED=${SEED:-0}
D=sb3dr_jax/configs/distill.py
declare -A V
V[base]=""
V[pk]="--config.sketch_data.sampler=pk"
V[aug]="--config.sketch_data.sampler=pk --config.sketch_aug.elastic=2.0 --config.sketch_aug.erase=2"
AUG="--config.sketch_aug.elastic=2.0 --config.sketch_aug.erase=2"
KLC="--config.loss.kl_target=centre --config.loss.terms.kl=100"
V[fix]="--config.sketch_data.sampler=pk $AUG $KLC"
V[fix_nopk]="$AUG $KLC"
V[fix_noaug]="--config.sketch_data.sampler=pk $KLC"
V[fix_nokl]="--config.sketch_data.sampler=pk $AUG"
V[klc]="--config.sketch_data.sampler=pk --config.sketch_aug.elastic=2.0 --config.sketch_aug.erase=2 --config.loss.kl_target=centre"
for name in "$@"; do
  extra=${V[$name]-}
  if [[ -z ${V[$name]+x} ]]; then extra="${name#*:}"; name="${name%%:*}"; fi
  echo "== $name: $extra"
  nice -n 5 python -m launch.distill --config $D:val=0.2 --config.seed=$SEED \
    --config.teacher_workdir=$TEACHER $extra --workdir $OUT/$name 2>&1 | grep -E "^\[distill\]|rror" || true
done
