"""ptxas's register and spill report of jflash's Mosaic GPU kernels, on a machine without a GPU.

Mosaic GPU compiles a kernel (its MLIR passes, LLVM's NVPTX backend, ptxas) in the CUDA
PJRT plugin's C++, `MosaicGpuCompile`, which asks the CUDA driver only for the current
device's compute capability before it compiles, and loads the module after. With the
stand-in driver of `fake_libcuda.c` (compute capability 9.0, every module load refused)
loaded first, the plugin's compile runs here and ptxas's report (MOSAIC_GPU_DUMP_PTXAS)
and the SASS (MOSAIC_GPU_DUMP_SASS, with nvdisasm) come out as on a Hopper machine; the
load then fails, which is expected. The kernels are lowered for cuda on the CPU
(`.lower(lowering_platforms=("cuda",))`) and each Mosaic GPU module is captured as the
custom call would carry it.

Setup once (pip, gcc, a CUDA 13 ptxas): ``bash benchmarks/ptxas_cpu/setup.sh DIR``. Then

  PYTHONPATH=<tree> python benchmarks/ptxas_cpu/ptxas_cpu.py [--tools DIR] [--sass OUT]
      CASE [CASE ...]

CASE is H:T:CAUSAL:MODE[:field=value,...] with MODE fwd (the forward), bwd (the
deterministic backward: dQ and dK/dV kernels) or fused (the fused backward), B = 1,
N = 2048 / H, bf16, the default tiles for (H, causal, T) with the MosaicGpuConfig fields
given overridden (e.g. 64:16384:1:fused:bwd_block_q=128), soft_cap=C for logits
soft-capped at C, window=L/R for a local window of L keys left and R right. Prints one line per kernel:
registers, spill stores and loads (bytes), stack frame, and ptxas's performance
warnings (e.g. C7513, serialised wgmma). --sass OUT writes each kernel's PTX, ptxas
report and SASS there (one file per kernel; spills are the STL/LDL instructions).

ptxas is the one of this machine's CUDA (setup.sh's PTXAS_CUDA_ROOT), which may differ
from the GPU machine's: compare numbers from one ptxas only.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import io
import os
import re
import sys
import tempfile


def parse_case(text):
  """(h, t, causal, mode, overrides) of `H:T:CAUSAL:MODE[:field=value,...]`."""
  parts = text.split(":")
  if len(parts) not in (4, 5) or parts[3] not in ("fwd", "bwd", "fused"):
    raise SystemExit(f"case {text!r}: expected H:T:CAUSAL:MODE[:field=value,...], "
                     "MODE one of fwd, bwd, fused")
  overrides = {}
  for item in (parts[4].split(",") if len(parts) == 5 and parts[4] else []):
    key, value = item.split("=")
    overrides[key] = (None if value == "None" else value == "True" if value in ("True", "False")
                      else float(value) if key == "soft_cap"
                      else tuple(int(x) for x in value.split("/")) if key == "window"
                      else int(value))
  return int(parts[0]), int(parts[1]), parts[2] == "1", parts[3], overrides


@contextlib.contextmanager
def capturing():
  """Within the block, Mosaic GPU modules lowered (for cuda) are captured; yields the
  list of (name, text, serialized bytecode) triples, as the custom call carries them."""
  from jax.experimental.mosaic.gpu import core as mosaic_core
  from jax._src.pallas.mosaic_gpu import pallas_call_registration
  modules, original = [], mosaic_core._mosaic_gpu_lowering_rule

  def capture(ctx, *args, module, **kwargs):
    text = str(module.operation)
    serialized = mosaic_core._run_serde_pass(module, serialize=True, ir_version=None)
    buffer = io.BytesIO()
    serialized.operation.write_bytecode(buffer, desired_version=0)
    name = re.search(r"module @(\w+)", text).group(1)
    modules.append((name, text, buffer.getvalue()))
    return original(ctx, *args, module=module, **kwargs)

  pallas_call_registration.mgpu.core._mosaic_gpu_lowering_rule = capture
  try:
    yield modules
  finally:
    pallas_call_registration.mgpu.core._mosaic_gpu_lowering_rule = original


def lower(h, t, causal, mode, overrides=None):
  """Lowers jflash's Mosaic GPU forward or backward for cuda on this machine; returns the
  captured Mosaic GPU modules as (name, text, serialized bytecode) triples."""
  import jax
  import jax.numpy as jnp
  from jflash.kernels.mosaic_gpu import backward, forward
  from jflash.kernels.mosaic_gpu.config import default_config
  from jflash.masks import MaskSpec
  from jflash.scores import ScoreMod

  fused = mode == "fused"
  b, n = 1, max(1, 2048 // h)
  q = jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16)
  rows = jax.ShapeDtypeStruct((b, t, n), jnp.float32)
  config = default_config(h, causal, t, deterministic=not fused)
  overrides = dict(overrides or {})
  score_mod = ScoreMod(soft_cap=overrides.pop("soft_cap", None))
  window = overrides.pop("window", None)
  config = dataclasses.replace(config, **{"bwd_fused": fused, **overrides})
  spec = MaskSpec(q_len=t, kv_len=t, is_causal=causal, window=window)
  kernels, args = ((forward.forward, (q, q, q)) if mode == "fwd" else
                   (backward.backward, (q, q, q, rows, rows, q)))
  f = functools.partial(kernels, scale=h ** -0.5, spec=spec, score_mod=score_mod,
                        config=config, interpretable=False)
  with capturing() as modules:
    jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))
  return modules


@contextlib.contextmanager
def captured_output():
  """Captures what C++ writes to file descriptors 1 and 2 (the dumps go to 1, ptxas's
  log and the failed load's message to 2); yields a list that holds the text once the
  block ends."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  out = []
  with tempfile.TemporaryFile(mode="w+b") as sink:
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    try:
      yield out
    finally:
      for fd, old in zip((1, 2), saved):
        os.dup2(old, fd)
        os.close(old)
      sink.seek(0)
      out.append(sink.read().decode(errors="replace"))


class Compiler:
  """The CUDA plugin's MosaicGpuCompile behind the stand-in driver of `tools`."""

  def __init__(self, tools):
    driver = os.path.join(tools, "libcuda.so.1")
    plugins = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(tools, "unpacked"))
               for f in files if f == "xla_cuda_plugin.so"]
    if not os.path.exists(driver) or not plugins:
      raise SystemExit(f"{tools}: no libcuda.so.1 or xla_cuda_plugin.so; run "
                       f"`bash benchmarks/ptxas_cpu/setup.sh {tools}` first")
    cuda = os.path.abspath(os.path.join(tools, "cuda"))
    os.environ["MOSAIC_GPU_CUDA_ROOT"] = cuda
    os.environ["PATH"] = os.path.join(cuda, "bin") + os.pathsep + os.environ["PATH"]  # nvdisasm
    # Loaded first, the stand-in answers the plugin's dlopen("libcuda.so.1").
    ctypes.CDLL(os.path.abspath(driver), mode=ctypes.RTLD_GLOBAL)
    self.compile_fn = ctypes.CDLL(plugins[0]).MosaicGpuCompile
    self.compile_fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
    self.compile_fn.restype = ctypes.POINTER(ctypes.c_void_p)

  def report(self, bytecode, sass=False):
    """ptxas's report (and the PTX and SASS if `sass`) of one serialized module, as text."""
    os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"
    for flag in ("MOSAIC_GPU_DUMP_SASS", "MOSAIC_GPU_DUMP_PTX"):
      if sass:
        os.environ[flag] = "1"
      else:
        os.environ.pop(flag, None)
    with captured_output() as out:
      self.compile_fn(bytecode, len(bytecode))  # fails at the module load, by design
    return out[0]


def summary(report):
  """(registers, spill stores, spill loads, stack frame, warnings) from ptxas's report."""
  used = re.search(r"Used (\d+) registers", report)
  frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                    report)
  if used is None or frame is None:
    raise RuntimeError("no ptxas report in the compile's output:\n" + report[-2000:])
  warnings = sorted(set(re.findall(r"ptxas warning : (?:\(C\d+\) )?([^\n]{0,120})", report)))
  warnings = [w for w in warnings if "Registers are spilled" not in w]
  return (int(used.group(1)), int(frame.group(2)), int(frame.group(3)), int(frame.group(1)),
          warnings)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("cases", nargs="+")
  parser.add_argument("--tools", default=os.environ.get("JFLASH_PTXAS_TOOLS", ".ptxas_cpu"))
  parser.add_argument("--sass", default=None, help="a folder to write each kernel's PTX and SASS to")
  args = parser.parse_args()
  compiler = Compiler(args.tools)
  for text in args.cases:
    case = parse_case(text)
    for name, _, bytecode in lower(*case):
      report = compiler.report(bytecode, sass=args.sass is not None)
      regs, stores, loads, frame, warnings = summary(report)
      print(f"{text:40s} {name:24s} regs {regs:3d}  spill stores {stores:4d} B  loads "
            f"{loads:4d} B  stack {frame:4d} B" + "".join(f"\n    warning: {w}" for w in warnings),
            flush=True)
      if args.sass:
        os.makedirs(args.sass, exist_ok=True)
        path = os.path.join(args.sass, f"{text.replace(':', '_').replace(',', '_')}_{name}.sass")
        with open(path, "w") as f:
          f.write(report)


if __name__ == "__main__":
  main()
