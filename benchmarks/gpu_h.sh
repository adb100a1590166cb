#!/usr/bin/env bash
# Device call H: kernel and engine probe (FlashAttention-3, fused projections, compiled text encoder),
# then the designer profile's baseline + engine, bf16 and fp8. Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
timeout 200 python3 benchmarks/gpu_probe.py --out "$OUT/probe.json" 2>&1 | grep -v -i warn | tee "$OUT/probe.log"
timeout 200 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths baseline,engine \
  --cache-dir /tmp/zcache --json "$OUT/designer-h.json" 2>&1 | grep -v -i warn | tee "$OUT/designer.log"
ZITOPS_ACCEL=+fp8 timeout 150 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths engine \
  --cache-dir /tmp/zcache-fp8 --json "$OUT/designer-fp8-h.json" 2>&1 | grep -v -i warn | tee "$OUT/fp8.log"
