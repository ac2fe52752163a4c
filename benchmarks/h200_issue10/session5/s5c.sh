#!/bin/bash
# Session 5, call 3: turn signals in two sets by item parity (no per-step branch); ABAB.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
GRID=64x2048x1,128x2048x0,128x2048x1,256x2048x0,64x16384x1,128x16384x1,256x16384x1,256x16384x0
PYTHONPATH=. timeout 150 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or backward_kernels or interpretable_form_runs_natively" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
PYTHONPATH=. timeout 110 python .gpu/mbench.py mosaic_gpu,cudnn $GRID > $OUT/after.log 2>&1; echo "rc $?" >> $OUT/after.log
(cd .gpu/before && PYTHONPATH=. timeout 110 python ../mbench.py mosaic_gpu,cudnn $GRID > $OUT/before.log 2>&1; echo "rc $?" >> $OUT/before.log)
(cd .gpu/bwdmb && PYTHONPATH=. timeout 110 python ../mbench.py mosaic_gpu,cudnn $GRID > $OUT/bwdmb.log 2>&1; echo "rc $?" >> $OUT/bwdmb.log)
PYTHONPATH=. timeout 110 python .gpu/mbench.py mosaic_gpu,cudnn $GRID > $OUT/after2.log 2>&1; echo "rc $?" >> $OUT/after2.log
for f in after before bwdmb after2; do echo "== $f"; cat $OUT/$f.log | grep -v Warning | cut -c1-200; done
