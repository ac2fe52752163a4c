"""The command line of `python -m jflash.bench`: its flags, and a run from cases to report."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import warnings

import jax

from jflash.backends import nvidia_compute_capability
from jflash.bench.cases import Case
from jflash.bench.implementations import IMPLEMENTATIONS, available_implementations
from jflash.bench.report import (add_ratios, cudnn_text, merge, versions, write_report,
                                 write_results)
from jflash.bench.sweeps import block_sweep, memory_sweep, sweep, sweep_forward
from jflash.bench.timing import (compile_all, compile_case, gpu_time_ms, measure, progress,
                                 wall_time_ms)


def parser() -> argparse.ArgumentParser:
  """The flags of `python -m jflash.bench`."""
  p = argparse.ArgumentParser(prog="python -m jflash.bench",
                              description=sys.modules[__package__].__doc__.splitlines()[0])
  p.add_argument("--head-dim", type=int, nargs="+", default=[64, 128, 256])
  p.add_argument("--seq-len", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
  p.add_argument("--causal", choices=["yes", "no", "both"], default="both")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  p.add_argument("--impl", nargs="+", help=f"subset of {IMPLEMENTATIONS}")
  p.add_argument("--quick", action="store_true",
                 help="H=128, T in {1k, 4k}, a short memory sweep")
  p.add_argument("--iterations", type=int, default=20,
                 help="timed runs per measurement (the median is reported)")
  p.add_argument("--memory-seq-len", type=int, nargs="*",
                 default=[1024, 4096, 16384, 65536, 131072],
                 help="T for the B=1 memory sweep (none: skip it)")
  p.add_argument("--no-block-sweep", action="store_true")
  p.add_argument("--no-gqa", action="store_true", help="skip the grouped-query case")
  p.add_argument("--variants", action="store_true",
                 help="time the attention variants (windows, packing, padding, soft-cap, "
                      "ALiBi) at T=16k instead of the grid (see jflash/bench/variants.py)")
  p.add_argument("--tune", nargs="?", const="all", choices=["all", "fwd"],
                 help="only time block-size candidates: per kernel of fwd+bwd (all), "
                 "or forward only next to Pallas mha (fwd)")
  p.add_argument("--compile-workers", type=int, default=min(8, os.cpu_count() or 1),
                 help="threads compiling cases ahead of the (sequential) timing")
  p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                 help="join results.json files of earlier runs into --out (no GPU)")
  p.add_argument("--out", help="output folder (default: bench-<device>-<date>)")
  p.add_argument("--cpu-smoke", action="store_true",
                 help="test the plumbing on a CPU: tiny sizes, XLA paths, wall clock")
  return p


def main(argv=None) -> int:
  flags = parser()
  args = flags.parse_args(argv)
  if args.iterations < 1:
    flags.error(f"--iterations must be >= 1, got {args.iterations}")
  if args.merge:
    return merge(args.merge, pathlib.Path(args.out or "bench-merged"))

  on_gpu = nvidia_compute_capability(jax.devices()[0]) is not None
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
    flags.error(f"--impl {unknown} not in {IMPLEMENTATIONS}")
  causal = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
  tokens, width = (256, 64) if args.cpu_smoke else (16384, 2048)
  cases = [Case.grid(h, t, c, args.dtype, tokens, width)
           for h in args.head_dim for t in args.seq_len for c in causal]
  grid_cases = list(cases)
  if not args.no_gqa:  # one grouped-query case (N/K = 4), at the middle of the grid
    h_mid, t_mid = args.head_dim[len(args.head_dim) // 2], args.seq_len[len(args.seq_len) // 2]
    cases.append(Case.grid(h_mid, t_mid, True, args.dtype, tokens, width, group=4))
  meta = versions()
  out = pathlib.Path(args.out or f"bench-{meta['device'].replace(' ', '_')}-{meta['date']}")
  out.mkdir(parents=True, exist_ok=True)
  print(f"# {meta['device']}, jax {meta['jax']}, cuDNN {cudnn_text(meta['cudnn'])}, jflash "
        f"{meta['jflash']}, {meta['date']}; writing {out}/", flush=True)
  # Import JAX's Pallas ops once here: their import warns, and warning filters are not
  # thread-safe.
  warnings.filterwarnings("ignore", message=".*Pallas Triton backend is deprecated.*")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from jax.experimental.pallas.ops.gpu import attention as _  # pylint: disable=g-import-not-at-top,unused-import

  if args.variants:
    from jflash.bench import variants  # pylint: disable=g-import-not-at-top
    variants.run(out, timer, iterations)
    return 0

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
  for (case, impl), c in zip(progress(jobs, "timing"), compiled):
    rows.append(measure(impl, case, timer, iterations, compiled=c))
    write_results(out, meta, rows, [], [])  # a run cut short keeps what it measured
  del compiled
  add_ratios(rows)
  memory_impls = [i for i in impls if i != "pallas_mgpu"]
  memory_rows = (memory_sweep(memory_impls, args.memory_seq_len, workers=workers)
                 if args.memory_seq_len else [])
  write_results(out, meta, rows, memory_rows, [])
  block_rows = []
  if not args.no_block_sweep and "jflash:triton" in impls:
    block_rows = block_sweep(Case.grid(128 if 128 in args.head_dim else args.head_dim[0],
                                       4096 if 4096 in args.seq_len else args.seq_len[-1],
                                       False, args.dtype, tokens, width), timer=timer,
                             iterations=iterations, workers=workers)
  write_report(out, meta, rows, memory_rows, block_rows, args.dtype)
  return 0
