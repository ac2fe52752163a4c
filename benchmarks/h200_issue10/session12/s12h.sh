#!/bin/bash
# Session 12 call 9: after the hand_over refactor (no change intended), native tests of
# H > 128 and one timing at H=256 16k causal.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
. benchmarks/h200_issue10/session10/summ.sh
timeout 150 python .gpu/kb.py mosaic_gpu,cudnn 256x16384x1 > $OUT/h256.log 2>&1; summ < $OUT/h256.log
timeout 240 python -m pytest -q -p no:benchmark -p no:cacheprovider -n 8 tests/test_mosaic_gpu.py -k "h256 or h250 or h192 or bitwise" > $OUT/tests.log 2>&1
tail -1 $OUT/tests.log
