"""Compiling and timing: the compile pool, CUPTI GPU time, wall-clock time, one row.

Cases compile ahead on a thread pool (:func:`compile_all`); the timing itself is
sequential. GPU time is the median of CUPTI kernel timestamps
(``jax.experimental.mosaic.gpu.profiler.measure``); wall-clock time only serves the CPU
smoke test of the plumbing. :func:`measure` turns one (implementation, case) into a
row: forward, backward and fwd+bwd time, TFLOP/s and peak temporary memory.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import statistics
import sys
import time

import jax

from jflash.bench.cases import Case
from jflash.bench.implementations import attention_fn, row_error


def gpu_time_ms(fn, *args, iterations: int = 20, warmup: int = 3) -> float:
  """Median GPU time of fn(*args) in ms, from CUPTI kernel timestamps."""
  from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  _, times = profiler.measure(fn, iterations=iterations)(*args)
  return statistics.median(times)


def wall_time_ms(fn, *args, iterations: int = 3, warmup: int = 1) -> float:
  """Median wall-clock time in ms (only for the CPU smoke test of the plumbing)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iterations):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def kernel_times_ms(fwd_bwd, args, iterations: int) -> dict[str, float]:
  """Median GPU time of each jflash kernel in one call of `fwd_bwd`, by kernel name."""
  from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fwd_bwd(*args))
  _, runs = profiler.measure(fwd_bwd, aggregate=False, iterations=iterations)(*args)
  times: dict[str, list[float]] = {}
  for run in runs:
    for name, ms in run:
      kernel = next((k for k in ("dkv", "dq", "fwd") if k in name), name)
      times.setdefault(kernel, []).append(ms)
  return {name: statistics.median(ms) for name, ms in times.items()}


def progress(items, desc, total=None):
  """`items` behind a tqdm progress bar, where tqdm is installed."""
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(items, desc=desc, total=total, dynamic_ncols=True, file=sys.stdout)
  except ImportError:
    return items


def _compiled(fn, *shapes):
  compiled = jax.jit(fn).lower(*shapes).compile()
  return compiled, compiled.memory_analysis().temp_size_in_bytes


@dataclasses.dataclass
class Compiled:
  """The compiled forward and forward+backward of one (implementation, case), or why not."""

  fwd: object = None
  fwd_temp_bytes: int | None = None
  fwd_bwd: object = None
  fwd_bwd_temp_bytes: int | None = None
  error: str | None = None
  bwd_error: str | None = None


def compile_case(impl: str, case: Case, config=None) -> Compiled:
  """Compiles `impl`'s forward and forward+backward on `case` (no device memory used)."""
  result = Compiled()
  shapes = case.shapes()
  try:
    attn = attention_fn(impl, case, config)
    result.fwd, result.fwd_temp_bytes = _compiled(attn, *shapes[:3])
  except Exception as e:  # a row that says why, never a crash
    result.error = row_error(e)
    return result

  def fwd_bwd(q, k, v, do):
    return jax.vjp(attn, q, k, v)[1](do)

  try:
    result.fwd_bwd, result.fwd_bwd_temp_bytes = _compiled(fwd_bwd, *shapes)
  except Exception as e:
    result.bwd_error = row_error(e)
  return result


def compile_forward(impl: str, case: Case, config=None):
  """(compiled forward, None) or (None, why not)."""
  try:
    return _compiled(attention_fn(impl, case, config), *case.shapes()[:3])[0], None
  except Exception as e:
    return None, row_error(e)


def compile_all(jobs, workers: int, desc: str = "compiling") -> list:
  """`[fn(*args) for fn, *args in jobs]`, compiled on `workers` threads.

  XLA and Triton compile outside the GIL, so a pool cuts the grid's compile time several
  fold; the timing itself stays sequential. workers <= 1 compiles in this thread.
  """
  if workers <= 1:
    return [fn(*args) for fn, *args in jobs]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(fn, *args) for fn, *args in jobs]
    for _ in progress(concurrent.futures.as_completed(futures), desc, total=len(futures)):
      pass
    return [f.result() for f in futures]


def measure(impl: str, case: Case, timer=gpu_time_ms, iterations: int = 20, config=None,
            compiled: Compiled | None = None) -> dict:
  """Forward, backward and fwd+bwd time, TFLOP/s and temp memory of `impl` on `case`.

  TFLOP/s: forward 4·B·N·T·S·H (halved when causal), backward 2.5x the forward;
  backward time = (forward+backward) − forward.
  """
  row = dict(impl=impl, head_dim=case.head_dim, seq_len=case.seq_len, causal=case.is_causal,
             dtype=case.dtype, batch=case.batch, heads=case.heads, kv_heads=case.kv_heads)
  c = compiled if compiled is not None else compile_case(impl, case, config)
  if c.error:
    row["error"] = c.error
    return row
  row["fwd_temp_bytes"] = c.fwd_temp_bytes
  try:
    q, k, v, do = case.inputs()
    row["fwd_ms"] = timer(c.fwd, q, k, v, iterations=iterations)
  except Exception as e:  # e.g. out of memory at run time
    row["error"] = row_error(e)
    return row
  if c.bwd_error:
    row["bwd_error"] = c.bwd_error
  else:
    row["fwd_bwd_temp_bytes"] = c.fwd_bwd_temp_bytes
    try:
      row["fwd_bwd_ms"] = timer(c.fwd_bwd, q, k, v, do, iterations=iterations)
      row["bwd_ms"] = max(row["fwd_bwd_ms"] - row["fwd_ms"], 1e-9)
    except Exception as e:
      row["bwd_error"] = row_error(e)
  del q, k, v, do
  flops = case.forward_flops()
  row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
  if "bwd_ms" in row:
    row["bwd_tflops"] = 2.5 * flops / row["bwd_ms"] / 1e9
    row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd_ms"] / 1e9
  return row
