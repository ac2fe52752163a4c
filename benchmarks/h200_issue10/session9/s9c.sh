#!/bin/bash
# Session 9 call 3: bwd L2 sections with one CTA per item (tree) vs bf4aa5e (.gpu/bh2); forward persistent vs not at 8k/16k causal; native tests
export PYTHONUNBUFFERED=1
sum() { grep "^{" $1 | python3 -c "
import sys, json
for line in sys.stdin:
  r = json.loads(line); out = [r['H'], r['T']]
  for lab, m in r.items():
    if not isinstance(m, dict): continue
    out.append(lab + ' f=' + str(m['f']) + ' ' + ' '.join(f'{k[7:22]}={v}' for k, v in m.get('fb_k', {}).items() if v > 100))
  print(*out, sep=' | ')"; }
PYTHONPATH=.gpu/bh2 timeout 80 python .gpu/kb.py mosaic_gpu 64x16384x1,128x16384x1,256x16384x1 > $OUT/c_before.log 2>&1; echo "== before"; sum $OUT/c_before.log
PYTHONPATH=. timeout 150 python .gpu/kb.py mosaic_gpu,mosaic_gpu:persistent=0~f,cudnn 64x16384x1,128x16384x1,256x16384x1,128x8192x1,256x8192x1,64x8192x1 > $OUT/c_tree.log 2>&1; echo "== tree"; sum $OUT/c_tree.log
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH=. timeout 250 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "bitwise or other_forward_loop_native or sections or one_cta" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -5
