"""jflash: exact, IO-aware attention (FlashAttention) for JAX, written as Pallas kernels.

``jflash.attention(q, k, v, ...)`` is the entry point; see its docstring for shapes,
dtypes, masks, backends, sharding and errors. :class:`TritonConfig` (first released as
:class:`AttentionConfig`) and :func:`default_config` set and show the Triton kernels'
block sizes; :class:`MosaicGpuConfig` the Hopper (Mosaic GPU) kernels' tiles;
:class:`XlaConfig` the pure-JAX backend's tiles.
"""

from jflash.attention import attention
from jflash.kernels.triton.config import AttentionConfig, TritonConfig, default_config
from jflash.kernels.mosaic_gpu.config import MosaicGpuConfig
from jflash.kernels.xla.config import XlaConfig
from jflash import tuning  # noqa: F401  (jflash.tuning.* as in the first release)

__version__ = "0.1.0"

__all__ = ["attention", "TritonConfig", "AttentionConfig", "MosaicGpuConfig", "XlaConfig",
           "default_config",
           "__version__"]
