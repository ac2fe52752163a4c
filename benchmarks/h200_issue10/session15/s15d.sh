#!/bin/bash
# Issue 10 session 15, fourth call: the native suite, second half (the rest of the two
# Mosaic GPU files, 69 tests with the CPU-only ones, and tests/test_gpu.py).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
K="not (against_oracle or other_forward_loop or interpretable_form)"
timeout 570 python -m pytest -q -p no:benchmark -n 12 tests/test_mosaic_gpu_common.py tests/test_mosaic_gpu.py tests/test_gpu.py -k "$K" > $OUT/native_b.log 2>&1
tail -15 $OUT/native_b.log
