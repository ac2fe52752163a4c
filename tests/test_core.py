"""The core: backend protocol and choice, scale, derivative limits, device handling."""

from __future__ import annotations

import dataclasses
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.triton import gpu_info, pallas_call_registration

import jflash
from jflash.masks import MaskSpec
from jflash import backends
from conftest import IMPLEMENTATIONS, interpret_for, random_inputs

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """Just enough of a jax.Device for backend choice (never runs anything)."""

  platform: str
  compute_capability: str
  device_kind: str
  id: int = 0


H100 = FakeDevice("gpu", "9.0", "NVIDIA H100 (fake)")
A100 = FakeDevice("gpu", "8.0", "NVIDIA A100 (fake)")
V100 = FakeDevice("gpu", "7.0", "Tesla V100 (fake)")
MI250 = FakeDevice("gpu", "gfx90a", "AMD Instinct MI250X (fake)")
CPU = FakeDevice("cpu", "", "cpu")
PROBLEM = backends.Problem(1, 64, 64, 4, 2, 64, jnp.dtype(jnp.bfloat16), MaskSpec(64, 64, True))


# ------------------------------------------------------------------ backend protocol


def test_registry_lists_each_backend_with_its_protocol():
  assert backends.PRIORITY == ("mosaic_gpu", "triton", "xla")
  for name in backends.PRIORITY:
    backend = backends.get(name)
    assert isinstance(backend, backends.Backend) and backend.name == name
    config = backend.default_config(PROBLEM, None if backend.interpretable else CPU)
    assert isinstance(config, backend.config_type)
    hash(config)  # configs are static arguments of jit
  assert backends.get("triton").config_type is jflash.TritonConfig is jflash.AttentionConfig
  assert backends.get("xla").config_type is jflash.XlaConfig
  assert backends.get("mosaic_gpu").config_type is jflash.MosaicGpuConfig


@pytest.mark.parametrize("device, expected", [(H100, "mosaic_gpu"), (A100, "triton"),
                                              (V100, "xla"), (MI250, "xla"), (CPU, "xla")])
def test_implementation_none_takes_the_best_backend_for_the_device(device, expected):
  assert backends.plan(None, PROBLEM, device).backend == expected


def test_hopper_gives_what_mosaic_gpu_does_not_serve_to_triton():
  f32 = dataclasses.replace(PROBLEM, dtype=jnp.dtype(jnp.float32))
  masked = dataclasses.replace(PROBLEM, spec=MaskSpec(64, 64, dense_mask=True))
  for problem, reason in ((f32, "float32"), (masked, "mask")):
    assert backends.plan(None, problem, H100).backend == "triton"
    with pytest.raises(NotImplementedError,
                       match=f"'mosaic_gpu' cannot serve.*{reason}.*implementation='triton' can"):
      backends.plan("mosaic_gpu", problem, H100)
  with pytest.raises(NotImplementedError, match="Hopper GPU.*'NVIDIA A100 \\(fake\\)'"):
    backends.plan("mosaic_gpu", PROBLEM, A100)


def test_rocm_and_old_gpus_get_xla_cleanly():
  # ROCm reports an architecture name, not "major.minor": no int() crash, no Triton.
  assert backends.nvidia_compute_capability(MI250) is None
  assert backends.nvidia_compute_capability(H100) == (9, 0)
  assert backends.plan("xla", PROBLEM, MI250).backend == "xla"
  for device, reason in ((MI250, "NVIDIA GPU.*MI250X"), (V100, "compute capability >= 8.0.*7.0")):
    with pytest.raises(NotImplementedError, match=f"{reason}.*implementation='xla' can"):
      backends.plan("triton", PROBLEM, device)


def test_named_backend_that_cannot_serve_names_one_that_can():
  with pytest.raises(NotImplementedError,
                     match=r"implementation='triton' cannot serve.*implementation='xla' can"
                           r".*interpret=True"):
    backends.plan("triton", PROBLEM, CPU)


def test_config_picks_its_backend_and_wrong_types_are_refused():
  xla_config, triton_config = jflash.XlaConfig(block_q=32), jflash.TritonConfig(block_q=32)
  assert backends.plan(None, PROBLEM, H100, config=xla_config).backend == "xla"
  assert backends.plan(None, PROBLEM, H100, config=triton_config).config == triton_config
  with pytest.raises(ValueError, match=r"config must be a jflash.TritonConfig \('triton'\)"):
    backends.plan("triton", PROBLEM, H100, config=xla_config)
  # On a CPU a Triton config has no backend to run on: say so, never fall back silently.
  with pytest.raises(NotImplementedError, match="'xla': config is a jflash.TritonConfig"):
    backends.plan(None, PROBLEM, CPU, config=triton_config)
  with pytest.raises(ValueError, match=r"XlaConfig.block_kv=0"):
    jflash.XlaConfig(block_kv=0)


def test_interpret_needs_a_pallas_backend():
  with pytest.raises(ValueError, match=r"implementation='xla' has none.*\['mosaic_gpu', 'triton'\]"):
    backends.plan("xla", PROBLEM, None, interpret=True)
  # Mosaic GPU's (slow, race-checking) interpret mode runs only when named.
  assert backends.plan(None, PROBLEM, None, interpret=True).backend == "triton"
  assert backends.plan("mosaic_gpu", PROBLEM, None, interpret=True).backend == "mosaic_gpu"


@pytest.fixture
def gpu_host(monkeypatch):
  """Pretends the process's default device is an H100 (for tracing and lowering only)."""
  monkeypatch.setattr(sys.modules["jflash.attention"], "_default_device", lambda: H100)
  monkeypatch.setattr(pallas_call_registration.gpu_info_lib, "get_gpu_info",
                      lambda: gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H100))


def test_traced_call_chooses_by_the_platform_it_is_compiled_for(gpu_host):
  """Under jit the backend follows the lowering platform, not jax.devices()[0]."""
  del gpu_host
  for dtype, kernel in ((jnp.float32, "jflash_fwd"), (jnp.bfloat16, "jflash_mgpu_fwd")):
    # On a Hopper GPU: Mosaic GPU for 16-bit inputs, Triton for float32.
    q = jax.ShapeDtypeStruct((1, 64, 2, 32), dtype)
    traced = jax.jit(lambda q, k, v: jflash.attention(q, k, v, is_causal=True)).trace(q, q, q)
    cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    assert kernel in cuda, kernel
    assert ("triton" in cuda) == (kernel == "jflash_fwd")
    assert "jflash_" not in cpu and "triton" not in cpu
  # Concrete CPU arrays on that (pretend) GPU host run the xla backend eagerly too.
  x = jnp.ones((1, 8, 2, 16))
  chex.assert_trees_all_close(jflash.attention(x, x, x),
                              jflash.attention(x, x, x, implementation="xla"))


@pytest.mark.gpu
def test_cpu_placed_inputs_on_a_gpu_host_run_on_the_cpu():
  cpu = jax.devices("cpu")[0]
  q, k, v, _ = random_inputs(30, 1, 50, 50, 2, 1, 32, F32)
  q, k, v = (jax.device_put(x, cpu) for x in (q, k, v))
  f = jax.jit(lambda q, k, v: jflash.attention(q, k, v, is_causal=True))
  out = f(q, k, v)
  assert out.devices() == {cpu}
  assert "triton" not in f.lower(q, k, v).as_text()
  chex.assert_trees_all_close(out, jflash.attention(q, k, v, is_causal=True,
                                                    implementation="xla"), atol=1e-6)
  assert jflash.attention(q, k, v).devices() == {cpu}  # eager, too


# ----------------------------------------------------------------------------- scale


@pytest.mark.parametrize("scale", [0.25, np.float32(0.25), np.array(0.25), np.array([0.25]),
                                   jnp.array([[0.25]], jnp.bfloat16), 1])
def test_concrete_scalar_scales_are_accepted(scale):
  q, k, v, _ = random_inputs(31, 1, 12, 12, 2, 2, 16, F32)
  chex.assert_trees_all_close(jflash.attention(q, k, v, scale=scale, implementation="xla"),
                              jflash.attention(q, k, v, scale=float(np.asarray(scale).ravel()[0]),
                                               implementation="xla"))


@pytest.mark.parametrize("scale, message", [
    (np.array([0.1, 0.2]), r"scalar.*shape \(2,\)"),
    (jnp.ones((2, 2)), r"scalar.*shape \(2, 2\)"),
    (np.array(True), "real number, got dtype bool"),
    (jnp.array(-1.0), "positive finite number, got -1.0"),
    (np.array(1 + 2j), "real number.*complex"),
])
def test_bad_array_scales_say_what_is_wrong(scale, message):
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match=message):
    jflash.attention(q, q, q, scale=scale)


def test_traced_scale_names_the_tracer():
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="scale must be known at trace time.*traced"):
    jax.jit(lambda s: jflash.attention(q, q, q, scale=s))(jnp.float32(0.5))
  with pytest.raises(ValueError, match="scale must be known at trace time"):
    jax.grad(lambda s: jflash.attention(q, q, q, scale=s).sum())(0.5)


# -------------------------------------------------------------- derivative limits


def _f(implementation):
  def f(q, k, v):
    return jflash.attention(q, k, v, is_causal=True, implementation=implementation,
                            interpret=interpret_for(implementation))
  return f


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_forward_mode_raises_a_clear_error(implementation):
  q, k, v, _ = random_inputs(32, 1, 16, 16, 2, 1, 16, F32)
  f = _f(implementation)
  for transform in (lambda: jax.jvp(f, (q, k, v), (q, k, v)),
                    lambda: jax.jacfwd(lambda q: f(q, k, v).sum())(q),
                    lambda: jax.linearize(f, q, k, v),
                    lambda: jax.hessian(lambda q: f(q, k, v).sum())(q)):
    with pytest.raises(NotImplementedError, match="jflash.attention does not support "
                                                  "forward-mode differentiation"):
      transform()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grad_of_grad_raises_a_clear_error(implementation):
  q, k, v, _ = random_inputs(33, 1, 16, 16, 2, 1, 16, F32)
  f = _f(implementation)
  inner = jax.grad(lambda q: jnp.sum(f(q, k, v) ** 2))
  with pytest.raises(NotImplementedError, match="no second-order derivatives"):
    jax.grad(lambda q: jnp.sum(inner(q)))(q)
  with pytest.raises(NotImplementedError, match="no second-order derivatives"):
    jax.jit(jax.grad(lambda q: jnp.sum(jax.jit(inner)(q))))(q)
  # First-order reverse mode, and vmap inside grad, still work.
  chex.assert_tree_all_finite(inner(q))
  chex.assert_tree_all_finite(jax.jacrev(lambda q: f(q, k, v)[0, 0, 0, :2])(q))
