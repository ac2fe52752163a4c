#!/bin/bash
# Session 6, call 3: overlap of the unmasked run only (all positional and listed schedules).
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
ROOT=$(pwd)
PYTHONPATH=. timeout 200 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "overlapped_softmax_native" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -3
G=64x2048x1,128x2048x1,256x2048x1,64x16384x1,128x16384x1,256x16384x1,64x2048x0,128x2048x0,256x2048x0,128x16384x0,256x16384x0
show() { grep -v -i "warn" $1 | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[0]) if isinstance(v, list) else (k, v[:80]) for k, v in r.items() if k not in ('H','T','causal')])
"; }
FWD_ONLY=1 PYTHONPATH=. timeout 110 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:ov,cudnn $G > $OUT/after1.log 2>&1; echo "== after1"; show $OUT/after1.log
(cd .gpu/before && FWD_ONLY=1 PYTHONPATH=. timeout 90 python $ROOT/.gpu/mbench.py mosaic_gpu,mosaic_gpu:ov $G > $OUT/before.log 2>&1); echo "== before"; show $OUT/before.log
FWD_ONLY=1 PYTHONPATH=. timeout 90 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:ov $G > $OUT/after2.log 2>&1; echo "== after2"; show $OUT/after2.log
