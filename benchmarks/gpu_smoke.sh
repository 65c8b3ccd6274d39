#!/usr/bin/env bash
# GPU path check and throughput on a GPU machine without a package registry. Its image has
# PyTorch; the few pure-Python dependencies it lacks are carried as wheels, made beforehand with
#   pip download --no-deps -d .carry/wheels tyro docstring-parser typeguard
# Usage: STEPS=100 bash benchmarks/gpu_smoke.sh [extra pdclm overrides]
set -euo pipefail
python3 -m pip install -q --no-deps --root-user-action=ignore .carry/wheels/*.whl
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
OUT=${OUT:-/tmp/out}
python3 -m pdclm run --preset gpu --out "$OUT/run" --no-progress \
  --train.steps "${STEPS:-150}" --pse.entropy.steps 300 --train.eval-every 50 --train.ckpt-every 1000 \
  "$@" 2>&1 | tail -25
cp "$OUT/run/report.json" "$OUT/report.json"
