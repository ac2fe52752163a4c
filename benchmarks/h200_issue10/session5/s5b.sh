#!/bin/bash
# Session 5, call 2: end-of-item turn handoff; backward named vs mbarrier free signals; vs HEAD.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
GRID=64x2048x1,128x2048x0,128x2048x1,256x2048x0,64x16384x1,128x16384x1,256x16384x1,256x16384x0
PYTHONPATH=. timeout 230 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or overlapped_softmax_native or bitwise" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -E "^FAILED|^ERROR|passed|failed|^rc" $OUT/tests.log | head
PYTHONPATH=. timeout 120 python .gpu/mbench.py mosaic_gpu,cudnn $GRID > $OUT/after.log 2>&1; echo "rc $?" >> $OUT/after.log
(cd .gpu/bwdmb && PYTHONPATH=. timeout 120 python ../mbench.py mosaic_gpu,cudnn $GRID > $OUT/bwdmb.log 2>&1; echo "rc $?" >> $OUT/bwdmb.log)
(cd .gpu/before && PYTHONPATH=. timeout 120 python ../mbench.py mosaic_gpu,cudnn $GRID > $OUT/before.log 2>&1; echo "rc $?" >> $OUT/before.log)
for f in after bwdmb before; do echo "== $f"; cat $OUT/$f.log | grep -v Warning | cut -c1-200; done
