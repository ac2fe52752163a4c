#!/bin/bash
# Session 10 call 4: native tests of the fused backward ("alternate" dQ share, the default
# below H=128; "alternate" at H=128 too) and the new defaults; H=64 grid, det / det=False / cuDNN
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. timeout 280 python -m pytest -n 16 -q tests/test_mosaic_gpu.py -k "fused or backward_kernels or default_backward or bitwise" > $OUT/tests.log 2>&1
tail -3 $OUT/tests.log
PYTHONPATH=. timeout 200 python .gpu/kb.py mosaic_gpu,mosaic_gpu:nd,cudnn 64x2048x0,64x2048x1,64x16384x0,64x16384x1,64x4096x0 > $OUT/grid64.log 2>&1
echo "== H64: det, nd, cuDNN"; summ < $OUT/grid64.log
