#!/bin/bash
# Session 8 call 4: mask entries in fewer operations (variants.visible). Native tests; before (b58aaea, .gpu/bh) / after ABAB.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
PYTHONPATH=. timeout 230 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or other_forward_loop_native or backward_kernels or sections" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
unset XLA_PYTHON_CLIENT_PREALLOCATE
for tag in before after before after; do
  if [ $tag = before ]; then P=.gpu/bh; else P=.; fi
  PYTHONPATH=$P timeout 60 python .gpu/sched.py $tag 2>&1 | grep "^{"
done
for tag in before after; do
  if [ $tag = before ]; then P=.gpu/bh; else P=.; fi
  echo "== $tag"; PYTHONPATH=$P timeout 120 python .gpu/mbench.py cudnn,mosaic_gpu 64x2048x1,64x16384x1,128x2048x1,256x16384x1 2>&1 | grep "^{"
done
