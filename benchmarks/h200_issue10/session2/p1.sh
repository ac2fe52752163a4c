#!/usr/bin/env bash
# Session 2 of issue 10: native tests of the new variants + persistent forward, then timing.
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/env.log
python -c "import jax, jaxlib; print(jax.__version__, jaxlib.__version__, jax.devices()[0].core_count)" >> $OUT/env.log 2>&1
timeout 300 python -m pytest -n 14 -q -p no:cacheprovider tests/test_mosaic_gpu.py tests/test_variants.py tests/test_attention.py -k mosaic -rfE > $OUT/tests.log 2>&1
echo "rc $?" >> $OUT/tests.log
grep -E "^FAILED|^ERROR|passed|failed|^E  " $OUT/tests.log | head -40
timeout 270 python .gpu/mbench.py cudnn,mosaic_gpu,mosaic_gpu/64/128/2/64/64/2/0 64x2048x0,128x2048x0,128x2048x1,128x16384x1,256x2048x0,256x16384x1 > $OUT/bench.log 2>&1
echo "rc $?" >> $OUT/bench.log
cat $OUT/bench.log | tail -12
