#!/usr/bin/env bash
# Training bytes/s and model FLOP utilisation of the `gpu` preset's Phase 1 on one GPU, with
# and without torch.compile. Runs where no package registry is reachable: the image has
# PyTorch, the pure-Python dependencies it lacks come as wheels made beforehand with
#   pip download --no-deps -d .carry/wheels tyro docstring-parser typeguard
# Only the project's own task generators are evaluated (reasoning-gym is not needed).
# Usage: STEPS=80 bash benchmarks/gpu_mfu.sh
set -euo pipefail
python3 -m pip install -q --no-deps --root-user-action=ignore .carry/wheels/{tyro,docstring,typeguard}*.whl
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for compile in no-compile compile; do
  python3 -m pdclm train pretrain --preset gpu --out "/tmp/compile_$compile" --no-progress \
    --train.steps "${STEPS:-80}" --pse.entropy.steps 300 --train.eval-every 1000 \
    --train.ckpt-every 1000 --train.log-every 5 --tasks.names arithmetic --tasks.eval-items 8 \
    "--train.$compile" > "$OUT/compile_$compile.log" 2>&1 || tail -30 "$OUT/compile_$compile.log"
  python3 - "/tmp/compile_$compile/metrics.jsonl" "$compile" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r["phase"] == "phase1/lm" and "mfu" in r]
late = rows[len(rows) // 2:]  # after warm-up and compilation
mean = lambda k: sum(r[k] for r in late) / len(late)
per_step = 8 * 8192 * 4  # gpu preset: batch x seq_len x grad_accum bytes
rate = (late[-1]["step"] - late[0]["step"]) * per_step / (late[-1]["time"] - late[0]["time"])
print(f"compile={sys.argv[2]}: {len(rows)} records; steady bytes/s {rate:,.0f}; "
      f"model TFLOP/s {mean('model_flops_per_s') / 1e12:.1f}; MFU {mean('mfu'):.1%}")
PY
done
