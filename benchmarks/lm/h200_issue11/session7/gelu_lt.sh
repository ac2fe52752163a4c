#!/bin/bash
# Issue 11 session 7 call 3: cuBLASLt's GELU epilogue. XLA's gemm rewriter fuses
# bias + tanh-GELU into a cuBLASLt matmul (epilogue BIAS_GELU_AUX: the pre-activation kept
# for the backward) only when every node of the GELU has one user; with jax's own GELU the
# backward also reads the tanh, so it cannot fire. .gpu/e14 = examples/ with JF_GELU=vjp
# (a custom_vjp GELU that keeps only its input). cuDNN attention, T=2048, B=8,
# lm_speed --steps 50, one process per variant, two rounds; then which epilogues the
# compiled step holds.
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
LT=--xla_gpu_enable_cublaslt=true
NT=--xla_gpu_enable_triton_gemm=false
for r in 1 2; do
  for v in ":" ":$LT" "vjp:$LT" "vjp:$LT $NT"; do
    m=${v%%:*}; flags=${v#*:}
    JF_GELU=$m XLA_FLAGS="$flags" timeout 70 python .gpu/e14/examples/lm_speed.py --steps 50 --cases cudnn:2048:8 2>$OUT/err.txt | python3 -c "
import sys, json
for l in sys.stdin:
  r = json.loads(l)
  if 'error' in r: print('gelu=$m flags=[$flags]', l[:300]); continue
  print('gelu=$m flags=[$flags]', r['attention'], round(r['step_ms'], 3), int(r['tokens_per_s']), round(100 * r['mfu'], 2), r.get('peak_memory_bytes'), round(r['loss'], 4))" | tee -a $OUT/gelu_lt.txt
    tail -2 $OUT/err.txt | cut -c1-200
  done
done
for v in ":$LT" "vjp:$LT"; do
  m=${v%%:*}; flags=${v#*:}
  rm -rf /tmp/dump; JF_GELU=$m XLA_FLAGS="$flags --xla_dump_to=/tmp/dump" timeout 60 python .gpu/e14/examples/lm_speed.py --steps 3 --cases cudnn:2048:8 >/dev/null 2>&1
  f=$(ls -S /tmp/dump/*after_optimizations.txt | head -1)
  echo "gelu=$m flags=[$flags] $f: $(grep -o '\"epilogue\":\"[A-Z_]*\"' $f | sort | uniq -c | tr '\n' ' ')" | tee -a $OUT/gelu_lt.txt
done
