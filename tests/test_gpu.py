"""Tests that only mean something on an NVIDIA GPU (marker ``gpu``; skipped elsewhere).

* Every default Triton config compiles and runs natively (shared memory, registers:
  what only Triton's compiler on a real GPU can refuse).
* The device's real memory use of forward + backward grows linearly in T.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jflash
from jflash import backends, tuning
from jflash.kernels.triton.config import padded_head_dim
from conftest import max_err, oracle_with_grads, random_inputs

pytestmark = pytest.mark.gpu

HEAD_DIMS = (32, 64, 80, 128, 200, 256)
DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
KV_LENS = (128, 1024, 4096)
CAPABILITIES = {"sm80": (8, 0), "sm90": (9, 0)}


def _default_config_cases(capabilities):
  """One (H, dtype, causal, S, config) per distinct kernel build, over the whole grid.

  The grid (6 head dims x 3 dtypes x causal x 3 lengths x 2 GPUs = 216 configs) has
  far fewer distinct kernel builds: what Triton compiles, and what must fit the GPU's
  shared memory and registers, depends on the config, the padded head dim (80 -> 128,
  200 -> 256), the element size (bf16 and fp16 tiles are the same size) and the mask,
  and sm80 and sm90 share many configs. Compiling each distinct one once, with the
  first (H, dtype, S) that produced it, covers every default config with 48 builds
  (each three Triton kernels and an XLA program).
  """
  cases, seen = [], set()
  for capability in capabilities:
    for h in HEAD_DIMS:
      for dtype in DTYPES:
        for causal in (False, True):
          for s in KV_LENS:
            config = jflash.default_config(h, jnp.dtype(dtype), causal, capability, kv_len=s)
            key = (padded_head_dim(h), jnp.dtype(dtype).itemsize, causal, config)
            if key not in seen:
              seen.add(key)
              cases.append((h, dtype, causal, s, config))
  return cases


def test_every_default_config_compiles_and_runs():
  """default_config's picks for sm80 and sm90 compile and run natively, forward + backward.

  `check_fits` only estimates shared memory; Triton's compiler decides. sm80 configs are
  smaller than sm90 ones (163 vs 227 KiB), so both sets run on a Hopper GPU (compiled
  for sm90: this shows the sm80 tiles are valid, not how an A100 pipelines them); an
  sm80 GPU runs the sm80 set only. Builds run on a thread pool (XLA and Triton compile
  outside the GIL); then each runs once (B=1, N=2, K=1, T=S) and is compared loosely
  with the oracle: the point is that the build is accepted and computes attention; the
  accuracy tests run the same kernels on small shapes.
  """
  device = jax.devices()[0]
  limit = tuning.shared_memory_limit(backends.nvidia_compute_capability(device))
  capabilities = [c for c in CAPABILITIES.values() if tuning.shared_memory_limit(c) <= limit]
  cases = _default_config_cases(capabilities)
  b, n, kv_heads = 1, 2, 1

  def build(case):
    h, dtype, causal, s, config = case

    def fwd_bwd(q, k, v, do):  # one forward, both backward kernels
      out, vjp = jax.vjp(lambda q, k, v: jflash.attention(
          q, k, v, is_causal=causal, implementation="triton", config=config), q, k, v)
      return out, vjp(do)

    shapes = [jax.ShapeDtypeStruct(x, dtype) for x in
              ((b, s, n, h), (b, s, kv_heads, h), (b, s, kv_heads, h), (b, s, n, h))]
    # XLA's GEMM autotuning (the oracle's einsums) dominated the build time: off.
    options = {"xla_gpu_autotune_level": 0}
    oracle = oracle_with_grads.lower(*shapes, scale=h ** -0.5, is_causal=causal)
    return (jax.jit(fwd_bwd).lower(*shapes).compile(options), oracle.compile(options))

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 8) as pool:
    compiled = list(pool.map(build, cases))
  built = time.perf_counter()
  failures = []
  for case, (fn, oracle) in zip(cases, compiled):
    h, dtype, causal, s, config = case
    q, k, v, do = random_inputs(0, b, s, s, n, kv_heads, h, dtype)
    out, grads = fn(q, k, v, do)
    out_ref, _, grads_ref = oracle(q, k, v, do)
    tol = {2: 5e-2, 4: 1e-3}[jnp.dtype(dtype).itemsize]
    for name, x, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), (out_ref, *grads_ref)):
      err, size = max_err(x, ref), float(jnp.max(jnp.abs(ref)))
      if not np.isfinite(err) or err > tol * size + 1e-4:
        failures.append(f"H={h} {jnp.dtype(dtype).name} causal={causal} S={s} {config}: "
                        f"{name} error {err:.3g} (max |ref| {size:.3g})")
  print(f"{len(cases)} default-config builds: compiled in {built - start:.0f} s, "
        f"ran and checked in {time.perf_counter() - built:.0f} s")
  assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------ memory

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    import jflash

    implementation, lengths = sys.argv[1], [int(x) for x in sys.argv[2:]]
    b, n, h = 1, 8, 128
    device = jax.devices()[0]
    results = []
    for t in lengths:  # increasing: the peak can only grow in one process
      def loss(q, k, v):
        out = jflash.attention(q, k, v, is_causal=True, implementation=implementation)
        return jnp.sum(out.astype(jnp.float32))
      fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      shape = jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16)
      compiled = fn.lower(shape, shape, shape).compile()
      q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (b, t, n, h), jnp.bfloat16)
                 for i in range(3))
      jax.block_until_ready((q, k, v))
      stats = device.memory_stats()
      before, peak_before = stats["bytes_in_use"], stats["peak_bytes_in_use"]
      jax.block_until_ready(compiled(q, k, v))
      results.append(dict(t=t, before=before, peak_before=peak_before,
                          peak=device.memory_stats()["peak_bytes_in_use"],
                          temp=compiled.memory_analysis().temp_size_in_bytes))
      del q, k, v
    print("RESULT " + json.dumps(results))
""")


@pytest.mark.parametrize("implementation", ["triton", "xla"])
def test_device_memory_is_linear_in_sequence_length(implementation):
  """Peak device memory (the allocator's peak_bytes_in_use) around fwd+bwd, T = 4k..16k.

  Measured in a fresh process (the allocator's peak never resets), lengths in
  increasing order, GEMM autotuning off (it allocates scratch at compile time); each
  call must set a new peak, or its `peak - before` would not be its own. That is what
  the call needed beyond its inputs: outputs, gradients and every temporary, XLA's and
  the kernels' alike (a Pallas Triton kernel allocates nothing itself; its scratch is
  registers and shared memory). B=1, N=8, H=128, bf16, causal.
  """
  lengths = (4096, 8192, 16384)
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_autotune_level=0").strip()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  run = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, implementation,
                        *map(str, lengths)], env=env, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-4000:]
  line = next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))
  results = json.loads(line[len("RESULT "):])
  assert all(r["peak"] > r["peak_before"] for r in results), f"no new peak: {results}"
  used = [r["peak"] - r["before"] for r in results]
  print(f"{implementation}: bytes beyond the inputs at T={lengths}: {used}")
  # The fp32 T x T scores of all N=8 heads, which must never exist: 8.6 GB at 16k.
  scores = 4 * 8 * lengths[-1] ** 2
  assert used[-1] < scores / 16, f"T={lengths[-1]}: {used[-1]} bytes; scores {scores}"
  # Doubling T at most doubles the memory (plus 1 MiB of slack for fixed-size buffers).
  assert used[1] <= 2.2 * used[0] + (1 << 20), results
  assert used[2] <= 2.2 * used[1] + (1 << 20), results
