#!/usr/bin/env bash
# Train the teacher, then the student, on a Cloud TPU pod slice (every worker runs the same command).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b BUCKET=gs://my-bucket DATASET=shrec13 \
#     bash launch/pod/tpu_pod.sh
#
# jax.distributed.initialize() needs no flags on a TPU VM: launch/common.py detects the pod and
# each worker gets its process_id from the TPU metadata. The dataset is built once into
# $BUCKET/tfds (process 0 renders, the others wait), then each host reads its own shard of the
# records. Global batch arithmetic: global_batch = hosts * local_devices * per_device_batch; a
# v4-32 slice has 4 hosts x 4 chips, so --config.global_batch=1024 gives 64 shapes per chip.
# Checkpoints (orbax, multi-host safe) and the resolved config go to the workdir in the bucket.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET (gs://...)}"
DATASET=${DATASET:-shrec13}
MANUAL_DIR=${MANUAL_DIR:-\$HOME/data/${DATASET}}
REPO=${REPO:-\$HOME/sb3dr_jax}
COMMON="--config.dataset.data_dir=${BUCKET}/tfds --config.dataset.root=${MANUAL_DIR}"

run_all() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

run_all "cd ${REPO} && pip install -q -e '.[tpu]'"
run_all "cd ${REPO} && python -m launch.pretrain \
  --config=sb3dr_jax/configs/pretrain.py:dataset=${DATASET},gpu ${COMMON} \
  --config.global_batch=1024 --workdir=${BUCKET}/runs/${DATASET}/pretrain"
run_all "cd ${REPO} && python -m launch.distill \
  --config=sb3dr_jax/configs/distill.py:dataset=${DATASET},gpu ${COMMON} \
  --config.teacher_workdir=${BUCKET}/runs/${DATASET}/pretrain \
  --config.global_batch=1024 --workdir=${BUCKET}/runs/${DATASET}/distill"
