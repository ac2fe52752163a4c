#!/bin/bash
# Session 6, call 1: why the overlapped forward collapses for causal (runtime ranges).
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
for m in none runs two one; do
  e=$([ $m = none ] && echo "" || echo $m)
  JFLASH_EXP_OV=$e MOSAIC_GPU_DUMP_PTXAS=1 FWD_ONLY=1 PYTHONPATH=. timeout 80 python .gpu/mbench.py mosaic_gpu:ov 128x2048x1,256x2048x0 > $OUT/ptxas_$m.log 2>&1
  echo "== $m"; grep -E "ptxas (warning|info *: Used)|spill|serializ|^\{" $OUT/ptxas_$m.log | sort | uniq -c | head -20
done
JFLASH_EXP_OV=two MOSAIC_GPU_DUMP_SASS=1 FWD_ONLY=1 PYTHONPATH=. timeout 60 python .gpu/mbench.py mosaic_gpu:ov 128x2048x1 > $OUT/sass_two.log 2>&1
ls -la $OUT; gzip $OUT/sass_two.log
JFLASH_EXP_OV=two PYTHONPATH=. timeout 120 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "overlapped_softmax_native" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
G=64x2048x1,128x2048x1,256x2048x1,128x16384x1,256x16384x1
for m in runs two one; do
JFLASH_EXP_OV=$m FWD_ONLY=1 PYTHONPATH=. timeout 100 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:ov $G > $OUT/bench_$m.log 2>&1; echo "rc $?" >> $OUT/bench_$m.log
echo "== bench $m"; grep -v -i "warn" $OUT/bench_$m.log | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[0]) if isinstance(v, list) else (k, v[:80]) for k, v in r.items() if k not in ('H','T','causal')])
"; done
