#!/usr/bin/env bash
# Device call E: cold load of real-size weights from local disk (GB/s), page cache dropped.
set -u
export PYTHONUNBUFFERED=1
timeout 150 python3 benchmarks/cold_load.py save /tmp/zimage-full 2>&1 | grep -v -i warn | tail -3 | tee "$OUT/cold_load.log"
sync; if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then echo '{"page_cache_dropped": true}'; \
  else echo '{"page_cache_dropped": false}'; fi | tee -a "$OUT/cold_load.log"
timeout 200 python3 benchmarks/cold_load.py load /tmp/zimage-full 2>&1 | grep -v -i warn | tail -12 | tee -a "$OUT/cold_load.log"
timeout 100 python3 benchmarks/cold_load.py load /tmp/zimage-full 2>&1 | grep -v -i warn | tail -12 | tee -a "$OUT/cold_load.log"
