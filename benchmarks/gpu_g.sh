#!/usr/bin/env bash
# Device call G: call F again after the agent turned Nagle off (TCP_NODELAY), bf16 and fp8, each beside plain diffusers.
exec bash "$(dirname "$0")/gpu_f.sh" nodelay
