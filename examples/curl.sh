#!/usr/bin/env bash
# One image through the agent's A1111-compatible endpoint: the call the seed
# article makes, with the turbo model's own settings (8 steps, no CFG).
# Usage: examples/curl.sh [BASE_URL] [OUT.png]
# For an agent that requires tokens, export ZITOPS_TOKEN first.
set -euo pipefail
url=${1:-http://127.0.0.1:7860}
out=${2:-out.png}
auth=()
if [[ -n ${ZITOPS_TOKEN:-} ]]; then
  auth=(-H "Authorization: Bearer ${ZITOPS_TOKEN}")
fi
response=$(mktemp)
trap 'rm -f "$response"' EXIT
curl -fsS -X POST "$url/sdapi/v1/txt2img" \
  -H 'Content-Type: application/json' "${auth[@]}" \
  -d '{"prompt": "a ceramic coffee cup on a wooden table, natural lighting", "steps": 8, "width": 1024, "height": 1024, "cfg_scale": 0, "seed": 42, "batch_size": 1}' \
  -o "$response"
# The response is A1111's: {"images": ["<base64 PNG>", ...], "parameters": {...}, "info": "..."}
python3 - "$response" "$out" <<'PY'
import base64, json, sys
images = json.load(open(sys.argv[1]))["images"]
open(sys.argv[2], "wb").write(base64.b64decode(images[0]))
print(f"wrote {sys.argv[2]}")
PY
