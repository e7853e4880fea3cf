#!/usr/bin/env bash
# The accelerator benchmarks (accelerator-speed issue, item 5) as one prepared command for a
# lent GPU machine: JAX, PyTorch, flax, optax, orbax, chex and einops are installed there;
# TensorFlow and ml_collections are not, and nothing can be downloaded. The timed steps import
# without TensorFlow; ml_collections travels as a wheel.
#
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform any -d .whl ml_collections==1.1.0
#   on the GPU:  bash benchmarks/device_run.sh      (carry .whl; under 8 minutes)
#   on CPU:      bash benchmarks/device_run.sh --quick   (the same paths on tiny models)
#
# What it measures (`benchmarks/accel.py`, one process at a time, `accel.SEQUENTIAL_PLAN`):
# the `gpu` teacher step (ResNet-18, bf16, 128 px, 8 views per shape) at today's settings and
# under each optimisation variant (config overrides, batch per device, XLA flags), the distill
# step, the PyTorch twin under torch.compile (default, then max-autotune-no-cudagraphs if time
# is left), model FLOPs (traced: the same on every backend) and MFU for every row, and a kernel
# profile of the first step. Writes to $OUT (default benchmarks/results/accel), rewritten
# after every process: jax_variants.json, torch.json, profile.json, accel_sweep.json (every
# row, with the ratios), accel.log and log. The budget (--budget=SECONDS, default 400) ends
# the plan wherever it has got to; with the start-up the run stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/accel}
mkdir -p "$OUT"
QUICK=()
BUDGET=400
for a in "$@"; do
  case $a in
    --quick) QUICK=(--quick) ;;
    --concurrent) QUICK+=(--concurrent) ;;  # lanes side by side (triage only: accel.py)
    --budget=*) BUDGET=${a#--budget=} ;;
  esac
done
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', \
flax.__version__, 'optax', optax.__version__)"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" || true
  nproc
} 2>&1 | tee "$OUT/log"
timeout $((BUDGET + 40)) python3 benchmarks/accel.py --out "$OUT" --budget "$BUDGET" \
  "${QUICK[@]}" 2>&1 | tee -a "$OUT/log"
