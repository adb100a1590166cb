#!/usr/bin/env bash
# The GPU benchmarks, one named scenario each:
#
#   benchmarks/device.sh SCENARIO...     run them in order; results land in $OUT (default ./bench-out)
#   benchmarks/device.sh list            name and one line per scenario
#
# Each scenario is one measurement the one-off device calls A-L made (their
# letters are noted), without the repeats. The newest result of each is kept
# in examples/benchmarks/ and listed in examples/benchmarks/index.json, from
# which `python -m zitops.bench.table` prints the README's table.
# Scenarios marked (weights) need real-size weights on disk: they run
# `weights` first when $WEIGHTS does not exist yet.
set -u
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/bench-out}
WEIGHTS=${WEIGHTS:-/tmp/zfull}
# A bytecode cache the `bytecode` scenario filled: every later scenario reads it (a zitops image ships its .pyc).
PYC=${PYC:-/tmp/zpyc}
if [ -d "$PYC" ]; then export PYTHONPYCACHEPREFIX=$PYC; echo "bytecode from $PYC" >&2; fi
export PYTHONUNBUFFERED=1 ZITOPS_STATE_DIR=${ZITOPS_STATE_DIR:-/tmp/zstate}
Z=(python3 -c 'from zitops.cli import main; main()')

quiet() { grep -v -i warn; }

# bench NAME SECONDS ARGS...: `zitops bench ARGS` at real size, JSON to $OUT/NAME.json
bench() {
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "${Z[@]}" bench "$@" --json "$OUT/$name.json" 2>&1 | quiet | tee "$OUT/$name.log"
}

need_weights() { [ -d "$WEIGHTS" ] || scenario_weights; }

scenario_card() { # the card, its memory and driver (every call)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
}
scenario_levers() { # what each speed lever is worth, one process, plain pipeline beside it (A)
  timeout 140 python3 benchmarks/levers.py --no-engine --out "$OUT/levers.json" 2>&1 | quiet | tee "$OUT/levers.log"
}
scenario_designer() { # designer bf16: plain diffusers, engine, agent over HTTP with Server-Timing (A B F G J; H I: first two)
  # DESIGNER_PATHS=engine,agent leaves plain diffusers out (a shorter call); DESIGNER_LIMIT its time.
  bench designer "${DESIGNER_LIMIT:-290}" --arch full --profile designer --runs 5 --cache-dir /tmp/zcache \
    ${DESIGNER_PATHS:+--paths "$DESIGNER_PATHS"}
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee "$OUT/designer-apps.txt"
}
scenario_first_request() { # ready means fast: first requests after /readyz, warm-up off then on, cold caches (issue 13)
  for w in false auto; do
    rm -rf "/tmp/zcache-first-$w"
    timeout 290 python3 benchmarks/first_request.py --arch full --profile designer --set "engine.warmup=$w" \
      --cache-dir "/tmp/zcache-first-$w" --out "$OUT/first-request-warmup-$w.json" 2>&1 | quiet | tail -40
  done
  python3 -c 'import json, sys; json.dump({f"warmup_{w}": json.load(open(f"{sys.argv[1]}/first-request-warmup-{w}.json")) for w in ("false", "auto")}, open(f"{sys.argv[1]}/first-request.json", "w"), indent=1)' "$OUT"
}
# warm_into NAME SETS...: a designer deployment (full-random) in /tmp/zdep-NAME, then `zitops warm` into its cache
warm_into() {
  local name=$1
  shift
  rm -rf "/tmp/zdep-$name"
  # deploy renders the path of a `zitops` executable; the device image has the tree, not an install
  # (the 2026-11-29 run failed here): a shim on PATH stands in for it.
  mkdir -p /tmp/zbin
  printf '#!/bin/sh\nexec python3 -c "from zitops.cli import main; main()" "$@"\n' > /tmp/zbin/zitops
  chmod +x /tmp/zbin/zitops
  export PATH="/tmp/zbin:$PATH"
  "${Z[@]}" deploy --out "/tmp/zdep-$name" --target systemd --model full-random --profile designer "$@" > /dev/null
  timeout 300 "${Z[@]}" warm --config "/tmp/zdep-$name/config.yaml" --json > "$OUT/warm-$name.json"
}
scenario_warm_bf16() { # zitops warm into a fresh designer deployment's cache (cold caches) (issue 13)
  warm_into bf16
}
scenario_warm_fp8() { # zitops warm, designer with engine.fp8=true (its own cache) (issue 13)
  warm_into fp8 --set engine.fp8=true
}
scenario_first_size_new() { # phases of the 1st and 2nd request per size after zitops' warm-up (after warm-bf16) (issue 13)
  timeout "${FIRST_LIMIT:-150}" python3 benchmarks/first_size.py --arch full --plan new \
    --cache-dir /tmp/zdep-bf16/cache --out "$OUT/first-size-new.json" 2>&1 | quiet | tail -25
}
scenario_first_size_old() { # the same after the old warm-up (A, B; autotuning on), dynamo's saved profile ignored (issue 13)
  timeout "${FIRST_LIMIT:-150}" python3 benchmarks/first_size.py --arch full --plan old --no-pgo \
    --cache-dir /tmp/zdep-bf16/cache --out "$OUT/first-size-old.json" --profile-size "" 2>&1 | quiet | tail -25
}
scenario_restart_hot_fp8() { # kill -9 with a hot spare, designer fp8 (after warm-fp8) (issue 13)
  timeout "${FP8_LIMIT:-250}" python3 benchmarks/restart_probe.py --arch full --profile designer --kills 1 \
    --set watchdog.hot_spare=true --set engine.fp8=true --cache-dir /tmp/zdep-fp8/cache \
    --out "$OUT/restart-hot-fp8.json" 2>&1 | quiet | tail -30
}
scenario_lane_hot_spare() { # the GPU lane's hot spare test (issue 13)
  timeout 280 python3 -m pytest -o addopts=-ra -m gpu tests/gpu/test_gpu_hot_spare.py -v -rs -s -p no:cacheprovider 2>&1 \
    | tee -a "$OUT/gpu-lane.log" | tail -15
}
scenario_lane_leak() { # the GPU lane's real leak drill, alone on the card: NVML's line is device-wide (issue 13)
  timeout 280 python3 -m pytest -o addopts=-ra -m gpu tests/gpu/test_gpu_leak_drill.py -v -rs -s -p no:cacheprovider 2>&1 \
    | tee -a "$OUT/gpu-lane.log" | tail -15
}
scenario_scaleup() { # a second agent at t=0 against a 100-job queue: imported compile bundle, one agent, cold (issue 26)
  timeout 560 python3 benchmarks/scaleup.py --arch full --profile designer --jobs 100 --scenarios imported,one,cold \
    --workdir /tmp/zscale --out "$OUT/scaleup.json" 2>&1 | quiet | tail -30
}
scenario_scaleup_alone() { # zitops warm --export on cold caches, then a new agent alone with the bundle: start to ready, first request (issue 26)
  timeout "${ALONE_LIMIT:-400}" python3 benchmarks/scaleup.py --arch full --profile designer --jobs 6 --scenarios alone \
    --workdir /tmp/zscale --ready-timeout 300 --out "$OUT/scaleup-alone.json" 2>&1 | quiet | tail -30
}
scenario_scaleup_alone_fp8() { # scaleup-alone with engine.fp8=true (its own cold caches and bundle): ready, first request (issue 26)
  timeout "${ALONE_LIMIT:-400}" python3 benchmarks/scaleup.py --arch full --profile designer --jobs 6 --scenarios alone \
    --set engine.fp8=true --workdir /tmp/zscale-fp8 --ready-timeout 300 --out "$OUT/scaleup-alone-fp8.json" 2>&1 \
    | quiet | tail -30
}
scenario_import_profile() { # what a GPU worker's imports cost: python -X importtime, then py-spy if installed (issue 26)
  python3 -X importtime benchmarks/worker_imports.py --profile designer --list old 2> "$OUT/importtime.txt" | tail -1
  gzip -f "$OUT/importtime.txt"
  if command -v py-spy > /dev/null; then
    py-spy record -r 250 -f raw -o "$OUT/import-pyspy.txt" -- python3 benchmarks/worker_imports.py --profile designer \
      --list old 2>&1 | tail -2 && gzip -f "$OUT/import-pyspy.txt"
  fi
}
scenario_bytecode() { # a worker's imports without bytecode, then with every sys.path entry compiled into $PYC (issue 26)
  # The device image ships no .pyc and its workers run with -B: every process compiles its imports from
  # source, which zitops' image avoids (Containerfile: compileall). This compiles them once into the
  # PYTHONPYCACHEPREFIX $PYC, which later scenarios of this call, and of later calls, then read.
  : > "$OUT/bytecode.jsonl"
  for _ in 1 2; do
    env -u PYTHONPYCACHEPREFIX python3 -B benchmarks/worker_imports.py --profile designer --list old 2> /dev/null \
      | sed 's/^{/{"bytecode": false, /' | tee -a "$OUT/bytecode.jsonl"
  done
  local t0=$SECONDS
  # shellcheck disable=SC2046 # one directory per word
  PYTHONPYCACHEPREFIX=$PYC python3 -m compileall -q -j 0 \
    $(python3 -c 'import os, sys; print(" ".join(p for p in sys.path if p and os.path.isdir(p)))') > /dev/null 2>&1
  echo "{\"compileall_s\": $((SECONDS - t0)), \"pyc_files\": $(find "$PYC" -name '*.pyc' | wc -l)}" | tee -a "$OUT/bytecode.jsonl"
  export PYTHONPYCACHEPREFIX=$PYC
  for _ in 1 2; do
    python3 -B benchmarks/worker_imports.py --profile designer --list old 2> /dev/null \
      | sed 's/^{/{"bytecode": true, /' | tee -a "$OUT/bytecode.jsonl"
  done
}
scenario_warmup_profile() { # (after scaleup-alone) a new worker's imports and warm-up under py-spy: zitops warm --import, empty cache (issue 26)
  local cfg=/tmp/zscale/b-alone/config.yaml
  if [ ! -f "$cfg" ] || ! command -v py-spy > /dev/null; then
    echo "skipped: needs scaleup-alone's deployment and py-spy"
    return 0
  fi
  rm -rf /tmp/zscale/b-alone/cache
  timeout "${WARMPROF_LIMIT:-200}" py-spy record --subprocesses --nonblocking -r 100 -f raw -o "$OUT/warmup-pyspy.txt" \
    -- "${Z[@]}" warm --config "$cfg" --import /tmp/zscale/fleet.zcc --json > "$OUT/warmup-profile.json" 2> "$OUT/warmup-profile.log"
  tail -3 "$OUT/warmup-profile.log"
  gzip -f "$OUT/warmup-pyspy.txt"
}
scenario_spare_load() { # p50/p90/p99 under 12 clients while a hot spare builds: spare_build always, then idle (issue 26)
  # ~280 s on an H100 with /tmp/zcache warm (after designer or restart-hot); a cold cache adds the compile.
  timeout "${SPARE_LIMIT:-300}" python3 benchmarks/spare_load.py --arch full --profile designer --clients 12 \
    --policies "${SPARE_POLICIES:-always:60,idle:25}" --spare-timeout 60 --cache-dir /tmp/zcache \
    --out "$OUT/spare-load.json" 2>&1 | quiet | tail -12
}
scenario_first_trace() { # torch.profiler of the 1st and 2nd request after the warm-up, designer bf16: top differing ops (issue 26)
  # ~150 s on an H100 with /tmp/zcache warm; the traces (gzipped) land in $OUT/first-trace/.
  timeout "${TRACE_LIMIT:-200}" python3 benchmarks/first_size.py --arch full --plan new --trace-first \
    --cache-dir /tmp/zcache --trace-dir "$OUT/first-trace" --out "$OUT/first-trace.json" 2>&1 | quiet | tail -32
}
scenario_lane_compile_bundle() { # the GPU lane's compile bundle test: an imported bundle compiles nothing (issue 26)
  timeout 280 python3 -m pytest -o addopts=-ra -m gpu tests/gpu/test_gpu_compile_bundle.py -v -rs -s -p no:cacheprovider 2>&1 \
    | tee -a "$OUT/gpu-lane.log" | tail -15
}
scenario_designer_samplers() { # designer with every sampler (A)
  bench designer-samplers 280 --arch full --profile designer --runs 5 --sampler-sweep all --cache-dir /tmp/zcache
}
scenario_designer_fp8() { # designer with fp8 linears: engine and agent (A B F G H J L)
  ZITOPS_ACCEL=+fp8 bench designer-fp8 260 --arch full --profile designer --runs 5 --paths engine,agent \
    --cache-dir /tmp/zcache-fp8
}
scenario_designer_jpeg() { # the agent path answering JPEG instead of PNG (B)
  bench designer-jpeg 60 --arch full --profile designer --runs 5 --paths agent --agent-format jpeg --cache-dir /tmp/zcache
}
scenario_ecommerce() { # ecommerce: plain and engine, batch sweep 1/2/4/8 (B C K)
  bench ecommerce 300 --arch full --profile ecommerce --runs 3 --paths baseline,engine --batch-sweep 1,2,4,8 \
    --cache-dir /tmp/zcache-e
}
scenario_poster() { # poster: plain and engine (C)
  bench poster 120 --arch full --profile poster --runs 3 --paths baseline,engine --cache-dir /tmp/zcache
}
scenario_lowvram() { # lowvram (fp8 resident): plain bf16 and engine, fp8 deviation from bf16 (C; issue 14)
  bench lowvram 200 --arch full --profile lowvram --runs 3 --paths baseline,engine --compare bf16 \
    --cache-dir /tmp/zcache
}
scenario_lowvram_compile() { # lowvram with engine.compile=true, cold compile cache: is compile worth it (issue 14)
  bench lowvram-compile 150 --arch full --profile lowvram --set engine.compile=true --runs 3 --paths engine \
    --cache-dir /tmp/zcache-lc
}
scenario_ecommerce_fp8() { # ecommerce with engine.fp8=true: engine images/min, deviation from bf16 (issue 14)
  bench ecommerce-fp8 220 --arch full --profile ecommerce --set engine.fp8=true --runs 3 --paths engine \
    --compare bf16 --cache-dir /tmp/zcache-e8
}
scenario_tiers() { # each low-VRAM tier under its card's memory less 0.5 GiB of CUDA context: 11.5, 7.5, 15.5 GiB (issue 14)
  # One process per tier: the JSON is written at the end of a run, so a tier cut short loses only itself.
  bench tiers-12 150 --arch full --profile lowvram-12 --runs 3 --paths engine --memory-cap-gib 11.5
  bench tiers-8 180 --arch full --profile lowvram-8 --runs 3 --paths engine --memory-cap-gib 7.5
  bench tiers-16 150 --arch full --profile lowvram --runs 3 --paths engine --memory-cap-gib 15.5
  merge_json tiers tiers-12 tiers-8 tiers-16
}
scenario_tiers_8_te() { # the 8 GiB tier with lowvram-12's mechanism (text encoder streamed, the rest resident) (issue 14)
  bench tiers-8-te 150 --arch full --profile lowvram-8 --set engine.offload=text_encoder --runs 3 --paths engine \
    --memory-cap-gib 7.5
}
scenario_h2d() { # host-to-GPU copy speed: pageable .to() against zitops' pinned staging, and pinning (issue 14)
  timeout 120 python3 benchmarks/h2d.py --gib 2 --out "$OUT/h2d.json" 2>&1 | quiet | tail -12
}
scenario_ecommerce_fp8_taef1() { # ecommerce fp8 with its fast decode (a random TAEF1-shaped decoder): images/min, deviation (issue 14)
  python3 benchmarks/taef1.py /tmp/taef1 > /dev/null
  bench ecommerce-fp8-taef1 260 --arch full --profile ecommerce --set engine.fp8=true \
    --set engine.tiny_vae_path=/tmp/taef1 --runs 3 --paths engine --compare bf16 --cache-dir /tmp/zcache-e8
}
scenario_tiers_choice() { # bf16 group offload (pinned, copy stream) under the 12 GiB cap, against lowvram-12's fp8 (issue 14)
  bench tiers-choice-group-12 240 --arch full --profile benchmarks/tiers/group-12.yaml --runs 2 --warmup 1 \
    --paths engine --memory-cap-gib 12
}
# merge_json NAME PART...: the parts' bench JSON (those that exist) as one file, $OUT/NAME.json
merge_json() {
  local name=$1
  shift
  python3 - "$OUT" "$name" "$@" <<'PY'
import json, pathlib, sys
out, name, parts = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
found = [json.loads((out / f"{p}.json").read_text()) for p in parts if (out / f"{p}.json").is_file()]
if found:
    merged = {**found[0], "runs": [r for f in found for r in f["runs"]]}
    (out / f"{name}.json").write_text(json.dumps(merged, indent=1) + "\n")
PY
}
scenario_png() { # the PNG writer against Pillow on a 1024x1024 noise image (F)
  python3 - <<'PY' 2>&1 | tee "$OUT/png.json"
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
}
scenario_kernels() { # kernel ceilings at the designer's shapes, then the engine probe (H)
  timeout 200 python3 benchmarks/gpu_probe.py --out "$OUT/kernels.json" 2>&1 | quiet | tee "$OUT/kernels.log"
}
scenario_probe_engine() { # where one designer image spends its time (torch.profiler), kernels skipped (I)
  timeout 200 python3 benchmarks/gpu_probe.py --skip-kernels --out "$OUT/probe-engine.json" 2>&1 | quiet \
    | tee "$OUT/probe-engine.log"
}
scenario_weights() { # real-size random weights saved to $WEIGHTS (about 20 GB; D E K L)
  timeout 150 python3 benchmarks/cold_load.py save "$WEIGHTS" 2>&1 | grep '^{' | tee "$OUT/weights.jsonl"
}
scenario_cold_load() { # (weights) load with the page cache dropped, then warm (D E)
  need_weights
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then echo '{"page_cache_dropped": true}'; \
    else echo '{"page_cache_dropped": false}'; fi | tee "$OUT/cold-load.jsonl"
  for _ in 1 2; do
    timeout 200 python3 benchmarks/cold_load.py load "$WEIGHTS" 2>&1 | grep '^{' | tee -a "$OUT/cold-load.jsonl"
  done
}
scenario_load_direct() { # (weights) host-first against straight onto the GPU, page cache warm (K)
  need_weights
  : > "$OUT/load-direct.jsonl"
  for mode in load load-direct load-direct load; do
    timeout 60 python3 benchmarks/cold_load.py "$mode" "$WEIGHTS" 2>&1 | grep '^{' | tee -a "$OUT/load-direct.jsonl"
  done
}
scenario_restart() { # the agent's restart phases, with its logs kept (D)
  bench restart 200 --arch full --profile designer --runs 3 --paths engine,agent --cache-dir /tmp/zcache \
    --workdir /tmp/zwork
  tail -c 200000 /tmp/zwork/designer/agent.stderr > "$OUT/restart-agent-stderr.log"
  find /tmp/zwork/designer/log -type f -name '*.log*' -print0 | xargs -0 cat | tail -c 400000 \
    > "$OUT/restart-agent-logs.jsonl"
}
scenario_restart_weights() { # (weights) kill -9 a worker; its successor starts from a preloaded spare (L)
  need_weights
  timeout 200 python3 benchmarks/restart_probe.py --model "$WEIGHTS" --profile designer --kills 1 \
    --set watchdog.restart_backoff_s=0 --cache-dir /tmp/zcache --out "$OUT/restart-weights.json" 2>&1 | quiet | tail -60
}
scenario_restart_hot() { # kill -9 the worker twice with a hot spare on: the loaded spare takes over (issue 13)
  timeout 580 python3 benchmarks/restart_probe.py --arch full --profile designer --kills 2 \
    --set watchdog.hot_spare=true --cache-dir /tmp/zcache --out "$OUT/restart-hot.json" 2>&1 | quiet | tail -60
}
scenario_agent_weights() { # (weights) the designer agent path serving real-size weights from disk (L)
  need_weights
  bench agent-weights 130 --model "$WEIGHTS" --profile designer --runs 5 --paths agent --cache-dir /tmp/zcache
}
scenario_features() { # progress and preview (latent, VAE) cost per image, ControlNet load and s/image, LoRA hot-swap (issue 15)
  timeout 500 python3 benchmarks/features.py --profile designer --runs 2 --out "$OUT/features.json" 2>&1 | quiet | tee "$OUT/features.log"
}

scenario_http_overhead() { # the agent alone (fault engine, noise 1024x1024 PNG) on this host's CPU: every stage, overhead (issue 29)
  timeout 150 python3 benchmarks/http_overhead.py --runs 40 --json "$OUT/http-overhead.json" 2>&1 | quiet | tail -16
}
scenario_pixel_transfer() { # a worker's 1024x1024 pixels to the agent: pickled over the pipe against /dev/shm (issue 29)
  timeout 120 python3 benchmarks/pixel_transfer.py --runs 40 --json "$OUT/pixel-transfer.json" 2>&1 | quiet | tail -4
}
# SOAK_CACHE=/tmp/zcache (after designer) skips the soaks' own compile; SOAK_/LEAK_LIMIT and _MINUTES fit a call.
scenario_soak() { # real-size soak, full-random, mixed traffic; about 8 min a call, resumable: rerun to extend (issue 29)
  # The same /tmp/zsoak (deployment, job store, samples, compile cache) on every call while the machine is
  # held; the verdict, JSON and plot in $OUT cover every call so far. SOAK_RESET=1 starts over.
  timeout "${SOAK_LIMIT:-480}" python3 benchmarks/soak.py --model full-random --profile designer --workdir /tmp/zsoak \
    ${SOAK_RESET:+--reset} ${SOAK_CACHE:+--cache-dir "$SOAK_CACHE"} --minutes "${SOAK_MINUTES:-7.2}" --steps 8 \
    --warmup-jobs "${SOAK_WARMUP:-40}" --label soak --out-dir "$OUT" 2>&1 | quiet | tail -40
}
scenario_soak_leak() { # the soak's negative control: faults.leak_memory real, 1 GiB a job; the watchdog must recycle (issue 29)
  timeout "${LEAK_LIMIT:-300}" python3 benchmarks/soak.py --model full-random --profile designer --workdir /tmp/zsoak-leak \
    --reset ${SOAK_CACHE:+--cache-dir "$SOAK_CACHE"} --leak-mib 1024 --minutes "${LEAK_MINUTES:-4}" --steps 8 \
    --kill-every 0 --lora-every 0 --label soak-leak --out-dir "$OUT" \
    2>&1 | quiet | tail -20
}
scenario_goodput() { # completed requests/s meeting p95 <= 2x single latency at 1, 4, 12, 32 clients, designer (issue 29)
  timeout 480 python3 benchmarks/goodput.py --model full-random --profile designer --cache-dir /tmp/zcache \
    --per-client 2 --label goodput --json "$OUT/goodput.json" 2>&1 | quiet | tail -12
}

scenario_worker_profile() { # the worker's engine call against the in-process engine, torch.profiler traces of each (issue 29)
  timeout 420 python3 benchmarks/worker_profile.py --model full-random --profile designer --cache-dir /tmp/zcache \
    --runs 5 --warmup 2 --out "$OUT" 2>&1 | quiet | tail -12
}

# needs_gpus N: false (saying why) on a machine with fewer than N GPUs; the scenario then records nothing.
needs_gpus() {
  local have
  have=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
  [ "$have" -ge "$1" ] && return 0
  echo "skipped: needs $1 GPUs (a 2-GPU kind: nvidia-h100-x2, nvidia-h200-x2 or larger); this machine has $have" \
    | tee "$OUT/needs-gpus.txt"
  return 1
}
scenario_multi_gpu() { # (2 GPUs) images/min of 1 worker against one per GPU, ecommerce, full-random; target 1.9x (issue 30)
  # The first phase (one worker) compiles into /tmp/zcache-mg; the second starts every worker on it warm.
  needs_gpus 2 || return 0
  timeout "${MG_LIMIT:-560}" python3 benchmarks/multi_gpu.py --model full-random --profile ecommerce \
    --gpus "${MG_GPUS:-0,1}" --jobs-per-worker "${MG_JOBS:-12}" --cache-dir /tmp/zcache-mg \
    --json "$OUT/multi-gpu.json" 2>&1 | quiet | tail -8
}
scenario_lane_multi_gpu() { # (2 GPUs) the GPU lane's one-worker-per-GPU tests: cards by UUID, kill -9 of one, two compiles at once (issue 30)
  needs_gpus 2 || return 0
  timeout "${LANE_MG_LIMIT:-560}" python3 -m pytest -o addopts=-ra -m gpu tests/gpu/test_gpu_workers.py -v -rs -s \
    -p no:cacheprovider --durations=0 2>&1 | tee -a "$OUT/gpu-lane.log" | tail -25
}
scenario_parallel() { # (2 GPUs) one image across 2 GPUs: designer bf16 1024² engine, 1 GPU vs ulysses 2 vs ring 2, same pixels (issue 30)
  # PARALLEL_SETS="--set engine.compile=false" if compiling with the context-parallel hooks fails on the GPU.
  needs_gpus 2 || return 0
  # shellcheck disable=SC2086 # PARALLEL_SETS is split into its words on purpose
  timeout "${PARALLEL_LIMIT:-560}" python3 benchmarks/parallel.py --model full-random --profile designer \
    --kinds 1 ulysses2 ring2 --cache-dir /tmp/zcache-parallel ${PARALLEL_SETS:-} --out "$OUT/parallel.json" \
    2>&1 | quiet | tail -12
}
scenario_lane_parallel() { # (2 GPUs) the GPU lane's context-parallel test: nccl, real size, ulysses and ring, PSNR >= 40 dB (issue 30)
  needs_gpus 2 || return 0
  timeout "${LANE_PAR_LIMIT:-560}" python3 -m pytest -o addopts=-ra -m gpu tests/gpu/test_gpu_parallel.py -v -rs -s \
    -p no:cacheprovider --durations=0 2>&1 | tee -a "$OUT/gpu-lane.log" | tail -25
}

scenarios() { declare -F | sed -n 's/^declare -f scenario_//p' | tr _ -; }

if [ $# -eq 0 ] || [ "$1" = "list" ]; then
  for s in $(scenarios); do
    printf '%-18s %s\n' "$s" "$(grep -m1 "^scenario_${s//-/_}()" "$0" | sed 's/.*# //')"
  done
  [ $# -eq 0 ] && { echo "usage: $0 SCENARIO... (results in \$OUT)" >&2; exit 2; }
  exit 0
fi
for s in "$@"; do
  if ! declare -F "scenario_${s//-/_}" > /dev/null; then
    echo "unknown scenario: $s (see: $0 list)" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
for s in "$@"; do
  echo "== $s" >&2
  "scenario_${s//-/_}"
done
