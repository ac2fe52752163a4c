#!/bin/bash
# Issue 10 session 15, third call: the native test suite, first half (the Mosaic GPU
# tests alone; session 13's call reached 80 of 91 of both files in 530 s). Then
# s15d.sh: tests/test_gpu.py and the quick bench.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 560 python -m pytest -q -p no:benchmark -n 12 tests/test_mosaic_gpu_common.py tests/test_mosaic_gpu.py > $OUT/native_mgpu.log 2>&1
tail -15 $OUT/native_mgpu.log
