#!/bin/bash
# Issue 10 session 15, third call: the native suite, first half (session 13's one call
# reached 80 of 91 tests of both files in 530 s; there are 113 now). This half: the
# oracle comparisons, the other forward loop, the interpretable form natively (41 tests).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
K="against_oracle or other_forward_loop or interpretable_form"
timeout 570 python -m pytest -q -p no:benchmark -n 12 tests/test_mosaic_gpu_common.py tests/test_mosaic_gpu.py -k "$K" > $OUT/native_a.log 2>&1
tail -15 $OUT/native_a.log
