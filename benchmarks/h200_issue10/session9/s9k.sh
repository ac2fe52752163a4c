#!/bin/bash
# Session 9 call 11: the fused backward at H=64 (64x64 tiles, serial vs overlapped wgmma: .gpu/f9 env JFLASH_FUSED_OVERLAP) vs the two kernels and cuDNN
export PYTHONUNBUFFERED=1
summ() { python3 -c "
import sys, json
for line in sys.stdin:
  if not line.startswith('{'): continue
  r = json.loads(line); out = [r.get('H'), r.get('T'), int(r.get('causal'))]
  for lab, m in r.items():
    if not isinstance(m, dict): 
      if lab not in ('H','T','causal'): out.append(lab + ' ' + str(m)[:150])
      continue
    bk = sum(v for k, v in m['fb_k'].items() if not any(x in k for x in ('fwd', 'fpro')))
    out.append(lab.replace('mosaic_gpu', 'm') + ' bk=%.0f' % bk)
  print(*out, sep=' | ')"; }
G=64x16384x1,64x2048x0,64x16384x0,64x2048x1
JFLASH_FUSED_OVERLAP=1 MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=.gpu/f9 timeout 120 python .gpu/kb.py mosaic_gpu:bwd_fused=1+bwd_block_q=64 $G > $OUT/fov.log 2>&1
echo "== fused overlapped (64x64)"; summ < $OUT/fov.log
grep -A3 "Compiling entry function 'jflash_mgpu_bwd_dkv" $OUT/fov.log | grep -E "spill|Used" | sort | uniq -c | cut -c1-150
PYTHONPATH=. timeout 150 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1,mosaic_gpu:bwd_fused=1+bwd_block_q=64,cudnn $G > $OUT/base.log 2>&1
echo "== tree: two kernels, fused (default tiles), fused 64x64 serial, cuDNN"; summ < $OUT/base.log
NH=768 BT=16384 JFLASH_FUSED_OVERLAP=1 PYTHONPATH=.gpu/f9 timeout 60 python .gpu/kb.py mosaic_gpu,mosaic_gpu:bwd_fused=1+bwd_block_q=64,cudnn 64x8192x1,64x2048x1 > $OUT/lm.log 2>&1
echo "== LM shape (N=12): two kernels, fused overlapped, cuDNN"; summ < $OUT/lm.log
JFLASH_FUSED_OVERLAP=1 PYTHONPATH=.gpu/f9 timeout 60 python .gpu/fcheck.py 2>&1 | grep causal
