"""Compiles every case of tests/test_mosaic_gpu.py natively (through ptxas) on a machine
without a GPU, as the native tests would on Hopper, and prints ptxas's report per kernel.

The native tests need an H100/H200; this checks, without one, that each of their cases
(variants, dtypes, head dims, GQA, ragged shapes) gets through Mosaic GPU's whole
compile (MLIR passes, LLVM NVPTX, ptxas) in each backward form: the default, the fused
kernel (deterministic=False, H <= 128), and MosaicGpuConfig.bwd_overlap forced on
(H <= 128). It cannot run them: correctness stays with the native tests. jflash's
device check is told it runs on compute capability 9.0 while tracing; nothing else is
patched.

  PYTHONPATH=. python benchmarks/ptxas_cpu/compile_test_cases.py [--tools DIR] [-k SUBSTR]

Exit status 1 if any module fails to compile (no ptxas report) or any kernel spills.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

import ptxas_cpu  # noqa: E402


def forms(case):
  """(label, attention kwargs) of the backward forms to compile for `case`."""
  from jflash.kernels.mosaic_gpu.config import default_config, kernel_head_dim
  _, t, _, _, _, h, _, kwargs = case
  base = default_config(kernel_head_dim(h), kwargs.get("is_causal", False), t)
  yield "default", {}
  if kernel_head_dim(h) <= 128:
    yield "fused", {"deterministic": False,
                    "config": dataclasses.replace(base, bwd_fused=True)}
    yield "bwd_overlap", {"config": dataclasses.replace(base, bwd_overlap=True)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tools", default=os.environ.get("JFLASH_PTXAS_TOOLS", ".ptxas_cpu"))
  parser.add_argument("-k", default="", help="only cases whose name contains this")
  args = parser.parse_args()
  compiler = ptxas_cpu.Compiler(args.tools)

  import jax
  import jflash
  from jflash import backends
  import test_mosaic_gpu as cases_module

  backends.nvidia_compute_capability = lambda device: (9, 0)
  cases = {**cases_module.CASES, **cases_module.GPU_CASES}
  failed = 0
  for name, case in cases.items():
    if args.k not in name:
      continue
    b, t, s, n, kv_heads, h, dtype, kwargs = case
    q, k, v, do = cases_module.random_inputs(0, b, t, s, n, kv_heads, h, dtype)
    for label, extra in forms(case):
      def loss(q, k, v, do, extra=extra):
        out, vjp = jax.vjp(lambda *x: jflash.attention(
            *x, implementation="mosaic_gpu", **kwargs, **extra), q, k, v)
        return out, vjp(do)
      with ptxas_cpu.capturing() as modules:
        jax.jit(loss).trace(q, k, v, do).lower(lowering_platforms=("cuda",))
      for kernel, _, bytecode in modules:
        try:
          regs, stores, loads, frame, warnings = ptxas_cpu.summary(compiler.report(bytecode))
        except RuntimeError as e:
          failed += 1
          print(f"{name:28s} {label:12s} {kernel:22s} FAILED: {str(e)[:300]}", flush=True)
          continue
        failed += bool(stores or loads)
        print(f"{name:28s} {label:12s} {kernel:22s} spill stores {stores:4d} B  loads "
              f"{loads:4d} B" + "".join(f"\n    warning: {w}" for w in warnings), flush=True)
  print(f"{failed} kernels failed or spilled")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
