#!/bin/bash
# Issue 11 session 7 call 6: the committed example (custom_vjp GELU; --triton-gemm off by
# default, on by default for --attention xla): the README table's cases in one process,
# then cuDNN and jflash at T=2048 again in a second process; the xla case at T=8192 with
# the Triton fusions off (call 5 ran out of memory so).
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 260 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 jflash:2048:8 xla:2048:8 cudnn:8192:2 jflash:8192:2 xla:8192:2 2>/dev/null | tee $OUT/tokens_per_s.jsonl
timeout 90 python examples/lm_speed.py --steps 50 --cases cudnn:2048:8 jflash:2048:8 2>/dev/null | tee $OUT/tokens_per_s_2.jsonl
