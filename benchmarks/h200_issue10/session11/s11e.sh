#!/bin/bash
# Session 11 call 5: native tests of the fused backward (incl. causal 128-query tiles) and the
# kernel choice; the H=64 rows with deterministic=False (the new default at causal T > 8k).
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
. benchmarks/h200_issue10/session10/summ.sh
PYTHONPATH=. timeout 100 python .gpu/kb.py mosaic_gpu:nd,mosaic_gpu,cudnn 64x16384x1,64x16384x0 > $OUT/grid64.log 2>&1
echo "== H=64: nd, det, cudnn"; summ < $OUT/grid64.log
NH=768 PYTHONPATH=. timeout 60 python .gpu/kb.py mosaic_gpu:nd,mosaic_gpu,cudnn 64x16384x1 > $OUT/grid64_lm.log 2>&1
echo "== NH=768: nd, det, cudnn"; summ < $OUT/grid64_lm.log
PYTHONPATH=. timeout 330 python -m pytest -p no:benchmark -p no:cacheprovider -q -n 16 tests/test_mosaic_gpu.py -k "fused or default_backward or backward_kernels" > $OUT/tests.log 2>&1
tail -4 $OUT/tests.log
