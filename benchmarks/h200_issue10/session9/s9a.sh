#!/bin/bash
# Session 9 call 1: per-kernel times at 16k (bwd gap), forward variants vs tokamax at 16k causal, native tests, bench --quick before/after the mask change
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
MOSAIC_GPU_DUMP_PTXAS=1 PYTHONPATH=. timeout 150 python .gpu/kb.py mosaic_gpu,cudnn 64x16384x1,128x16384x1,256x16384x1,128x16384x0,64x16384x0 > $OUT/kb_bwd.log 2>&1
grep "^{" $OUT/kb_bwd.log
grep -E "Compiling entry|spill stores|Used [0-9]+ reg" $OUT/kb_bwd.log | grep -v "^ *0 bytes" | paste - - - | sed -E 's/ptxas (info|warning) *: //g' | cut -c1-220 | sort | uniq -c
FWD_ONLY=1 PYTHONPATH=.:.tk timeout 120 python .gpu/kb.py mosaic_gpu,mosaic_gpu:overlap=0,mosaic_gpu:persistent=0,mosaic_gpu:persistent=0+overlap=0,tokamax,cudnn 128x16384x1,256x16384x1,256x16384x0 > $OUT/kb_fwd.log 2>&1
grep "^{" $OUT/kb_fwd.log | cut -c1-1500
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHONPATH=. timeout 150 python -m pytest -n 16 -q -p no:cacheprovider tests/test_mosaic_gpu.py -k "bitwise or other_forward_loop_native" -rfE > $OUT/tests.log 2>&1; echo "rc $?" >> $OUT/tests.log
grep -vE "PytestBenchmark|^$|warnings.warn|bringing" $OUT/tests.log | tail -4
(cd .gpu/bh && PYTHONPATH=. timeout 100 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_before.log 2>&1; echo "rc $?" >> $OUT/quick_before.log)
PYTHONPATH=. timeout 100 python -m jflash.bench --quick --impl jflash:mosaic_gpu cudnn --no-block-sweep > $OUT/quick_after.log 2>&1; echo "rc $?" >> $OUT/quick_after.log
for s in before after; do echo "== $s"; grep -E "jflash:mosaic_gpu|cudnn|^rc|file" $OUT/quick_$s.log | grep -v memory | cut -c1-160; done
