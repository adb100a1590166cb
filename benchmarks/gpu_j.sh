#!/usr/bin/env bash
# Device call J: designer through every path (plain, engine, agent over HTTP with Server-Timing and a
# recycle probe), bf16 then fp8. Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
timeout 290 "${Z[@]}" bench --arch full --profile designer --runs 5 \
  --cache-dir /tmp/zcache --json "$OUT/designer-j.json" 2>&1 | grep -v -i warn | tee "$OUT/designer.log"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee "$OUT/apps.txt"
ZITOPS_ACCEL=+fp8 timeout 260 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths engine,agent \
  --cache-dir /tmp/zcache-fp8 --json "$OUT/designer-fp8-j.json" 2>&1 | grep -v -i warn | tee "$OUT/fp8.log"
