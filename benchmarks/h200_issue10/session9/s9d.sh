#!/bin/bash
# Session 9 call 4: final tree: papers' grid per kernel vs cuDNN and tokamax; gpt2-small step; bench --quick
export PYTHONUNBUFFERED=1
PYTHONPATH=.:.tk timeout 260 python .gpu/kb.py mosaic_gpu,cudnn,tokamax 64x2048x0,64x2048x1,64x16384x0,64x16384x1,128x2048x0,128x2048x1,128x16384x0,128x16384x1,256x2048x0,256x2048x1,256x16384x0,256x16384x1 > $OUT/grid.log 2>&1
grep "^{" $OUT/grid.log | python3 -c "
import sys, json
for line in sys.stdin:
  r = json.loads(line); out = [r['H'], r['T'], int(r['causal'])]
  bw = {}
  for lab in ('mosaic_gpu', 'cudnn', 'tokamax'):
    m = r.get(lab)
    if not isinstance(m, dict): out.append(f'{lab} {str(m)[:80]}'); continue
    bw[lab] = sum(v for k, v in m['fb_k'].items() if not any(x in k for x in ('fwd', 'fpro', 'flash_attention_sm90')))
    out.append(f\"{lab} f={m['fwd_tf']} b={m['bwd_tf']} bk={bw[lab]:.0f}\")
  if 'cudnn' in bw and 'mosaic_gpu' in bw: out.append(f\"bwd kernels vs cudnn {bw['cudnn']/bw['mosaic_gpu']:.3f}\")
  print(*out, sep=' | ')"
PYTHONPATH=. timeout 100 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick.log 2>&1; echo "rc $?" >> $OUT/quick.log
grep -E "jflash:mosaic_gpu|cudnn|^rc" $OUT/quick.log | grep -v memory | cut -c1-160
PYTHONPATH=. timeout 170 python examples/lm_speed.py --steps 30 --cases cudnn:2048:8 jflash:2048:8 cudnn:8192:2 jflash:8192:2 2>/dev/null > $OUT/speed.jsonl; cut -c1-300 $OUT/speed.jsonl
