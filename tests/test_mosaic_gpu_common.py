"""Per-tile helpers of the Mosaic GPU kernels (jflash.kernels.mosaic_gpu.common).

`positions` builds a score tile's row and column indices as broadcasts of two 1-D
iotas in the WGMMA layout's row and column layouts (what the masks compare). Here a
one-warpgroup kernel stores ``rows * 1000 + cols`` and the result is checked against
NumPy: in Mosaic GPU interpret mode on a CPU, natively on a Hopper GPU; and on any
machine the kernel is lowered for cuda (Mosaic GPU's layout inference and its
lowering to per-register operations run in Python at lowering).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

from jflash.kernels.mosaic_gpu import common
from conftest import HOPPER, ON_GPU

SHAPES = [((64, 64), (3, 70)), ((64, 128), (0, 1000)), ((128, 64), (129, 5))]


def _positions_kernel(shape, start, interpret):
  def body(out_ref, smem_ref):
    rows, cols = common.positions(*start, shape)
    smem_ref[...] = rows * 1000 + cols
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(smem_ref, out_ref)
    plgpu.wait_smem_to_gmem(0)

  return plgpu.kernel(body, out_type=jax.ShapeDtypeStruct(shape, jnp.int32),
                      scratch_types=[common.smem(shape, jnp.int32)], thread_name="wg",
                      num_threads=1, compiler_params=common.compiler_params(),
                      interpret=common.interpret_params() if interpret else None)


@pytest.mark.parametrize("shape,start", SHAPES)
def test_positions(shape, start):
  if ON_GPU and not HOPPER:
    pytest.skip("needs a Hopper GPU (sm90) or none")
  out = np.asarray(jax.jit(_positions_kernel(shape, start, interpret=not ON_GPU))())
  rows, cols = np.meshgrid(np.arange(shape[0]) + start[0], np.arange(shape[1]) + start[1],
                           indexing="ij")
  np.testing.assert_array_equal(out, rows * 1000 + cols)


@pytest.mark.parametrize("shape,start", SHAPES)
def test_positions_lower_for_cuda(shape, start):
  text = jax.jit(_positions_kernel(shape, start, interpret=False)).trace().lower(
      lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text
