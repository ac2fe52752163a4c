#!/bin/bash
# Issue 11 session 7 call 2, nvidia-h200-x2: the equal-global-batch jflash case that call 1
# (scripts/x2_s5.sh) lost to its 170 s timeout, with cuDNN again in the same process; then
# T=262144 on both GPUs, one sequence per GPU (call 1's search stopped after T=131072 at its
# 280 s timeout).
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 python examples/lm_speed.py --steps 30 --cases jflash:2048:8 cudnn:2048:8 -- --devices 2 2>/dev/null | sed "s/^/devices=2 /" | tee $OUT/dp2.jsonl
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout 400 python examples/lm_speed.py --longest jflash --batch-size 2 --min-seq-len 262144 --max-seq-len 262144 -- --devices 2 2>&1 | grep -v "^WARNING\|^I0\|^W0" | tail -5 | tee $OUT/longest2.jsonl
