#!/bin/bash
# Session 8 call 7 (final mask form: positions as before, redundant length compares dropped): native tests; before (b58aaea) / after fwd+bwd; LM-shape fwd; LM step.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
PYTHONPATH=. timeout 230 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or other_forward_loop_native or backward_kernels or sections or bitwise" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
unset XLA_PYTHON_CLIENT_PREALLOCATE
for tag in before after; do
  if [ $tag = before ]; then P=.gpu/bh; else P=.; fi
  echo "== $tag"; PYTHONPATH=$P timeout 100 python .gpu/mbench.py cudnn,mosaic_gpu 64x2048x1,64x16384x1,128x2048x1,128x16384x1,256x2048x1,256x16384x1 2>&1 | grep "^{"
  PYTHONPATH=$P timeout 60 python .gpu/sched.py $tag 2>&1 | grep "^{"
done
PYTHONPATH=. timeout 130 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 cudnn:8192:2 jflash:8192:2 2>/dev/null > $OUT/speed.jsonl; cut -c1-300 $OUT/speed.jsonl
