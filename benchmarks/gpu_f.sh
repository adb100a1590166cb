#!/usr/bin/env bash
# Device call F: the agent path with the fast PNG writer, bf16 and fp8, each beside plain diffusers.
# Usage: gpu_f.sh [TAG]  (result files are named designer-TAG.json and designer-fp8-TAG.json)
set -u
tag=${1:-fastpng}
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=/tmp/zstate
Z=(python3 -c 'from zitops.cli import main; main()')
python3 - <<'PY' 2>&1 | tee "$OUT/png.log"
import io, json, time
import numpy as np
from PIL import Image
from zitops.engine.png_fast import encode_png
img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
encode_png(img)
t = time.perf_counter(); [encode_png(img) for _ in range(5)]; fast = (time.perf_counter() - t) / 5
t = time.perf_counter(); [img.save(io.BytesIO(), format="PNG", compress_level=1) for _ in range(3)]; pil = (time.perf_counter() - t) / 3
print(json.dumps({"png_1024_noise_ms": {"png_fast": round(fast * 1000, 1), "pillow_level1": round(pil * 1000, 1)}}))
PY
timeout 230 "${Z[@]}" bench --arch full --profile designer --runs 5 \
  --cache-dir /tmp/zcache --json "$OUT/designer-${tag}.json" 2>&1 | grep -v -i warn | tee "$OUT/designer.log"
ZITOPS_ACCEL=+fp8 timeout 260 "${Z[@]}" bench --arch full --profile designer --runs 5 \
  --cache-dir /tmp/zcache-fp8 --json "$OUT/designer-fp8-${tag}.json" 2>&1 | grep -v -i warn | tee "$OUT/fp8.log"
