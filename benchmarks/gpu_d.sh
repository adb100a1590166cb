#!/usr/bin/env bash
# Device call D: cold load of real-size weights from local disk, and the agent's restart phases.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
timeout 150 python3 benchmarks/cold_load.py save /tmp/zimage-full 2>&1 | grep '^{' | tee "$OUT/cold_load.jsonl"
sync; if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then echo '{"page_cache_dropped": true}'; \
  else echo '{"page_cache_dropped": false}'; fi | tee -a "$OUT/cold_load.jsonl"
timeout 120 python3 benchmarks/cold_load.py load /tmp/zimage-full 2>&1 | grep '^{' | tee -a "$OUT/cold_load.jsonl"
timeout 60 python3 benchmarks/cold_load.py load /tmp/zimage-full 2>&1 | grep '^{' | tee -a "$OUT/cold_load.jsonl"
rm -rf /tmp/zimage-full
timeout 200 "${Z[@]}" bench --arch full --profile designer --runs 3 --paths engine,agent --cache-dir /tmp/zcache \
  --workdir /tmp/zwork --json "$OUT/restart.json" 2>&1 | grep -v -i warn | tee "$OUT/restart.log"
tail -c 200000 /tmp/zwork/designer/agent.stderr > "$OUT/agent-stderr.log"
find /tmp/zwork/designer/log -type f -name '*.log*' -print0 | xargs -0 cat | tail -c 400000 > "$OUT/agent-logs.jsonl"
