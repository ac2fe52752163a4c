"""Pallas kernels lowered through Triton (NVIDIA sm80+), or run in interpret mode."""

from jflash.kernels.triton.backward import backward
from jflash.kernels.triton.forward import forward

__all__ = ["forward", "backward"]
