#!/bin/bash
# Session 10 call 8: native tests on the final kernels (the dQ kernel's own tiles at H<=64, the
# fused "alternate" dQ share); the H=64 rows of the papers' grid with tokamax (README)
export PYTHONUNBUFFERED=1
XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. timeout 230 python -m pytest -n 16 -q -p no:benchmark tests/test_mosaic_gpu.py -k "against_oracle_native or own_tiles or bitwise or fused_backward_native" > $OUT/tests.log 2>&1
echo "pytest rc $?"; tail -2 $OUT/tests.log
PYTHONPATH=.:.tk timeout 200 python .gpu/kb.py mosaic_gpu,mosaic_gpu:nd,cudnn,tokamax 64x2048x0,64x2048x1,64x16384x0,64x16384x1 > $OUT/grid.log 2>&1
grep "^{" $OUT/grid.log | python3 -c "
import sys, json
for line in sys.stdin:
  r = json.loads(line); out = [r['H'], r['T'], int(r['causal'])]
  bw = {}
  for lab in ('mosaic_gpu', 'mosaic_gpu:nd', 'cudnn', 'tokamax'):
    m = r.get(lab)
    if not isinstance(m, dict): out.append(f'{lab} {str(m)[:80]}'); continue
    bw[lab] = sum(v for k, v in m['fb_k'].items() if not any(x in k for x in ('fwd', 'fpro', 'flash_attention_sm90')))
    out.append(f\"{lab} f={m['fwd_tf']} b={m['bwd_tf']} bk={bw[lab]:.0f}\")
  for lab in ('mosaic_gpu', 'mosaic_gpu:nd'):
    if 'cudnn' in bw and lab in bw: out.append(f\"{lab} bwd kernels vs cudnn {bw['cudnn']/bw[lab]:.3f}\")
  print(*out, sep=' | ')"
