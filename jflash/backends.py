"""The backend protocol and registry: which implementation serves a call.

A backend is one way to compute attention (``"triton"``: Pallas kernels lowered through
Triton; ``"xla"``: the same tiled algorithm in pure JAX). Each one lives in its own
folder under ``jflash/kernels/`` and exposes a :class:`Backend` object named
``BACKEND``, which answers:

* can it run on this device (:meth:`Backend.unavailable_reason`);
* does it support this problem (:meth:`Backend.unsupported_reason`), and why not;
* its config type, validation and default (:attr:`Backend.config_type`,
  :meth:`Backend.check_config`, :meth:`Backend.default_config`);
* whether it has a Pallas interpret mode (:attr:`Backend.interpretable`);
* forward and backward with the shared contract (:meth:`Backend.forward`,
  :meth:`Backend.backward`).

:data:`PRIORITY` orders the backends for ``implementation=None``: the first one that can
run on the device and supports the problem serves it. Backend modules are imported only
when a call needs them.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import re
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np

from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

# Backend name -> module holding its BACKEND object. Dict order is the priority order.
_MODULES = {
    "mosaic_gpu": "jflash.kernels.mosaic_gpu",
    "triton": "jflash.kernels.triton",
    "xla": "jflash.kernels.xla",
}
PRIORITY: tuple[str, ...] = tuple(_MODULES)


@dataclasses.dataclass(frozen=True)
class Problem:
  """The static description of one attention call (after validation and batching).

  Attributes:
    batch, q_len, kv_len, num_heads, num_kv_heads, head_dim: B, T, S, N, K, H.
    dtype: the dtype of q, k and v.
    spec: the mask (static part).
    score_mod: the score modification (static part).
    score_bytes: bytes per score of the operands tiled like the scores (a bias's
      itemsize, plus 1 for a dense mask or a mask object's patterns).
    deterministic: the caller needs bitwise run-to-run identical gradients (a backend
      whose backward uses unordered reductions must then order them or refuse).
  """

  batch: int
  q_len: int
  kv_len: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: np.dtype
  spec: MaskSpec
  score_mod: ScoreMod = ScoreMod()
  score_bytes: int = 0
  deterministic: bool = True

  @property
  def is_causal(self) -> bool:
    return self.spec.is_causal


class Operands(NamedTuple):
  """The runtime arrays of a call's variants; None where a variant is off.

  Every present operand has the full batch B as its leading axis (`jflash.attention`
  broadcasts them), so the batch axis shards and vmaps like q's, except `bias` and
  `mask`, whose batch and head axes may be 1 (broadcast; they can be large). Only
  `bias` is differentiated.

  Attributes:
    q_offset: [B] int32, query i sits at position i + q_offset[b].
    q_lengths: [B] int32, queries at index >= q_lengths[b] are padding.
    kv_lengths: [B] int32, keys at index >= kv_lengths[b] are padding.
    q_segment_ids: [B, T] int32.
    kv_segment_ids: [B, S] int32.
    alibi_slopes: [B, N] float32.
    bias: [B or 1, N or 1, T, S] float (any float dtype), added to the scaled logits.
    mask: [B or 1, N or 1, T, S] int8, nonzero where a query may see a key.
    dropout_seeds: [B, N] uint32, the dropout hash's seed of each batch row and head.
  """

  q_offset: Any = None
  q_lengths: Any = None
  kv_lengths: Any = None
  q_segment_ids: Any = None
  kv_segment_ids: Any = None
  alibi_slopes: Any = None
  bias: Any = None
  mask: Any = None
  dropout_seeds: Any = None


class Backend(abc.ABC):
  """One implementation of attention; see the module docstring."""

  name: ClassVar[str]
  #: The type of `config` this backend takes (frozen, hashable, self-validating).
  config_type: ClassVar[type]
  #: Whether ``interpret=True`` runs it in Pallas interpret mode on any device.
  interpretable: ClassVar[bool] = False
  #: Whether ``interpret=True`` with ``implementation=None`` may choose it.
  implicit_interpret: ClassVar[bool] = True
  #: Whether its interpret mode has ordered side effects (then it runs unpartitioned).
  interpret_effects: ClassVar[bool] = False
  #: Platform names (as `jax.lax.platform_dependent` spells them) it can run on, or None
  #: for any platform.
  platforms: ClassVar[tuple[str, ...] | None] = None

  @abc.abstractmethod
  def unavailable_reason(self, device: jax.Device) -> str | None:
    """None if it can run on `device`, else a sentence saying why not."""

  def unsupported_reason(self, problem: Problem) -> str | None:
    """None if it supports `problem` (shapes, dtype, mask), else why not."""
    del problem
    return None

  @abc.abstractmethod
  def default_config(self, problem: Problem, device: jax.Device | None) -> Any:
    """A config for `problem` on `device` (None: Pallas interpret mode)."""

  def check_config(self, config: Any, problem: Problem, device: jax.Device | None) -> None:
    """Raises ValueError if `config` cannot serve `problem` on `device`."""
    del config, problem, device

  @abc.abstractmethod
  def forward(self, q, k, v, operands: Operands, *, scale: float, spec: MaskSpec,
              score_mod: ScoreMod, config: Any, interpret: bool):
    """(out [B, T, N, H] in q.dtype, lse [B, T, N] float32 natural log).

    A query row that sees no key gets out = 0 and lse = -inf.
    """

  @abc.abstractmethod
  def backward(self, q, k, v, operands: Operands, lse, delta, do, *, scale: float,
               spec: MaskSpec, score_mod: ScoreMod, config: Any, interpret: bool,
               deterministic: bool):
    """(dq, dk, dv, dbias): dq, dk, dv with the shapes and dtypes of (q, k, v).

    With `deterministic` the gradients must be bitwise identical run to run; without,
    the backend may reduce in an unordered way (atomics) where that is faster.

    dbias is None unless ``score_mod.bias_grad``; then it is dL/dbias in float32 as a full
    [B, N, T, S] array, not summed over the bias's broadcast axes (summing inside a
    per-shard call would give each shard a partial sum; the caller sums outside).

    `lse` is the forward pass's with -inf (rows that see no key) replaced by +inf, so
    that recomputed probabilities are 0 there; `delta` = rowsum(do * out) - dL/dlse,
    [B, T, N] float32.
    """


def get(name: str) -> Backend:
  """The backend called `name`; ValueError if there is none."""
  if name not in _MODULES:
    raise ValueError(f"implementation={name!r} is not one of {list(_MODULES)} or None")
  return importlib.import_module(_MODULES[name]).BACKEND


@functools.lru_cache(maxsize=None)
def nvidia_compute_capability(device: jax.Device) -> tuple[int, int] | None:
  """(major, minor) of an NVIDIA GPU device; None for any other device (CPU, TPU, ROCm).

  ROCm devices report an architecture name such as ``"gfx90a"`` instead of a
  ``"major.minor"`` compute capability, so they get None, like any non-NVIDIA device.
  """
  if device.platform != "gpu":
    return None
  match = re.fullmatch(r"(\d+)(?:\.(\d+))?", str(getattr(device, "compute_capability", "")))
  if match is None:
    return None
  return int(match.group(1)), int(match.group(2) or 0)


@dataclasses.dataclass(frozen=True)
class Plan:
  """One backend with its config: what a call runs on one platform. Hashable."""

  backend: str
  config: Any
  interpret: bool = False
  deterministic: bool = True

  def forward(self, q, k, v, operands, *, scale, spec, score_mod):
    return get(self.backend).forward(q, k, v, operands, scale=scale, spec=spec,
                                     score_mod=score_mod, config=self.config,
                                     interpret=self.interpret)

  def backward(self, q, k, v, operands, lse, delta, do, *, scale, spec, score_mod):
    return get(self.backend).backward(q, k, v, operands, lse, delta, do, scale=scale,
                                      spec=spec, score_mod=score_mod, config=self.config,
                                      interpret=self.interpret,
                                      deterministic=self.deterministic)


def plan(implementation: str | None, problem: Problem, device: jax.Device | None, *,
         interpret: bool = False, config: Any = None) -> Plan:
  """Chooses the backend and config for `problem` on `device`.

  Args:
    implementation: a backend name, or None for the first of :data:`PRIORITY` that can
      run on `device`, supports `problem` and takes `config` (if given).
    problem: the call.
    device: where it runs (ignored with ``interpret=True``).
    interpret: run a Pallas backend in interpret mode.
    config: the user's config, or None for the backend's default.

  Raises:
    ValueError: an unknown name; ``interpret=True`` with a backend that has no Pallas
      interpret mode; a config of the wrong type or that does not fit.
    NotImplementedError: the named backend cannot serve the call here (the message
      names one that can), or, with ``implementation=None``, none can.
  """
  names = PRIORITY if implementation is None else (implementation,)
  backends = [get(name) for name in names]
  if config is not None and not any(isinstance(config, b.config_type) for b in backends):
    takes = " or ".join(f"a jflash.{b.config_type.__name__} ({b.name!r})" for b in backends)
    raise ValueError(f"config must be {takes} or None; got {config!r}")
  if interpret:
    if implementation is not None and not backends[0].interpretable:
      raise ValueError(
          f"interpret=True runs Pallas kernels in interpret mode; implementation="
          f"{implementation!r} has none (use one of {_interpretable()})")
    backends = [b for b in backends if b.interpretable
                and (implementation is not None or b.implicit_interpret)]
  reasons = {}
  for backend in backends:
    reason = _why_not(backend, problem, device, interpret, config)
    if reason is None:
      return _with_config(backend, problem, None if interpret else device, interpret, config)
    reasons[backend.name] = reason
  if implementation is None:
    details = "; ".join(f"{name!r}: {reason}" for name, reason in reasons.items())
    raise NotImplementedError(f"no jflash backend can serve this call: {details}")
  alternatives = [name for name in PRIORITY if name != implementation
                  and (get(name).interpretable or not interpret)
                  and _why_not(get(name), problem, device, interpret, None) is None]
  hint = (f"; implementation={alternatives[0]!r} can" if alternatives
          else "; no other backend can either")
  if get(implementation).interpretable and not interpret:
    hint += ", or interpret=True runs the kernels in Pallas interpret mode"
  raise NotImplementedError(
      f"implementation={implementation!r} cannot serve this call: {reasons[implementation]}"
      f"{hint}")


def _why_not(backend: Backend, problem: Problem, device, interpret: bool, config) -> str | None:
  if config is not None and not isinstance(config, backend.config_type):
    return (f"config is a jflash.{type(config).__name__}; this backend takes a "
            f"jflash.{backend.config_type.__name__}")
  if not interpret:
    reason = backend.unavailable_reason(device)
    if reason is not None:
      return reason
  return backend.unsupported_reason(problem)


def _with_config(backend: Backend, problem: Problem, device, interpret: bool, config) -> Plan:
  if config is None:
    config = backend.default_config(problem, device)
  else:
    backend.check_config(config, problem, device)
  return Plan(backend.name, config, interpret, problem.deterministic)


def _interpretable() -> list[str]:
  return [name for name in PRIORITY if get(name).interpretable]
