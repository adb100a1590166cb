#!/usr/bin/env bash
# Device call L: real-size weights on local disk; a recycled worker from a spare that preloaded them
# (restart probe), the designer agent path (overhead after the pixel-view change), then fp8 after the
# one-class fix (compile and warm restart). Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
timeout 70 python3 benchmarks/cold_load.py save /tmp/zfull 2>&1 | grep '^{' | tee "$OUT/save.jsonl"
timeout 200 python3 benchmarks/restart_probe.py --model /tmp/zfull --profile designer --kills 1 --set watchdog.restart_backoff_s=0 \
  --cache-dir /tmp/zcache --out "$OUT/restart-real-l.json" 2>&1 | grep -v -i warn | tail -60
timeout 130 "${Z[@]}" bench --model /tmp/zfull --profile designer --runs 5 --paths agent \
  --cache-dir /tmp/zcache --json "$OUT/designer-agent-l.json" 2>&1 | grep -v -i warn | tee "$OUT/agent.log"
ZITOPS_ACCEL=+fp8 timeout 150 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths engine,agent \
  --cache-dir /tmp/zcache-fp8 --json "$OUT/designer-fp8-l.json" 2>&1 | grep -v -i warn | tee "$OUT/fp8.log"
