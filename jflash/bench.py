"""Side-by-side GPU timing of jflash against cuDNN and JAX's bundled Pallas `mha`.

``python -m jflash.bench`` runs, in one process on one GPU, the FlashAttention papers'
grid (bf16, B*T = 16k tokens, N*H = 2048) for every attention it can run there, and
prints forward and backward TFLOP/s. GPU time comes from CUPTI
(`jax.experimental.mosaic.gpu.profiler.measure`): the median over `--iterations` runs
after warm-up. FLOPs follow FlashAttention: forward 4*B*N*T*S*H (halved when causal),
backward 2.5x the forward; backward time = (forward + backward) - forward.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp

import jflash


@dataclasses.dataclass(frozen=True)
class Case:
  head_dim: int
  seq_len: int
  is_causal: bool
  dtype: str = "bfloat16"
  tokens: int = 16384
  width: int = 2048  # N * H

  @property
  def batch(self) -> int:
    return max(1, self.tokens // self.seq_len)

  @property
  def heads(self) -> int:
    return self.width // self.head_dim

  def forward_flops(self) -> float:
    flops = 4.0 * self.batch * self.heads * self.seq_len * self.seq_len * self.head_dim
    return flops / 2 if self.is_causal else flops


def gpu_time_ms(fn, *args, iterations: int = 20, warmup: int = 3) -> float:
  """Median GPU time of `fn(*args)` in milliseconds, from CUPTI kernel timestamps."""
  from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  _, times = profiler.measure(fn, iterations=iterations)(*args)
  return statistics.median(times)


def _attention_fns(name: str, case: Case, config=None):
  """(forward, forward+backward) callables for one implementation, or None if unsupported."""
  scale = case.head_dim ** -0.5
  if name.startswith("jflash"):
    impl = name.split(":")[1] if ":" in name else None

    def attn(q, k, v):
      return jflash.attention(q, k, v, is_causal=case.is_causal, implementation=impl,
                              config=config)
  elif name in ("cudnn", "xla"):
    def attn(q, k, v):
      return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=case.is_causal,
                                          implementation=name)
  elif name == "pallas_mha":
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      from jax.experimental.pallas.ops.gpu import attention as mha_module  # pylint: disable=g-import-not-at-top

    def attn(q, k, v):
      return mha_module.mha(q, k, v, segment_ids=None, sm_scale=scale, causal=case.is_causal)
  else:
    raise ValueError(f"unknown implementation {name!r}")

  fwd = jax.jit(attn)

  @jax.jit
  def fwd_bwd(q, k, v, do):
    out, vjp = jax.vjp(attn, q, k, v)
    return vjp(do)

  return fwd, fwd_bwd


def run_case(name: str, case: Case, iterations: int = 20, config=None) -> dict:
  """Times one implementation on one case; failures become a row that says why."""
  row = dict(impl=name, **dataclasses.asdict(case), batch=case.batch, heads=case.heads)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  shape = (case.batch, case.seq_len, case.heads, case.head_dim)
  q, k, v, do = (jax.random.normal(key, shape, case.dtype) for key in keys)
  try:
    fwd, fwd_bwd = _attention_fns(name, case, config)
    t_fwd = gpu_time_ms(fwd, q, k, v, iterations=iterations)
    t_all = gpu_time_ms(fwd_bwd, q, k, v, do, iterations=iterations)
  except Exception as e:  # an unsupported case or OOM is a row, never a crash
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row
  flops = case.forward_flops()
  t_bwd = max(t_all - t_fwd, 1e-9)
  row.update(fwd_ms=t_fwd, bwd_ms=t_bwd, fwd_bwd_ms=t_all,
             fwd_tflops=flops / t_fwd / 1e9, bwd_tflops=2.5 * flops / t_bwd / 1e9,
             fwd_bwd_tflops=3.5 * flops / t_all / 1e9)
  return row


# Block-size candidates for --sweep, per padded head dim: (block_q, block_kv, warps, stages)
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


def kernel_times_ms(case: Case, config, iterations: int = 20) -> dict[str, float]:
  """Median GPU time of each jflash kernel in one forward+backward, by kernel name."""
  from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  shape = (case.batch, case.seq_len, case.heads, case.head_dim)
  q, k, v, do = (jax.random.normal(key, shape, case.dtype) for key in keys)
  _, fwd_bwd = _attention_fns("jflash:triton", case, config)
  jax.block_until_ready(fwd_bwd(q, k, v, do))
  _, runs = profiler.measure(fwd_bwd, aggregate=False, iterations=iterations)(q, k, v, do)
  times: dict[str, list[float]] = {}
  for run in runs:
    for name, ms in run:
      kernel = next((k for k in ("dkv", "dq", "fwd") if k in name), name)
      times.setdefault(kernel, []).append(ms)
  return {name: statistics.median(ms) for name, ms in times.items()}


def sweep(case: Case, iterations: int = 20) -> list[dict]:
  """Times each candidate block config of SWEEP on one case, kernel by kernel."""
  table = SWEEP[jflash.tuning.padded_head_dim(case.head_dim)]
  rows = []
  for fwd, dkv, dq in zip(table["fwd"], table["dkv"], table["dq"]):
    config = jflash.AttentionConfig(
        block_q=fwd[0], block_kv=fwd[1], num_warps=fwd[2], num_stages=fwd[3],
        block_q_dkv=dkv[0], block_kv_dkv=dkv[1], num_warps_dkv=dkv[2], num_stages_dkv=dkv[3],
        block_q_dq=dq[0], block_kv_dq=dq[1], num_warps_dq=dq[2], num_stages_dq=dq[3])
    row = dict(case=dataclasses.asdict(case), fwd_config=fwd, dkv_config=dkv, dq_config=dq)
    try:
      row.update({f"{name}_ms": ms for name, ms in kernel_times_ms(case, config, iterations).items()})
    except Exception as e:  # a config that does not compile is a row, never a crash
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    rows.append(row)
    nan = float("nan")
    print(f"H={case.head_dim} T={case.seq_len} causal={case.is_causal!s:5} fwd {fwd} "
          f"{row.get('fwd_ms', nan):.3f} ms | dkv {dkv} {row.get('dkv_ms', nan):.3f} "
          f"ms | dq {dq} {row.get('dq_ms', nan):.3f} ms {row.get('error', '')}", flush=True)
  return rows


def temp_memory_bytes(name: str, case: Case, with_grad: bool = True) -> int | str:
  """XLA's compiled peak temporary memory for one implementation (compiles, never runs)."""
  shape = jax.ShapeDtypeStruct((case.batch, case.seq_len, case.heads, case.head_dim), case.dtype)
  try:
    fwd, fwd_bwd = _attention_fns(name, case)
    fn, args = (fwd_bwd, (shape,) * 4) if with_grad else (fwd, (shape,) * 3)
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
  except Exception as e:  # OOM at compile time, unsupported case
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--head-dim", type=int, nargs="*", default=[64, 128, 256])
  parser.add_argument("--seq-len", type=int, nargs="*", default=[1024, 4096, 16384])
  parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
  parser.add_argument("--impl", nargs="*", default=["jflash", "cudnn", "pallas_mha"])
  parser.add_argument("--iterations", type=int, default=20)
  parser.add_argument("--json", help="write the rows to this file")
  parser.add_argument("--memory", action="store_true",
                      help="peak temporary memory of fwd+bwd, B=1, N*H=2048, per --seq-len")
  parser.add_argument("--sweep", action="store_true",
                      help="time the block-size candidates of SWEEP, kernel by kernel")
  args = parser.parse_args(argv)
  if jax.default_backend() != "gpu":
    print(f"jflash.bench needs a GPU; JAX sees only {jax.devices()}", file=sys.stderr)
    return 2
  causal = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
  device = jax.devices()[0]
  print(f"# {device.device_kind}, jax {jax.__version__}, jflash {jflash.__version__}")
  rows = []
  if args.memory:
    for h in args.head_dim:
      for t in args.seq_len:
        case = Case(h, t, True, tokens=t)
        for name in args.impl:
          used = temp_memory_bytes(name, case)
          text = used if isinstance(used, str) else f"{used / 2**20:10.1f} MiB"
          print(f"memory fwd+bwd B=1 N={case.heads} H={h} T={t} causal {name:12s} {text}",
                flush=True)
    return 0
  if args.sweep:
    for h in args.head_dim:
      for t in args.seq_len:
        for c in causal:
          rows.extend(sweep(Case(h, t, c), args.iterations))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(dict(device=device.device_kind, jax=jax.__version__, rows=rows), f, indent=1)
    return 0
  for h in args.head_dim:
    for t in args.seq_len:
      for c in causal:
        case = Case(h, t, c)
        for name in args.impl:
          start = time.time()
          row = run_case(name, case, args.iterations)
          rows.append(row)
          if "error" in row:
            print(f"H={h:3d} T={t:5d} causal={c!s:5} {name:12s} {row['error']}", flush=True)
          else:
            print(f"H={h:3d} T={t:5d} causal={c!s:5} {name:12s} fwd {row['fwd_tflops']:6.1f} "
                  f"bwd {row['bwd_tflops']:6.1f} TFLOP/s  ({row['fwd_ms']:.3f} / "
                  f"{row['bwd_ms']:.3f} ms) [{time.time() - start:.0f}s]", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(device=device.device_kind, jax=jax.__version__, rows=rows), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
