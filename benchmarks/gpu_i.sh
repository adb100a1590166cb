#!/usr/bin/env bash
# Device call I: the engine probe again with the text encoder in CUDA graphs (gaps listed), then the
# designer engine beside plain diffusers. Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
timeout 200 python3 benchmarks/gpu_probe.py --skip-kernels --out "$OUT/probe-i.json" 2>&1 | grep -v -i warn | tee "$OUT/probe.log"
timeout 150 "${Z[@]}" bench --arch full --profile designer --runs 5 --paths baseline,engine \
  --cache-dir /tmp/zprobe-cache --json "$OUT/designer-i.json" 2>&1 | grep -v -i warn | tee "$OUT/designer.log"
