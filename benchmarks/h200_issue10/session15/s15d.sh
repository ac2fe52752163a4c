#!/bin/bash
# Issue 10 session 15, fourth call: the rest of the native suite, then the quick bench
# (H = 128 shapes, jflash's default against cuDNN in one process).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout 330 python -m pytest -q -p no:benchmark -n 12 tests/test_gpu.py > $OUT/native_gpu.log 2>&1
tail -8 $OUT/native_gpu.log
timeout 220 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick.log 2>&1
tail -20 $OUT/quick.log
