#!/usr/bin/env bash
# The native async jobs API with curl: submit, poll until final, fetch the images.
# Usage: examples/client_native.sh [BASE_URL] [OUT_PREFIX]
# For an agent that requires tokens, export ZITOPS_TOKEN first.
set -euo pipefail
url=${1:-${ZITOPS_URL:-http://127.0.0.1:7860}}
prefix=${2:-native}
auth=()
if [[ -n ${ZITOPS_TOKEN:-} ]]; then
  auth=(-H "Authorization: Bearer ${ZITOPS_TOKEN}")
fi
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d'"$1"')'; }

# 202 Accepted with {"id": ...}; 429/503 with Retry-After when the queue is full.
job=$(curl -fsS -X POST "$url/v1/jobs" "${auth[@]}" -H 'Content-Type: application/json' \
  -d '{"prompt": "a ceramic coffee cup on a wooden table, natural lighting", "seed": 42, "n": 2}' | json '["id"]')
echo "job $job queued"

status=queued
for _ in $(seq 1 600); do
  status=$(curl -fsS "${auth[@]}" "$url/v1/jobs/$job" | json '["status"]')
  case $status in
    succeeded|failed|cancelled) break ;;
  esac
  sleep 0.5
done
if [[ $status != succeeded ]]; then
  echo "job $job ended $status:" >&2
  curl -fsS "${auth[@]}" "$url/v1/jobs/$job" >&2
  exit 1
fi

count=$(curl -fsS "${auth[@]}" "$url/v1/jobs/$job" | json '["images"].__len__()')
for ((i = 0; i < count; i++)); do
  curl -fsS "${auth[@]}" "$url/v1/jobs/$job/images/$i" -o "$prefix-$i.png"
  echo "wrote $prefix-$i.png"
done
