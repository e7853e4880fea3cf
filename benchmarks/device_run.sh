#!/usr/bin/env bash
# The accelerator benchmarks (scale issue, item 5) as one prepared command for a lent GPU
# machine: JAX, PyTorch, flax, optax, orbax and einops are installed there; TensorFlow and
# ml_collections are not, and nothing can be downloaded. The timed steps import without
# TensorFlow; ml_collections travels as a wheel.
#
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform any -d .whl ml_collections==1.1.0
#   on the GPU:  bash benchmarks/device_run.sh      (carry .whl; about 8 minutes)
#
# Writes to $OUT (default benchmarks/results): accelerator_torch_reference.json (ResNet-18 at
# 128 px, bf16 and float32: JAX and PyTorch step times, their ratio, FLOPs and MFU),
# accelerator_train_steps.json (the `gpu` configs' teacher and distill steps), and log.
# Extra arguments go to run_all.py (e.g. --quick).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  python3 -c "import jax, flax, optax, orbax.checkpoint; print('jax', jax.__version__, \
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" || true
} 2>&1 | tee "$OUT/log"
# The JAX/PyTorch figures first: each run writes its own JSON, so a timeout in the second
# keeps the first.
for name in torch_reference train_steps; do
  python3 benchmarks/run_all.py --only "$name" --out "$OUT/accelerator_$name.json" "$@" \
    2>&1 | tee -a "$OUT/log" | grep -E "^\[run_all\]|Error|error" || true
done
