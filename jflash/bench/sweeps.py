"""The sweeps: memory vs T, runtime vs block_kv, and the `--tune` block-size candidates.

The candidate tables that `--tune` and `--tune fwd` time live in :mod:`jflash.tuning`
(``SWEEP``, ``FORWARD_SWEEP``), next to the heuristic they feed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import jflash
from jflash import tuning
from jflash.backends import nvidia_compute_capability
from jflash.bench.cases import Case
from jflash.bench.implementations import row_error
from jflash.bench.timing import (compile_all, compile_case, compile_forward, gpu_time_ms,
                                 kernel_times_ms)


def memory_sweep(impls, seq_lens, head_dim: int = 128, dtype: str = "bfloat16",
                 workers: int = 1) -> list[dict]:
  """Peak temporary bytes of fwd and fwd+bwd (compile only), B=1, N·H=2048, causal."""
  cases = [(impl, Case.grid(head_dim, t, True, dtype, tokens=t)) for impl in impls
           for t in seq_lens]
  compiled = compile_all([(compile_case, impl, case) for impl, case in cases], workers,
                         "memory sweep")
  rows = []
  for (impl, case), c in zip(cases, compiled):
    row = dict(impl=impl, head_dim=head_dim, seq_len=case.seq_len, batch=1, heads=case.heads)
    if c.error or c.bwd_error:
      row["error"] = c.error or c.bwd_error
    else:
      row.update(fwd_temp_bytes=c.fwd_temp_bytes, fwd_bwd_temp_bytes=c.fwd_bwd_temp_bytes)
    rows.append(row)
  return rows


def _time_forwards(case: Case, configs, compiled, timer, iterations: int, row_of) -> list[dict]:
  """One row per (config, compiled forward): `row_of(config)` and `fwd_ms`, or the error."""
  q, k, v, _ = case.inputs()
  rows = []
  for config, (fwd, error) in zip(configs, compiled):
    row = row_of(config)
    try:
      if error:
        row["error"] = error
      else:
        row["fwd_ms"] = timer(fwd, q, k, v, iterations=iterations)
    except Exception as e:
      row["error"] = row_error(e)
    rows.append(row)
  return rows


def block_sweep(case: Case, block_kvs=(16, 32, 64, 128, 256), timer=gpu_time_ms,
                iterations: int = 20, workers: int = 1) -> list[dict]:
  """Forward time of jflash's Triton kernel vs block_kv (FlashAttention paper, Fig. 2)."""
  dtype = jnp.dtype(case.dtype)
  base = jflash.default_config(case.head_dim, dtype, case.is_causal, kv_len=case.seq_len)
  limit = tuning.shared_memory_limit(nvidia_compute_capability(jax.devices()[0]) or (9, 0))
  configs = []
  for block_kv in block_kvs:  # fewer pipeline stages where the tiles would not fit
    config = dataclasses.replace(base, block_kv=block_kv)
    while (config.num_stages > 1 and tuning.shared_memory_estimate(
        config, case.head_dim, dtype)["forward"] > limit):
      config = dataclasses.replace(config, num_stages=config.num_stages - 1)
    configs.append(config)
  compiled = compile_all([(compile_forward, "jflash:triton", case, c) for c in configs],
                         workers, "block sweep")
  return _time_forwards(
      case, configs, compiled, timer, iterations,
      lambda c: dict(head_dim=case.head_dim, seq_len=case.seq_len, causal=case.is_causal,
                     block_q=c.block_q, block_kv=c.block_kv, num_stages=c.num_stages))


def sweep(case: Case, iterations: int = 20, workers: int = 1) -> list[dict]:
  """Times each candidate block config of tuning.SWEEP on one case, kernel by kernel."""
  candidates = tuning.sweep_candidates(case.head_dim)
  compiled = compile_all([(compile_case, "jflash:triton", case, tuning.sweep_config(*c))
                          for c in candidates], workers, "tune")
  args = case.inputs()
  rows = []
  for (fwd, dkv, dq), c in zip(candidates, compiled):
    row = dict(case=dataclasses.asdict(case), fwd_config=fwd, dkv_config=dkv, dq_config=dq)
    try:
      if c.error or c.bwd_error:
        raise RuntimeError(c.error or c.bwd_error)
      row.update({f"{k}_ms": ms for k, ms in kernel_times_ms(c.fwd_bwd, args, iterations).items()})
    except Exception as e:  # a config that does not compile is a row, never a crash
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    rows.append(row)
    nan = float("nan")
    print(f"H={case.head_dim} T={case.seq_len} causal={case.is_causal!s:5} fwd {fwd} "
          f"{row.get('fwd_ms', nan):.3f} ms | dkv {dkv} {row.get('dkv_ms', nan):.3f} "
          f"ms | dq {dq} {row.get('dq_ms', nan):.3f} ms {row.get('error', '')}", flush=True)
  return rows


def sweep_forward(case: Case, iterations: int = 20, workers: int = 1,
                  timer=gpu_time_ms) -> list[dict]:
  """Times the tuning.FORWARD_SWEEP candidates and JAX's Pallas `mha` forward on one case."""
  candidates = tuning.FORWARD_SWEEP[tuning.padded_head_dim(case.head_dim)]
  jobs = [(compile_forward, "jflash:triton", case, tuning.sweep_config(c)) for c in candidates]
  jobs.append((compile_forward, "pallas_mha", case))
  compiled = compile_all(jobs, workers, "tune fwd")
  rows = _time_forwards(case, [*candidates, "pallas_mha"], compiled, timer, iterations,
                        lambda c: dict(case=dataclasses.asdict(case), config=c))
  for row in rows:
    if "fwd_ms" in row:
      row["fwd_tflops"] = case.forward_flops() / row["fwd_ms"] / 1e9
  mha = rows[-1].get("fwd_tflops")
  for row in sorted(rows, key=lambda r: r.get("fwd_ms", float("inf"))):
    ratio = f"{row['fwd_tflops'] / mha:5.2f}x mha" if mha and "fwd_tflops" in row else ""
    text = row.get("error") or f"{row['fwd_ms']:.3f} ms {row['fwd_tflops']:6.1f} TFLOP/s {ratio}"
    print(f"H={case.head_dim} T={case.seq_len} causal={case.is_causal!s:5} "
          f"{str(row['config']):20s} {text}", flush=True)
  return rows
