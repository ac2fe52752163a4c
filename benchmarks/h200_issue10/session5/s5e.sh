#!/bin/bash
# Session 5, call 5 (final tree b942209+docs): native tests; the papers' grid vs cuDNN and tokamax;
# forward-only sweeps: H64 2k causal tiles, one-CTA-per-item launch at long causal T.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
PYTHONPATH=. timeout 230 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or overlapped_softmax_native or bitwise" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -3
PYTHONPATH=.:.tk timeout 200 python .gpu/mbench.py mosaic_gpu,cudnn,tokamax 64x2048x0,64x2048x1,64x16384x0,64x16384x1,128x2048x0,128x2048x1,128x16384x0,128x16384x1,256x2048x0,256x2048x1,256x16384x0,256x16384x1 > $OUT/grid.log 2>&1; echo "rc $?" >> $OUT/grid.log
grep "^{" $OUT/grid.log
FWD_ONLY=1 PYTHONPATH=. timeout 60 python .gpu/mbench.py mosaic_gpu,mosaic_gpu/64/64/2/64/64/3/1,mosaic_gpu/64/64/3/64/64/3/1,mosaic_gpu/64/128/3/64/64/3/1,mosaic_gpu/64/128/2/64/64/3/0,cudnn 64x2048x1 > $OUT/h64sweep.log 2>&1; echo "rc $?" >> $OUT/h64sweep.log
FWD_ONLY=1 PYTHONPATH=. timeout 60 python .gpu/mbench.py mosaic_gpu,mosaic_gpu:np,cudnn 128x16384x1,256x16384x1,256x4096x1 > $OUT/np.log 2>&1; echo "rc $?" >> $OUT/np.log
for f in h64sweep np; do echo "== $f"; grep -v -i "warn" $OUT/$f.log | python3 -c "
import sys, json
for line in sys.stdin:
  try: r = json.loads(line)
  except Exception: print(line.strip()[:150]); continue
  print(r['H'], r['T'], int(r['causal']), *[(k, v[0]) if isinstance(v, list) else (k, v[:80]) for k, v in r.items() if k not in ('H','T','causal')])
"; done
