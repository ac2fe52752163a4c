#!/bin/bash
# Session 10 call 5: gpt2-small tokens/s at T=8192 (B=2), one process per case, alternating:
# cuDNN, jflash --no-deterministic-backward (the fused backward), twice; jflash deterministic once
export PYTHONUNBUFFERED=1
for i in 1 2; do
  PYTHONPATH=. timeout 100 python examples/lm_speed.py --steps 50 --cases cudnn:8192:2 2>/dev/null | tee -a $OUT/speed.jsonl | cut -c1-260
  PYTHONPATH=. timeout 100 python examples/lm_speed.py --steps 50 --cases jflash:8192:2 -- --no-deterministic-backward 2>/dev/null | tee -a $OUT/speed.jsonl | cut -c1-260
done
PYTHONPATH=. timeout 100 python examples/lm_speed.py --steps 50 --cases jflash:8192:2 2>/dev/null | tee -a $OUT/speed.jsonl | cut -c1-260
