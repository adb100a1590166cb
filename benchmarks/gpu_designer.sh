#!/usr/bin/env bash
# Device call A: lever study, then `zitops bench` for the designer profile at real size
# (baseline, engine, agent, every sampler), then the fp8 engine. Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
timeout 140 python3 benchmarks/levers.py --no-engine --out "$OUT/levers.json" 2>&1 | grep -v -i warn | tee "$OUT/levers.log"
timeout 280 "${Z[@]}" bench --arch full --profile designer --runs 5 --sampler-sweep all \
  --cache-dir /tmp/zcache --json "$OUT/designer.json" 2>&1 | grep -v -i warn | tee "$OUT/designer.log"
ZITOPS_ACCEL=+fp8 timeout 150 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths baseline,engine \
  --cache-dir /tmp/zcache-fp8 --json "$OUT/designer-fp8.json" 2>&1 | grep -v -i warn | tee "$OUT/designer-fp8.log"
