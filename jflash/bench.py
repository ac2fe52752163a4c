"""`python -m jflash.bench`: attention speed and memory, side by side, on one GPU.

Runs, in one process, jflash (every implementation the device has) next to
``jax.nn.dot_product_attention`` (``implementation="xla"`` and ``"cudnn"``) and JAX's
bundled Pallas kernels (``jax.experimental.pallas.ops.gpu.attention.mha`` and, on
Hopper, ``attention_mgpu``, in fp16 where it takes no bf16), each where it supports the
case; an unsupported case or an out-of-memory is a row that says so.

Measures forward, backward and forward+backward GPU time with CUPTI
(``jax.experimental.mosaic.gpu.profiler.measure``): the median of ``--iterations`` runs
after warm-up. TFLOP/s use the FlashAttention convention: forward 4·B·N·T·S·H (halved
when causal), backward 2.5x the forward, backward time = (forward+backward) − forward.
Peak temporary memory comes from XLA's compiled memory analysis.

Default grid: H in {64, 128, 256} × T in {512 .. 16k} × causal/not, bf16, B·T = 16k,
N·H = 2048 (the FlashAttention papers' grid), plus a GQA case, a long-context memory
sweep (B=1, H=128, causal, T up to 128k) and a block-size sweep (runtime vs block_kv).
Writes ``results.json``, ``results.csv`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import datetime
import json
import os
import pathlib
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp

import jflash

IMPLEMENTATIONS = ("jflash:triton", "jflash:xla", "cudnn", "xla", "pallas_mha", "pallas_mgpu")


class Unsupported(Exception):
  """The implementation does not run this case (the reason is the message)."""


@dataclasses.dataclass(frozen=True)
class Case:
  """One attention problem: B·T tokens of N heads of size H (K key/value heads)."""

  head_dim: int
  seq_len: int
  is_causal: bool
  dtype: str = "bfloat16"
  batch: int = 1
  heads: int = 16
  kv_heads: int = 16

  @classmethod
  def grid(cls, head_dim, seq_len, is_causal, dtype="bfloat16", tokens=16384, width=2048,
           group=1):
    """The papers' grid point: B = tokens // T, N = width // H, K = N // group."""
    heads = max(1, width // head_dim)
    return cls(head_dim, seq_len, is_causal, dtype, max(1, tokens // seq_len), heads,
               max(1, heads // group))

  def forward_flops(self) -> float:
    flops = 4.0 * self.batch * self.heads * self.seq_len * self.seq_len * self.head_dim
    return flops / 2 if self.is_causal else flops

  def label(self) -> str:
    gqa = f" K={self.kv_heads}" if self.kv_heads != self.heads else ""
    return (f"H={self.head_dim} T={self.seq_len} {'causal' if self.is_causal else 'full'} "
            f"B={self.batch} N={self.heads}{gqa} {self.dtype}")


# --------------------------------------------------------------------- implementations


def attention_fn(impl: str, case: Case, config=None):
  """A function (q, k, v) -> out for `impl` on `case`; raises Unsupported if it cannot."""
  scale = case.head_dim ** -0.5
  if impl.startswith("jflash"):
    backend = impl.split(":")[1] if ":" in impl else None
    return lambda q, k, v: jflash.attention(q, k, v, is_causal=case.is_causal,
                                            implementation=backend, config=config)
  if impl in ("cudnn", "xla"):
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=case.is_causal, implementation=impl)
  if impl == "pallas_mha":
    if case.kv_heads != case.heads:
      raise Unsupported("mha has no GQA (needs K == N)")
    if case.seq_len % 128:
      raise Unsupported("mha needs T to be a multiple of its 128 block")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      from jax.experimental.pallas.ops.gpu import attention as mha  # pylint: disable=g-import-not-at-top
    return lambda q, k, v: mha.mha(q, k, v, segment_ids=None, sm_scale=scale,
                                   causal=case.is_causal)
  if impl == "pallas_mgpu":
    device = jax.devices()[0]
    if jflash.tuning.gpu_compute_capability(device) != (9, 0):
      raise Unsupported("attention_mgpu needs a Hopper (sm_90) GPU")
    if case.head_dim % 64 or case.seq_len % 128:
      raise Unsupported("attention_mgpu needs H % 64 == 0 and T % 128 == 0")
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mgpu  # pylint: disable=g-import-not-at-top
    block = 64 if case.head_dim > 128 else 128
    config = mgpu.TuningConfig(block_q=64, block_kv=block, max_concurrent_steps=2,
                               causal=case.is_causal, block_q_dkv=64, block_kv_dkv=64,
                               block_q_dq=64, block_kv_dq=64)
    # attention_mgpu's bf16 path is not usable in practice (ANCHORS.md): run it in fp16.
    return lambda q, k, v: mgpu.attention(*(x.astype(jnp.float16) for x in (q, k, v)),
                                          config).astype(q.dtype)
  raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")


def available_implementations() -> tuple[str, ...]:
  """What this device can run: everything on an sm80+ GPU, only XLA paths elsewhere."""
  capability = jflash.tuning.gpu_compute_capability(jax.devices()[0])
  if capability is None:
    return ("jflash:xla", "xla")
  impls = [i for i in IMPLEMENTATIONS if i != "pallas_mgpu" or capability == (9, 0)]
  return tuple(impls)


# ------------------------------------------------------------------------------ timing


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


def _shapes(case: Case):
  q_shape = (case.batch, case.seq_len, case.heads, case.head_dim)
  kv_shape = (case.batch, case.seq_len, case.kv_heads, case.head_dim)
  return [jax.ShapeDtypeStruct(s, jnp.dtype(case.dtype))
          for s in (q_shape, kv_shape, kv_shape, q_shape)]


def _inputs(case: Case):
  """Random q, k, v, dO of the case's shapes and dtype, on the default device."""
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  return [jax.random.normal(key, s.shape, s.dtype) for key, s in zip(keys, _shapes(case))]


def _error(e: Exception) -> str:
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  if isinstance(e, Unsupported):
    return f"unsupported: {text}"
  if isinstance(e, NotImplementedError):
    return f"unsupported: {type(e).__name__}: {text[:160]}"
  if "Shared memory size limit exceeded" in text:
    return f"unsupported: its tiles need more shared memory than the GPU has ({text[:120]})"
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return f"out of memory: {text[:160]}"
  return f"failed: {type(e).__name__}: {text[:160]}"


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
  shapes = _shapes(case)
  try:
    attn = attention_fn(impl, case, config)
    result.fwd, result.fwd_temp_bytes = _compiled(attn, *shapes[:3])
  except Exception as e:  # a row that says why, never a crash
    result.error = _error(e)
    return result

  def fwd_bwd(q, k, v, do):
    return jax.vjp(attn, q, k, v)[1](do)

  try:
    result.fwd_bwd, result.fwd_bwd_temp_bytes = _compiled(fwd_bwd, *shapes)
  except Exception as e:
    result.bwd_error = _error(e)
  return result


def compile_all(jobs, workers: int, desc: str = "compiling") -> list:
  """`[fn(*args) for fn, *args in jobs]`, compiled on `workers` threads.

  XLA and Triton compile outside the GIL, so a pool cuts the grid's compile time several
  fold; the timing itself stays sequential. workers <= 1 compiles in this thread.
  """
  if workers <= 1:
    return [fn(*args) for fn, *args in jobs]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(fn, *args) for fn, *args in jobs]
    for _ in _progress(concurrent.futures.as_completed(futures), desc, total=len(futures)):
      pass
    return [f.result() for f in futures]


def measure(impl: str, case: Case, timer=gpu_time_ms, iterations: int = 20, config=None,
            compiled: Compiled | None = None) -> dict:
  """Forward, backward and fwd+bwd time, TFLOP/s and temp memory of `impl` on `case`."""
  row = dict(impl=impl, head_dim=case.head_dim, seq_len=case.seq_len, causal=case.is_causal,
             dtype=case.dtype, batch=case.batch, heads=case.heads, kv_heads=case.kv_heads)
  c = compiled if compiled is not None else compile_case(impl, case, config)
  if c.error:
    row["error"] = c.error
    return row
  row["fwd_temp_bytes"] = c.fwd_temp_bytes
  try:
    q, k, v, do = _inputs(case)
    row["fwd_ms"] = timer(c.fwd, q, k, v, iterations=iterations)
  except Exception as e:  # e.g. out of memory at run time
    row["error"] = _error(e)
    return row
  if c.bwd_error:
    row["bwd_error"] = c.bwd_error
  else:
    row["fwd_bwd_temp_bytes"] = c.fwd_bwd_temp_bytes
    try:
      row["fwd_bwd_ms"] = timer(c.fwd_bwd, q, k, v, do, iterations=iterations)
      row["bwd_ms"] = max(row["fwd_bwd_ms"] - row["fwd_ms"], 1e-9)
    except Exception as e:
      row["bwd_error"] = _error(e)
  del q, k, v, do
  flops = case.forward_flops()
  row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
  if "bwd_ms" in row:
    row["bwd_tflops"] = 2.5 * flops / row["bwd_ms"] / 1e9
    row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd_ms"] / 1e9
  return row


def add_ratios(rows: list[dict], baseline: str = "cudnn") -> None:
  """Adds `*_vs_cudnn` = TFLOP/s / cuDNN's TFLOP/s on the same case, in place."""
  key = lambda r: (r["head_dim"], r["seq_len"], r["causal"], r["dtype"], r["batch"],
                   r["heads"], r["kv_heads"])
  base = {key(r): r for r in rows if r["impl"] == baseline and "error" not in r}
  for r in rows:
    b = base.get(key(r))
    for metric in ("fwd_tflops", "bwd_tflops", "fwd_bwd_tflops"):
      if b is not None and metric in r and metric in b:
        r[metric.replace("tflops", f"vs_{baseline}")] = r[metric] / b[metric]


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


def _compile_forward(impl: str, case: Case, config=None):
  """(compiled forward, None) or (None, why not)."""
  try:
    return _compiled(attention_fn(impl, case, config), *_shapes(case)[:3])[0], None
  except Exception as e:
    return None, _error(e)


def block_sweep(case: Case, block_kvs=(16, 32, 64, 128, 256), timer=gpu_time_ms,
                iterations: int = 20, workers: int = 1) -> list[dict]:
  """Forward time of jflash's Triton kernel vs block_kv (FlashAttention paper, Fig. 2)."""
  dtype = jnp.dtype(case.dtype)
  base = jflash.default_config(case.head_dim, dtype, case.is_causal, kv_len=case.seq_len)
  limit = jflash.tuning.shared_memory_limit(
      jflash.tuning.gpu_compute_capability(jax.devices()[0]) or (9, 0))
  configs = []
  for block_kv in block_kvs:  # fewer pipeline stages where the tiles would not fit
    config = dataclasses.replace(base, block_kv=block_kv)
    while (config.num_stages > 1 and jflash.tuning.shared_memory_estimate(
        config, case.head_dim, dtype)["forward"] > limit):
      config = dataclasses.replace(config, num_stages=config.num_stages - 1)
    configs.append(config)
  compiled = compile_all([(_compile_forward, "jflash:triton", case, c) for c in configs],
                         workers, "block sweep")
  q, k, v, _ = _inputs(case)
  rows = []
  for config, (fwd, error) in zip(configs, compiled):
    row = dict(head_dim=case.head_dim, seq_len=case.seq_len, causal=case.is_causal,
               block_q=config.block_q, block_kv=config.block_kv, num_stages=config.num_stages)
    try:
      if error:
        row["error"] = error
      else:
        row["fwd_ms"] = timer(fwd, q, k, v, iterations=iterations)
    except Exception as e:
      row["error"] = _error(e)
    rows.append(row)
  return rows


# Block-size candidates for --tune, per padded head dim: (block_q, block_kv, warps, stages)
# for the forward, dK/dV and dQ kernels. Candidate i of each list runs in the same call.
SWEEP = {
    64: dict(
        fwd=[(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 4), (64, 64, 4, 4), (128, 128, 8, 3),
             (64, 32, 4, 4), (128, 64, 8, 2), (64, 64, 8, 3)],
        dkv=[(32, 64, 4, 3), (64, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 3), (32, 32, 4, 3),
             (64, 32, 4, 3), (32, 64, 4, 4), (64, 64, 8, 2)],
        dq=[(64, 64, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (128, 32, 8, 4),
            (64, 64, 8, 3), (128, 64, 8, 4), (32, 64, 4, 3)]),
    128: dict(
        fwd=[(128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3),
             (128, 32, 8, 4), (64, 64, 4, 4), (128, 128, 8, 2)],
        dkv=[(64, 64, 4, 2), (64, 64, 4, 3), (32, 64, 4, 3), (64, 128, 8, 3), (64, 32, 4, 3),
             (32, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2)],
        dq=[(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 64, 8, 4), (64, 32, 4, 3),
            (128, 32, 4, 3), (64, 64, 8, 3), (128, 128, 8, 2)]),
    256: dict(
        fwd=[(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 8, 3), (128, 32, 8, 2), (128, 64, 4, 2),
             (64, 32, 4, 2), (64, 64, 4, 3), (128, 16, 8, 4)],
        dkv=[(64, 32, 4, 2), (64, 32, 4, 3), (64, 32, 8, 2), (32, 32, 4, 2), (64, 16, 4, 3),
             (64, 64, 4, 2), (32, 32, 4, 3), (128, 32, 8, 2)],
        dq=[(128, 64, 8, 1), (128, 32, 8, 2), (128, 32, 8, 3), (64, 16, 4, 3), (128, 16, 8, 3),
            (128, 64, 8, 2), (64, 32, 4, 3), (128, 32, 4, 2)]),
}

# Forward-only candidates for `--tune fwd` (more of them: a forward compiles in seconds).
FORWARD_SWEEP = {
    64: [(128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 8, 5), (128, 128, 4, 2), (128, 128, 4, 3),
         (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3),
         (64, 128, 4, 3), (256, 64, 16, 3), (256, 128, 16, 2)],
    128: [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 8, 2),
          (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (64, 128, 4, 3),
          (256, 64, 16, 3)],
    256: [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 128, 8, 1),
          (256, 64, 16, 2)],
}


def _kernel_times_ms(fwd_bwd, args, iterations: int) -> dict[str, float]:
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


def _config(fwd, dkv=None, dq=None):
  kwargs = dict(block_q=fwd[0], block_kv=fwd[1], num_warps=fwd[2], num_stages=fwd[3])
  for suffix, blocks in (("_dkv", dkv), ("_dq", dq)):
    if blocks:
      kwargs.update({f"block_q{suffix}": blocks[0], f"block_kv{suffix}": blocks[1],
                     f"num_warps{suffix}": blocks[2], f"num_stages{suffix}": blocks[3]})
  return jflash.AttentionConfig(**kwargs)


def sweep(case: Case, iterations: int = 20, workers: int = 1) -> list[dict]:
  """Times each candidate block config of SWEEP on one case, kernel by kernel."""
  table = SWEEP[jflash.tuning.padded_head_dim(case.head_dim)]
  candidates = list(zip(table["fwd"], table["dkv"], table["dq"]))
  compiled = compile_all([(compile_case, "jflash:triton", case, _config(*c))
                          for c in candidates], workers, "tune")
  args = _inputs(case)
  rows = []
  for (fwd, dkv, dq), c in zip(candidates, compiled):
    row = dict(case=dataclasses.asdict(case), fwd_config=fwd, dkv_config=dkv, dq_config=dq)
    try:
      if c.error or c.bwd_error:
        raise RuntimeError(c.error or c.bwd_error)
      row.update({f"{k}_ms": ms for k, ms in _kernel_times_ms(c.fwd_bwd, args, iterations).items()})
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
  """Times the FORWARD_SWEEP candidates and JAX's Pallas `mha` forward on one case."""
  candidates = FORWARD_SWEEP[jflash.tuning.padded_head_dim(case.head_dim)]
  jobs = [(_compile_forward, "jflash:triton", case, _config(c)) for c in candidates]
  jobs.append((_compile_forward, "pallas_mha", case))
  compiled = compile_all(jobs, workers, "tune fwd")
  q, k, v, _ = _inputs(case)
  rows = []
  for config, (fwd, error) in zip([*candidates, "pallas_mha"], compiled):
    row = dict(case=dataclasses.asdict(case), config=config)
    try:
      if error:
        row["error"] = error
      else:
        row["fwd_ms"] = timer(fwd, q, k, v, iterations=iterations)
        row["fwd_tflops"] = case.forward_flops() / row["fwd_ms"] / 1e9
    except Exception as e:
      row["error"] = _error(e)
    rows.append(row)
  mha = rows[-1].get("fwd_tflops")
  for row in sorted(rows, key=lambda r: r.get("fwd_ms", float("inf"))):
    ratio = f"{row['fwd_tflops'] / mha:5.2f}x mha" if mha and "fwd_tflops" in row else ""
    text = row.get("error") or f"{row['fwd_ms']:.3f} ms {row['fwd_tflops']:6.1f} TFLOP/s {ratio}"
    print(f"H={case.head_dim} T={case.seq_len} causal={case.is_causal!s:5} "
          f"{str(row['config']):20s} {text}", flush=True)
  return rows


# -------------------------------------------------------------------- tables and plots


def format_table(rows: list[dict]) -> str:
  """The rows as a text table: TFLOP/s fwd / bwd / fwd+bwd, ratio to cuDNN, memory."""
  head = (f"{'case':44s} {'impl':14s} {'fwd':>7s} {'bwd':>7s} {'f+b':>7s} "
          f"{'fwd/cuDNN':>9s} {'bwd/cuDNN':>9s} {'temp f+b':>10s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    case = Case(r["head_dim"], r["seq_len"], r["causal"], r["dtype"], r["batch"], r["heads"],
                r["kv_heads"]).label()
    if "error" in r:
      lines.append(f"{case:44s} {r['impl']:14s} {r['error']}")
      continue
    fmt = lambda key, spec: format(r[key], spec) if key in r else format("—", ">" + spec[0])
    temp = f"{r['fwd_bwd_temp_bytes'] / 2**20:8.1f}Mi" if "fwd_bwd_temp_bytes" in r else "—"
    lines.append(f"{case:44s} {r['impl']:14s} {fmt('fwd_tflops', '7.1f')} "
                 f"{fmt('bwd_tflops', '7.1f')} {fmt('fwd_bwd_tflops', '7.1f')} "
                 f"{fmt('fwd_vs_cudnn', '9.2f')} {fmt('bwd_vs_cudnn', '9.2f')} {temp:>10s}"
                 + (f"  ({r['bwd_error']})" if "bwd_error" in r else ""))
  return "\n".join(lines)


def markdown_table(rows: list[dict], ours: str = "jflash:triton") -> str:
  """fwd / bwd TFLOP/s per case and implementation, and `ours` over cuDNN and over mha."""
  impls = list(dict.fromkeys(r["impl"] for r in rows))
  cases = list(dict.fromkeys((r["head_dim"], r["seq_len"], r["causal"], r["batch"], r["heads"],
                              r["kv_heads"]) for r in rows))
  by = {(r["impl"], r["head_dim"], r["seq_len"], r["causal"], r["batch"], r["heads"],
         r["kv_heads"]): r for r in rows}

  def cell(r):
    if r is None:
      return "—"
    if "error" in r:
      return r["error"].split(":")[0]
    bwd = f"{r['bwd_tflops']:.0f}" if "bwd_tflops" in r else "—"
    return f"{r['fwd_tflops']:.0f} / {bwd}"

  def ratio(a, b):
    if not a or not b or "fwd_tflops" not in a or "fwd_tflops" not in b:
      return "—"
    text = f"{a['fwd_tflops'] / b['fwd_tflops']:.2f}x"
    if "bwd_tflops" in a and "bwd_tflops" in b:
      text += f", {a['bwd_tflops'] / b['bwd_tflops']:.2f}x"
    return text

  head = ["H", "T", "causal", "B", "N", "K", *map(_legend, impls), f"{ours} / cudnn",
          f"{ours} / pallas_mha"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for case in cases:
    h, t, causal, b, n, k = case
    cells = [cell(by.get((impl, *case))) for impl in impls]
    mine = by.get((ours, *case))
    lines.append("| " + " | ".join([str(h), str(t), "yes" if causal else "no", str(b), str(n),
                                    str(k), *cells, ratio(mine, by.get(("cudnn", *case))),
                                    ratio(mine, by.get(("pallas_mha", *case)))]) + " |")
  return "\n".join(lines)


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
  fields = sorted({k for r in rows for k in r})
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _legend(impl: str) -> str:
  return impl + " (fp16)" if impl == "pallas_mgpu" else impl


def plot_all(out: pathlib.Path, rows, memory_rows, block_rows, title: str) -> list[str]:
  """TFLOP/s vs T per head dim (forward, backward), memory vs T, runtime vs block_kv."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("matplotlib is not installed: no plots (pip install 'jflash[bench]')")
    return []
  written = []
  grid = [r for r in rows if r["kv_heads"] == r["heads"] and "error" not in r]
  head_dims = sorted({r["head_dim"] for r in grid})
  for metric, name in (("fwd_tflops", "forward"), ("bwd_tflops", "backward")):
    if not head_dims:
      break
    causals = sorted({r["causal"] for r in grid})
    fig, axes = plt.subplots(len(causals), len(head_dims),
                             figsize=(4.5 * len(head_dims), 3.5 * len(causals)), squeeze=False)
    for col, h in enumerate(head_dims):
      for row_i, causal in enumerate(causals):
        ax = axes[row_i][col]
        for impl in dict.fromkeys(r["impl"] for r in grid):
          pts = sorted((r["seq_len"], r[metric]) for r in grid if r["impl"] == impl
                       and r["head_dim"] == h and r["causal"] == causal and metric in r)
          if pts:
            ax.plot(*zip(*pts), "o-", label=_legend(impl))
        ax.set_xscale("log", base=2)
        ax.set(title=f"H={h}, {'causal' if causal else 'not causal'}", xlabel="sequence length",
               ylabel=f"{name} TFLOP/s")
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: {title}")
    fig.tight_layout()
    path = out / f"tflops_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)
  if memory_rows:
    # As in FlashAttention (Dao et al. 2022), Figure 3: left, forward+backward runtime vs
    # T (here from the grid, at one head dim, not causal); right, memory vs T (B=1).
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {impl: f"C{i}" for i, impl in enumerate(IMPLEMENTATIONS)}
    h = 128 if 128 in head_dims else (head_dims[0] if head_dims else None)
    for impl in dict.fromkeys(r["impl"] for r in grid):
      pts = sorted((r["seq_len"], r["fwd_bwd_ms"]) for r in grid if r["impl"] == impl
                   and r["head_dim"] == h and not r["causal"] and "fwd_bwd_ms" in r)
      if pts:
        left.plot(*zip(*pts), "o-", label=_legend(impl), color=colors.get(impl))
    left.set(xlabel="sequence length (B·T = 16k tokens)", ylabel="forward+backward time (ms)",
             title=f"runtime, H={h}, not causal", xscale="log", yscale="log")
    for impl in dict.fromkeys(r["impl"] for r in memory_rows):
      pts = sorted((r["seq_len"], r["fwd_bwd_temp_bytes"] / 2**20) for r in memory_rows
                   if r["impl"] == impl and "fwd_bwd_temp_bytes" in r)
      if pts:
        right.plot(*zip(*pts), "o-", label=_legend(impl), color=colors.get(impl))
    r0 = memory_rows[0]
    right.set(xlabel="sequence length (B=1)", ylabel="peak temporary memory, fwd+bwd (MiB)",
              title=f"memory, H={r0['head_dim']} N={r0['heads']}, causal", xscale="log",
              yscale="log")
    for ax in (left, right):
      ax.set_xscale("log", base=2)
      if ax.lines:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)
    written.append("memory.png")
  ok = [r for r in block_rows if "fwd_ms" in r]
  if ok:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["block_kv"] for r in ok], [r["fwd_ms"] for r in ok], "o-")
    for r in ok:
      stages = r.get("num_stages", "?")
      ax.annotate(f"{stages} stage{'' if stages == 1 else 's'}", (r["block_kv"], r["fwd_ms"]),
                  textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    r0 = ok[0]
    ax.set(xlabel="block_kv", ylabel="forward time (ms)",
           title=f"jflash triton, H={r0['head_dim']} T={r0['seq_len']}, block_q={r0['block_q']}")
    fig.tight_layout()
    fig.savefig(out / "block_sweep.png", dpi=110)
    plt.close(fig)
    written.append("block_sweep.png")
  return written


def _progress(items, desc, total=None):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(items, desc=desc, total=total, dynamic_ncols=True, file=sys.stdout)
  except ImportError:
    return items


def _cudnn_text(version) -> str:
  """cuDNN's integer version (e.g. 91900) as text (9.19.0)."""
  if not isinstance(version, int):
    return str(version)
  return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"


def _versions() -> dict:
  info = dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
              jflash=jflash.__version__, date=datetime.date.today().isoformat(),
              command=" ".join(["python -m jflash.bench", *sys.argv[1:]]))
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top
    info["cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions else None
  except Exception:  # not a CUDA build
    info["cudnn"] = None
  return info


# --------------------------------------------------------------------------------- CLI


def _write_results(out: pathlib.Path, meta, rows, memory_rows, block_rows) -> None:
  (out / "results.json").write_text(json.dumps(
      dict(meta=meta, rows=rows, memory=memory_rows, block_sweep=block_rows), indent=1))


def _report(out: pathlib.Path, meta, rows, memory_rows, block_rows, dtype) -> None:
  """Writes results.json/.csv and the plots, and prints the table."""
  _write_results(out, meta, rows, memory_rows, block_rows)
  write_csv(rows, out / "results.csv")
  dates = meta["date"] if isinstance(meta["date"], list) else [meta["date"]]
  (out / "results.md").write_text(
      f"{meta['device']}, jax {meta['jax']}, cuDNN {_cudnn_text(meta['cudnn'])}, "
      f"{', '.join(dates)}: forward / backward TFLOP/s (ratios: forward, backward)\n\n"
      + markdown_table(rows) + "\n")
  plots = plot_all(out, rows, memory_rows, block_rows,
                   f"{meta['device']}, {dtype}, jax {meta['jax']}")
  print(format_table(rows))
  for r in memory_rows:
    text = r.get("error") or (f"fwd {r['fwd_temp_bytes'] / 2**20:9.1f} MiB, fwd+bwd "
                              f"{r['fwd_bwd_temp_bytes'] / 2**20:9.1f} MiB")
    print(f"memory B=1 N={r['heads']} H={r['head_dim']} T={r['seq_len']:6d} causal "
          f"{r['impl']:14s} {text}")
  for r in block_rows:
    print(f"block sweep H={r['head_dim']} T={r['seq_len']} block_q={r['block_q']} "
          f"block_kv={r['block_kv']:3d} stages={r.get('num_stages', '?')}: {r.get('error') or format(r['fwd_ms'], '.3f') + ' ms'}")
  print(f"wrote {out}/results.json, results.csv" + "".join(f", {p}" for p in plots))


def merge(paths, out: pathlib.Path) -> int:
  """`--merge`: joins results.json files of several runs (same device) into one report.

  A case measured in several runs keeps its first run's row; the memory and block-size
  sweeps come from the last run that has them.
  """
  runs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
  devices = {r["meta"]["device"] for r in runs}
  if len(devices) != 1:
    print(f"--merge: the runs come from different devices {sorted(devices)}; not merging",
          file=sys.stderr)
    return 2
  meta = dict(runs[0]["meta"], command=[r["meta"]["command"] for r in runs],
              date=sorted({r["meta"]["date"] for r in runs}))
  rows, seen = [], set()
  for row in (row for r in runs for row in r["rows"]):  # a case measured twice: the first
    key = tuple(row[k] for k in ("impl", "head_dim", "seq_len", "causal", "dtype", "batch",
                                 "heads", "kv_heads"))
    if key not in seen:
      seen.add(key)
      rows.append(row)
  # A sweep is one experiment: the last run that has one supplies it.
  memory_rows = next((r["memory"] for r in reversed(runs) if r["memory"]), [])
  block_rows = next((r["block_sweep"] for r in reversed(runs) if r["block_sweep"]), [])
  out.mkdir(parents=True, exist_ok=True)
  dtypes = sorted({r["dtype"] for r in rows})
  _report(out, meta, rows, memory_rows, block_rows, "/".join(dtypes))
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128, 256])
  parser.add_argument("--seq-len", type=int, nargs="+",
                      default=[512, 1024, 2048, 4096, 8192, 16384])
  parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  parser.add_argument("--impl", nargs="+", help=f"subset of {IMPLEMENTATIONS}")
  parser.add_argument("--quick", action="store_true",
                      help="H=128, T in {1k, 4k}, a short memory sweep")
  parser.add_argument("--iterations", type=int, default=20,
                      help="timed runs per measurement (the median is reported)")
  parser.add_argument("--memory-seq-len", type=int, nargs="*",
                      default=[1024, 4096, 16384, 65536, 131072],
                      help="T for the B=1 memory sweep (none: skip it)")
  parser.add_argument("--no-block-sweep", action="store_true")
  parser.add_argument("--no-gqa", action="store_true", help="skip the grouped-query case")
  parser.add_argument("--tune", nargs="?", const="all", choices=["all", "fwd"],
                      help="only time block-size candidates: per kernel of fwd+bwd (all), "
                      "or forward only next to Pallas mha (fwd)")
  parser.add_argument("--compile-workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="threads compiling cases ahead of the (sequential) timing")
  parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                      help="join results.json files of earlier runs into --out (no GPU)")
  parser.add_argument("--out", help="output folder (default: bench-<device>-<date>)")
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="test the plumbing on a CPU: tiny sizes, XLA paths, wall clock")
  args = parser.parse_args(argv)
  if args.iterations < 1:
    parser.error(f"--iterations must be >= 1, got {args.iterations}")
  if args.merge:
    return merge(args.merge, pathlib.Path(args.out or "bench-merged"))

  on_gpu = jflash.tuning.gpu_compute_capability(jax.devices()[0]) is not None
  if not on_gpu and not args.cpu_smoke:
    print(f"jflash.bench needs an NVIDIA GPU; JAX sees {jax.devices()}. (--cpu-smoke only "
          "tests the plumbing.)", file=sys.stderr)
    return 2
  timer, iterations, workers = gpu_time_ms, args.iterations, args.compile_workers
  if args.quick:
    args.head_dim, args.seq_len = [128], [1024, 4096]
    args.memory_seq_len = [1024, 16384]
  if args.cpu_smoke:
    timer, iterations = wall_time_ms, 2
  impls = tuple(args.impl or (("jflash:xla", "xla") if args.cpu_smoke
                              else available_implementations()))
  unknown = [i for i in impls if i not in IMPLEMENTATIONS]
  if unknown:
    parser.error(f"--impl {unknown} not in {IMPLEMENTATIONS}")
  causal = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
  tokens, width = (256, 64) if args.cpu_smoke else (16384, 2048)
  cases = [Case.grid(h, t, c, args.dtype, tokens, width)
           for h in args.head_dim for t in args.seq_len for c in causal]
  grid_cases = list(cases)
  if not args.no_gqa:  # one grouped-query case (N/K = 4), at the middle of the grid
    h_mid, t_mid = args.head_dim[len(args.head_dim) // 2], args.seq_len[len(args.seq_len) // 2]
    cases.append(Case.grid(h_mid, t_mid, True, args.dtype, tokens, width, group=4))
  meta = _versions()
  out = pathlib.Path(args.out or f"bench-{meta['device'].replace(' ', '_')}-{meta['date']}")
  out.mkdir(parents=True, exist_ok=True)
  print(f"# {meta['device']}, jax {meta['jax']}, cuDNN {_cudnn_text(meta['cudnn'])}, jflash "
        f"{meta['jflash']}, {meta['date']}; writing {out}/", flush=True)
  # Import JAX's Pallas ops once here: their import warns, and warning filters are not
  # thread-safe.
  warnings.filterwarnings("ignore", message=".*Pallas Triton backend is deprecated.*")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from jax.experimental.pallas.ops.gpu import attention as _  # pylint: disable=g-import-not-at-top,unused-import

  if args.tune:
    tune_rows = []
    for case in grid_cases:
      if args.tune == "fwd":
        tune_rows += sweep_forward(case, iterations, workers, timer)
      else:
        tune_rows += sweep(case, iterations, workers)
      (out / f"tune_{args.tune}.json").write_text(json.dumps(dict(meta=meta, rows=tune_rows),
                                                             indent=1))
    return 0

  jobs = [(case, impl) for case in cases for impl in impls]
  compiled = compile_all([(compile_case, impl, case) for case, impl in jobs], workers)
  rows = []
  for (case, impl), c in zip(_progress(jobs, "timing"), compiled):
    rows.append(measure(impl, case, timer, iterations, compiled=c))
    _write_results(out, meta, rows, [], [])  # a run cut short keeps what it measured
  del compiled
  add_ratios(rows)
  memory_impls = [i for i in impls if i != "pallas_mgpu"]
  memory_rows = (memory_sweep(memory_impls, args.memory_seq_len, workers=workers)
                 if args.memory_seq_len else [])
  _write_results(out, meta, rows, memory_rows, [])
  block_rows = []
  if not args.no_block_sweep and "jflash:triton" in impls:
    block_rows = block_sweep(Case.grid(128 if 128 in args.head_dim else args.head_dim[0],
                                       4096 if 4096 in args.seq_len else args.seq_len[-1],
                                       False, args.dtype, tokens, width), timer=timer,
                             iterations=iterations, workers=workers)
  _report(out, meta, rows, memory_rows, block_rows, args.dtype)
  return 0


if __name__ == "__main__":
  sys.exit(main())
