#!/bin/bash
# Issue 10 session 15, fifth call: the quick bench (H = 128 shapes, jflash's default
# against cuDNN in one process), then issue 11's MFU at T = 2048 with cuDNN and jflash
# (examples/lm_speed.py, median steps; two rounds).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 230 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick.log 2>&1
tail -20 $OUT/quick.log
timeout 330 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 jflash:2048:8 cudnn:2048:8 jflash:2048:8 > $OUT/lm_speed.log 2>&1
tail -12 $OUT/lm_speed.log
