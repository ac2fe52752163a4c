#!/bin/bash
# Issue 11 session 7 call 4: which part of call 3's gain (custom_vjp GELU + cuBLASLt +
# no Triton GEMM: 25.74-25.84 ms vs 26.25-26.30) is which. lm_speed --steps 50, one
# process per variant.
export PYTHONPATH=. PYTHONUNBUFFERED=1
LT=--xla_gpu_enable_cublaslt=true
NT=--xla_gpu_enable_triton_gemm=false
for v in ":" ":$NT" ":$LT $NT" "vjp:$NT" "vjp:$LT $NT"; do
  m=${v%%:*}; flags=${v#*:}
  for c in cudnn:2048:8; do
    JF_GELU=$m XLA_FLAGS="$flags" timeout 60 python .gpu/e14/examples/lm_speed.py --steps 50 --cases $c 2>/dev/null | python3 -c "
import sys, json
for l in sys.stdin:
  r = json.loads(l)
  if 'error' in r: print('gelu=$m flags=[$flags]', l[:300]); continue
  print('gelu=$m flags=[$flags]', r['attention'], r['seq_len'], round(r['step_ms'], 3), int(r['tokens_per_s']), round(100 * r['mfu'], 2), round(r['loss'], 4))" | tee -a $OUT/gelu_lt2.txt
  done
done
JF_GELU=vjp XLA_FLAGS="$LT $NT" timeout 120 python .gpu/e14/examples/lm_speed.py --steps 50 --cases jflash:2048:8 cudnn:8192:2 jflash:8192:2 2>/dev/null | sed "s/^/gelu=vjp flags=[$LT $NT] /" | tee -a $OUT/gelu_lt2.txt
