#!/usr/bin/env bash
# The checks that need a GPU, on one CUDA GPU in under 10 minutes (docs/devices.md):
#   1. the tests marked `gpu` (they skip on the CPU), among them tests/test_fsdp.py's: the trainer
#      under accelerate's FSDP2 on up to 2 GPUs (their time is a guess: 2 of the 5 minutes);
#   2. the shipped model sampled on the GPU in fp32 and fp16 with the CPU's seed, compared with
#      the CPU fp32 video (tolerances below, from docs/devices.md's CPU measurements);
#   3. 200 steps of configs/moving_digits_small.yaml in bf16, stopped at step 100 and resumed.
# Usage: scripts/device_check.sh [OUT]   (PYTHON=... to pick the interpreter; OUT is replaced)
# Untested: it was written on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-build/device_check}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available() and 'no CUDA: nothing to check')"
nvidia-smi -L || true

echo "== 1. tests marked gpu"
timeout 300 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider

echo "== 2. shipped model: CPU fp32 vs GPU fp32 and fp16, one seed"
timeout 180 "$PY" - <<'PYTHON'
import time

import torch

from videofusion.assets import DEFAULT_MODEL_DIR
from videofusion.pipeline import load_pipeline

# max / mean |GPU - CPU| over pixels in [0, 1]; fp16 from the CPU's fp16-vs-fp32 (0.063 / 0.0005)
TOLERANCE = {"fp32": (0.05, 0.001), "fp16": (0.15, 0.002)}
run = dict(class_labels=[3, 7], num_frames=16, guidance_scale=4.0, progress=False)
pipe = load_pipeline(DEFAULT_MODEL_DIR)
run["num_inference_steps"] = pipe.default_steps
cpu = pipe(**run, generator=torch.Generator().manual_seed(0)).frames
pipe.to("cuda")
failed = False
for dtype, (worst, mean) in TOLERANCE.items():
    start = time.time()
    gpu = pipe(**run, generator=torch.Generator().manual_seed(0), dtype=dtype).frames
    seconds = time.time() - start
    diff = abs(gpu - cpu)
    ok = diff.max() <= worst and diff.mean() <= mean
    failed |= not ok
    print(f"{dtype}: max {diff.max():.4f} (<= {worst}), mean {diff.mean():.5f} (<= {mean}), "
          f"{seconds:.1f} s {'ok' if ok else 'FAILED'}")
raise SystemExit(failed)
PYTHON

echo "== 3. 200 bf16 training steps, stopped at 100 and resumed"
TRAIN=(-m videofusion.cli train --config configs/moving_digits_small.yaml --mixed-precision bf16
       --max-steps 200 --base-pretrain-steps 50 --lr-warmup-steps 20 --checkpoint-every 100
       --sample-every 1000 --log-every 20 --output-dir "$OUT/train")
timeout 120 "$PY" "${TRAIN[@]}" --stop-at-step 100
timeout 120 "$PY" "${TRAIN[@]}" --resume
test -d "$OUT/train/pipeline" && tail -n 1 "$OUT/train/metrics.jsonl"
echo "device check passed"
