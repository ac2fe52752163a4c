#!/bin/bash
# Session 5, call 1: named-barrier signals. Native tests, then forward/backward ABAB vs HEAD.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
GRID=128x16384x0,128x16384x1,256x16384x0,256x16384x1,64x16384x1,128x2048x0,128x2048x1,64x2048x1,256x2048x0
PYTHONPATH=. timeout 150 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or backward_kernels or bitwise" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -E "^FAILED|^ERROR|passed|failed|^rc" $OUT/tests.log | head
PYTHONPATH=.:.tk timeout 200 python .gpu/mbench.py mosaic_gpu,cudnn,tokamax $GRID > $OUT/after1.log 2>&1; echo "rc $?" >> $OUT/after1.log
(cd .gpu/before && PYTHONPATH=. timeout 150 python ../mbench.py mosaic_gpu,cudnn $GRID > $OUT/before1.log 2>&1; echo "rc $?" >> $OUT/before1.log)
PYTHONPATH=. timeout 150 python .gpu/mbench.py mosaic_gpu,cudnn $GRID > $OUT/after2.log 2>&1; echo "rc $?" >> $OUT/after2.log
for f in after1 before1 after2; do echo "== $f"; cat $OUT/$f.log | grep -v Warning | cut -c1-260; done
