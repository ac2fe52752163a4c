"""jflash: exact, IO-aware attention (FlashAttention) for JAX, written as Pallas kernels.

``jflash.attention(q, k, v, ...)`` is the entry point; see its docstring for shapes,
dtypes, masks and errors. :class:`AttentionConfig` and :func:`default_config` set and
show the kernels' block sizes.
"""

from jflash.attention import attention
from jflash.tuning import AttentionConfig, default_config

__version__ = "0.1.0"

__all__ = ["attention", "AttentionConfig", "default_config", "__version__"]
