"""Pallas attention kernels, one backend per folder.

Each backend package exposes ``forward(q, k, v, *, scale, spec, config, interpret)`` and
``backward(q, k, v, lse, delta, do, *, scale, spec, config, interpret)``; the one
``jax.custom_vjp`` in :mod:`jflash.attention` links them.
"""
