#!/bin/bash
# Session 8 call 9: backward masks in the tile-local difference form (.gpu/bd) vs the tree's form (.gpu/bh2 = bf4aa5e), bwd timing, then bd's native tests
export PYTHONUNBUFFERED=1
for tag in tree local tree local; do
  if [ $tag = tree ]; then P=.gpu/bh2; else P=.gpu/bd; fi
  echo "== $tag"; PYTHONPATH=$P timeout 45 python .gpu/mbench.py mosaic_gpu 64x16384x1,128x16384x1 2>&1 | grep "^{"
done
cd .gpu/bd && XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. timeout 110 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "against_oracle_native or backward_kernels" 2>&1 | tail -3
