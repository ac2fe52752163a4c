#!/bin/bash
# Session 6, call 2: causal overlap with the masked tail in plain steps (fp, fa).
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
for m in fa fp; do
  JFLASH_EXP_OV=$m MOSAIC_GPU_DUMP_PTXAS=1 FWD_ONLY=1 PYTHONPATH=. timeout 80 python .gpu/mbench.py mosaic_gpu:ov 128x2048x1,256x2048x1,64x2048x1 > $OUT/ptxas_$m.log 2>&1
  echo "== $m"; grep -E "ptxas (warning|info *: Used)|spill|serializ|^\{" $OUT/ptxas_$m.log | sort | uniq -c | head -20
done
for m in fa fp; do
JFLASH_EXP_OV=$m PYTHONPATH=. timeout 100 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "overlapped_softmax_native and (causal or window)" -rfE > $OUT/tests_$m.log 2>&1; echo "rc $?" >> $OUT/tests_$m.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests_$m.log | tail -3
done
G=64x2048x1,128x2048x1,256x2048x1,64x16384x1,128x16384x1,256x16384x1
for m in fa fp; do
JFLASH_EXP_OV=$m FWD_ONLY=1 PYTHONPATH=. timeout 110 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:ov $G > $OUT/bench_$m.log 2>&1; echo "rc $?" >> $OUT/bench_$m.log
echo "== bench $m"; grep -v -i "warn" $OUT/bench_$m.log | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[0]) if isinstance(v, list) else (k, v[:80]) for k, v in r.items() if k not in ('H','T','causal')])
"; done
