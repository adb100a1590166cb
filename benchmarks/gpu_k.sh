#!/usr/bin/env bash
# Device call K: ecommerce batch sweep on the current engine, then real-size weights saved to local
# disk and loaded back host-first versus straight onto the GPU (page cache warm, as on a recycle).
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
timeout 300 "${Z[@]}" bench --arch full --profile ecommerce --runs 3 --paths baseline,engine --batch-sweep 1,2,4,8 \
  --cache-dir /tmp/zcache-e --json "$OUT/ecommerce-k.json" 2>&1 | grep -v -i warn | tee "$OUT/ecommerce.log"
timeout 120 python3 benchmarks/cold_load.py save /tmp/zfull 2>&1 | grep '^{' | tee "$OUT/load.jsonl"
for mode in load load-direct load-direct load; do
  timeout 60 python3 benchmarks/cold_load.py "$mode" /tmp/zfull 2>&1 | grep '^{' | tee -a "$OUT/load.jsonl"
done
