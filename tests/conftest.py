"""Shared test set-up: where the kernels run, and the accuracy criterion.

On a machine without a GPU the Pallas kernels run in Pallas interpret mode; with an
NVIDIA GPU the same tests run them natively. Tests marked ``gpu`` need a GPU and are
skipped, with that reason, on machines without one.
"""

from __future__ import annotations

import functools
import os

# Four host (CPU) devices for the sharding tests; set before JAX initialises. On a GPU
# machine this only adds CPU devices: GPU tests still run on the default GPU.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=4").strip()

import jax
import jax.numpy as jnp
import pytest

import jflash

from jflash.reference import dense_attention

ON_GPU = jax.default_backend() == "gpu"
# A Hopper GPU (sm90): the Mosaic GPU backend runs natively (tests/test_mosaic_gpu.py
# runs it in interpret mode on a CPU).
HOPPER = ON_GPU and jflash.backends.nvidia_compute_capability(jax.devices()[0]) == (9, 0)
# On CPU the Triton kernels run in interpret mode; on a GPU natively.
INTERPRET = not ON_GPU
IMPLEMENTATIONS = ("triton", "xla")

# Work in full fp32 for the oracle and the jax.nn reference on every platform.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (runs the kernels natively)")


def pytest_collection_modifyitems(config, items):
  if ON_GPU:
    return
  skip = pytest.mark.skip(reason="needs an NVIDIA GPU; run on a GPU machine (see BUILD_NOTES.md)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


def interpret_for(implementation: str) -> bool:
  return INTERPRET and implementation == "triton"


def random_inputs(seed: int, b, t, s, n, kv_heads, h, dtype):
  """q [B,T,N,H], k/v [B,S,K,H] and an output cotangent, normal in `dtype`."""
  kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
  shape_q, shape_kv = (b, t, n, h), (b, s, kv_heads, h)
  return (jax.random.normal(kq, shape_q, dtype), jax.random.normal(kk, shape_kv, dtype),
          jax.random.normal(kv, shape_kv, dtype), jax.random.normal(kd, shape_q, dtype))


def max_err(x, ref) -> float:
  return float(jnp.max(jnp.abs(x.astype(jnp.float32) - ref.astype(jnp.float32))))


# Jitted: eagerly, each of the oracle's ops is compiled on its own for every new shape,
# which made it 4-6x slower. (jax_nn_with_grads stays eager: jax.nn picks its fp16 dot
# precision by trying it, which only falls back on CPU when the op runs eagerly.)
@functools.partial(jax.jit, static_argnames=("scale", "is_causal"))
def oracle_with_grads(q, k, v, do, *, scale, is_causal):
  """fp32 dense oracle: (out, lse, (dq, dk, dv)) for the cotangent `do`."""
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  (out, lse), vjp = jax.vjp(lambda *a: dense_attention(*a, scale=scale, is_causal=is_causal), *f32)
  grads = vjp((do.astype(jnp.float32), jnp.zeros_like(lse)))
  return out, lse, grads


def jflash_with_grads(q, k, v, do, *, implementation, is_causal, config=None):
  """jflash.attention (jitted; Triton in interpret mode on CPU): ((out, lse), (dq, dk, dv))."""

  def f(q, k, v):
    return jflash.attention(q, k, v, is_causal=is_causal, implementation=implementation,
                            interpret=interpret_for(implementation), return_lse=True,
                            config=config)

  (out, lse), vjp = jax.vjp(jax.jit(f), q, k, v)
  return (out, lse), vjp((do, jnp.zeros_like(lse)))


def jax_nn_with_grads(q, k, v, do, *, scale, is_causal):
  """jax.nn.dot_product_attention (XLA) in the inputs' dtype: (out, (dq, dk, dv))."""
  out, vjp = jax.vjp(
      lambda *a: jax.nn.dot_product_attention(*a, scale=scale, is_causal=is_causal,
                                              implementation="xla"), q, k, v)
  return out, vjp(do)


def assert_within_criterion(name, err, err_jax_nn):
  """DESIGN.md criterion: at most 2x jax.nn's error in the same dtype, plus 1e-5."""
  bound = 2 * err_jax_nn + 1e-5
  assert err <= bound, f"{name}: max-abs error {err:.3g} > 2 x jax.nn's {err_jax_nn:.3g} + 1e-5"


@pytest.fixture(autouse=True)
def _clear_traces():
  import chex
  chex.clear_trace_counter()
  yield


@pytest.fixture
def triton_modules(monkeypatch):
  """Pretends to be an H100 and records every Triton module the lowering produces (so
  kernels can be lowered and their Triton IR verified on a CPU-only machine; uses JAX
  internals, pinned to jax 0.11.x)."""
  from jax._src.pallas.triton import gpu_info, pallas_call_registration
  monkeypatch.setattr(pallas_call_registration.gpu_info_lib, "get_gpu_info",
                      lambda: gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H100))
  modules = []
  lower = pallas_call_registration.lowering.lower_jaxpr_to_triton_module

  def recording(*args, **kwargs):
    result = lower(*args, **kwargs)
    modules.append(result.module)
    return result

  monkeypatch.setattr(pallas_call_registration.lowering, "lower_jaxpr_to_triton_module", recording)
  return modules
