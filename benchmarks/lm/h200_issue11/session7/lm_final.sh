#!/bin/bash
# Issue 11 session 7 call 5: train_lm.py's custom_vjp GELU (only its input kept for the
# backward) and its step compiled with xla_gpu_enable_triton_gemm=False (cuBLAS for every
# matrix multiply), against the example before them (.gpu/before13 = HEAD's examples/):
# tokens/s (cuDNN T=2048, alternating processes, two rounds), the README table's cases in
# one process, and the loss of two seeds (300 steps, validation at 150 and 300).
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__)"
for r in 1 2; do
  for side in before after; do
    E=examples; [ $side = before ] && E=.gpu/before13/examples
    timeout 60 python $E/lm_speed.py --steps 50 --cases cudnn:2048:8 2>/dev/null | sed "s/^/$side /" | tee -a $OUT/ab.jsonl
  done
done
timeout 240 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 jflash:2048:8 xla:2048:8 cudnn:8192:2 jflash:8192:2 xla:8192:2 2>/dev/null | tee $OUT/tokens_per_s.jsonl
for seed in 0 1; do
  for side in before after; do
    E=examples; [ $side = before ] && E=.gpu/before13/examples
    timeout 120 python $E/train_lm.py --preset gpt2-small --attention cudnn --steps 300 --eval-every 150 --gen-bytes 0 --seed $seed --out-dir $OUT/loss_${side}_s$seed > $OUT/loss_${side}_s$seed.log 2>&1
    python3 -c "import json; h = json.load(open('$OUT/loss_${side}_s$seed/metrics.json'))['history']; print('$side seed $seed val', h['val_step'], [round(v, 4) for v in h['val_loss']])" || tail -3 $OUT/loss_${side}_s$seed.log
  done
done
