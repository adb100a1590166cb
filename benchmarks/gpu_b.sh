#!/usr/bin/env bash
# Device call B: designer (bf16, all paths) with the VAE-compile and attention levers,
# designer fp8 through the agent, the ecommerce batch sweep, and the agent with JPEG.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
timeout 190 "${Z[@]}" bench --arch full --profile designer --runs 5 \
  --cache-dir /tmp/zcache --json "$OUT/designer.json" 2>&1 | grep -v -i warn | tee "$OUT/designer.log"
ZITOPS_ACCEL=+fp8 timeout 170 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths engine,agent \
  --cache-dir /tmp/zcache-fp8 --json "$OUT/designer-fp8.json" 2>&1 | grep -v -i warn | tee "$OUT/designer-fp8.log"
timeout 140 "${Z[@]}" bench --arch full --profile ecommerce --runs 3 --paths engine --batch-sweep 1,2,4,8 \
  --cache-dir /tmp/zcache --json "$OUT/ecommerce.json" 2>&1 | grep -v -i warn | tee "$OUT/ecommerce.log"
timeout 60 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths agent --agent-format jpeg \
  --cache-dir /tmp/zcache --json "$OUT/designer-jpeg.json" 2>&1 | grep -v -i warn | tee "$OUT/designer-jpeg.log"
