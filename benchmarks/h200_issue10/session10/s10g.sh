#!/bin/bash
# Session 10 call 7: the dQ kernel's own tiles at H<=64 (64 x 128, default_config): native tests,
# the H=64 grid (det, det=False, cuDNN), T=1k before (.gpu/e12 without env = the old tiles) / after,
# gpt2-small tokens/s at T=2048 (deterministic; two passes, alternating) and T=8192 once
export PYTHONUNBUFFERED=1
. benchmarks/h200_issue10/session10/summ.sh
XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. timeout 250 python -m pytest -n 16 -q tests/test_mosaic_gpu.py tests/test_gpu.py -k "native or own_tiles or bitwise or default_config or long" > $OUT/tests.log 2>&1
tail -3 $OUT/tests.log
PYTHONPATH=. timeout 200 python .gpu/kb.py mosaic_gpu,mosaic_gpu:nd,cudnn 64x2048x0,64x2048x1,64x16384x0,64x16384x1,64x1024x0,64x1024x1 > $OUT/grid64.log 2>&1
echo "== H64: det, nd, cuDNN (tree)"; summ < $OUT/grid64.log
PYTHONPATH=.gpu/e12 timeout 60 python .gpu/kb.py mosaic_gpu 64x1024x0,64x1024x1 > $OUT/old1k.log 2>&1
echo "== H64 T=1k det, before (old dQ tiles)"; summ < $OUT/old1k.log
for i in 1 2; do
  for a in cudnn jflash; do
    PYTHONPATH=. timeout 100 python examples/lm_speed.py --steps 50 --cases $a:2048:8 2>/dev/null | tee -a $OUT/speed.jsonl | cut -c1-230
  done
done
PYTHONPATH=. timeout 100 python examples/lm_speed.py --steps 50 --cases jflash:8192:2 2>/dev/null | tee -a $OUT/speed.jsonl | cut -c1-230
