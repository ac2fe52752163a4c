#!/bin/bash
# Issue 11 session 5, nvidia-h200-x2: tokens/s at T=2048 on 1 GPU (8 sequences) and on 2 GPUs
# with equal per-GPU batch (16) and equal global batch (8); then the longest T that trains on
# both GPUs, one sequence per GPU (jflash; memory fraction 0.95 of each GPU).
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 110 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 -- --devices 1 2>/dev/null | sed "s/^/devices=1 /" | tee $OUT/dp.jsonl
timeout 170 python examples/lm_speed.py --steps 30 --cases cudnn:2048:16 jflash:2048:16 cudnn:2048:8 jflash:2048:8 -- --devices 2 2>/dev/null | sed "s/^/devices=2 /" | tee -a $OUT/dp.jsonl
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout 280 python examples/lm_speed.py --longest jflash --batch-size 2 --min-seq-len 131072 --max-seq-len 262144 -- --devices 2 2>&1 | grep -v "^WARNING\|^I0\|^W0" | tail -5 | tee $OUT/longest.jsonl
