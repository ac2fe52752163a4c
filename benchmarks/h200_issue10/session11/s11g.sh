#!/bin/bash
# Session 11 call 8: the persistent backward at causal T <= 4k, H <= 64 (the new default):
# the gpt2-small shape's attention, train_lm.py at T=2048 (two rounds), native tests.
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
NH=768 PYTHONPATH=. timeout 80 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_persistent=0,cudnn 64x2048x1,64x4096x1 > $OUT/lm_shape.log 2>&1
echo "== NH=768: default (persistent), one CTA per item, cudnn"; summ < $OUT/lm_shape.log
for r in 1 2; do
  PYTHONPATH=. timeout 80 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 jflash:2048:8 2>/dev/null | tee -a $OUT/lm2048.jsonl | python3 -c "
import sys, json
for l in sys.stdin: r = json.loads(l); print(r['attention'], round(r['step_ms'], 3), int(r['tokens_per_s']), round(100 * r['mfu'], 2))"
done
XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. timeout 300 python -m pytest -p no:benchmark -p no:cacheprovider -q -n 16 tests/test_mosaic_gpu.py -k "against_oracle_native or bitwise or one_cta or default_backward or dq_kernel_own" > $OUT/tests.log 2>&1
tail -3 $OUT/tests.log
