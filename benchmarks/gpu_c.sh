#!/usr/bin/env bash
# Device call C: ecommerce batch sweep, poster and lowvram (model offload) at real size.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
timeout 270 "${Z[@]}" bench --arch full --profile ecommerce --runs 2 --paths baseline,engine --batch-sweep 4,1,2,8 \
  --cache-dir /tmp/zcache --json "$OUT/ecommerce.json" 2>&1 | grep -v -i warn | tee "$OUT/ecommerce.log"
timeout 120 "${Z[@]}" bench --arch full --profile poster --runs 3 --paths baseline,engine \
  --cache-dir /tmp/zcache --json "$OUT/poster.json" 2>&1 | grep -v -i warn | tee "$OUT/poster.log"
timeout 150 "${Z[@]}" bench --arch full --profile lowvram --runs 2 --paths baseline,engine \
  --cache-dir /tmp/zcache --json "$OUT/lowvram.json" 2>&1 | grep -v -i warn | tee "$OUT/lowvram.log"
