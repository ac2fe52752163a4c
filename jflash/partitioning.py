"""Sharded inputs stay sharded: a partitioning rule and a batching rule for the kernels.

A backend's forward and backward are opaque to XLA (a `pallas_call`, or loops it cannot
see through), so without help XLA gathers sharded inputs onto every device before the
call. Here each of them is wrapped in

* `jax.experimental.custom_partitioning` with a Shardy sharding rule: under `jit`, q, k,
  v sharded over the batch axis (data parallelism) and/or the head axis (tensor
  parallelism) run per shard, with no communication in the forward or backward pass.
  Heads shard by key/value-head groups: a mesh axis of size D over N query heads must
  also divide the K key/value heads (each shard then holds N/D query heads and the K/D
  key/value heads they read). Otherwise, and for a batch that the axis does not divide,
  that axis is gathered. The sequence axes (T, S) and the head dim H are always gathered
  before the call (a documented all-gather, not context parallelism: each device then
  computes its batch/head shard over the whole sequence) and the outputs are resharded
  like q.
* `jax.custom_batching.custom_vmap`: `vmap` folds the mapped axis into the batch axis
  (custom_partitioning has no batching rule of its own).

The runtime operands of the variants (:class:`jflash.backends.Operands`) travel with
q, k, v: their leading batch axis shards like q's, ALiBi slopes [B, N] also shard by
heads, and the sequence axes of segment ids are gathered like T and S.

On one device both are plain calls.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import custom_batching
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jflash.backends import Operands, Plan
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

# The factors of each operand (see the Shardy rules below), by Operands field.
_OPERAND_FACTORS = {"q_offset": "b", "q_lengths": "b", "kv_lengths": "b",
                    "q_segment_ids": "b t", "kv_segment_ids": "b s", "alibi_slopes": "b n"}


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A backend plan with the call's static arguments (hashable: a static argument)."""

  plan: Plan
  scale: float
  spec: MaskSpec
  score_mod: ScoreMod = ScoreMod()


def forward(kernel: Kernel, q, k, v, operands: Operands):
  """(out, lse) of `kernel` on q [B, T, N, H], k, v [B, S, K, H], partitioned and batched."""
  present = _present(operands)
  op = functools.partial(_ops(present)[0], kernel)
  return _vmappable(op)(q, k, v, *_leaves(operands, present))


def backward(kernel: Kernel, q, k, v, operands: Operands, lse, delta, do):
  """(dq, dk, dv) of `kernel`, partitioned and batched like :func:`forward`."""
  present = _present(operands)
  op = functools.partial(_ops(present)[1], kernel)
  return _vmappable(op)(q, k, v, lse, delta, do, *_leaves(operands, present))


def _present(operands: Operands) -> tuple[str, ...]:
  return tuple(name for name, x in operands._asdict().items() if x is not None)


def _leaves(operands: Operands, present):
  return [getattr(operands, name) for name in present]


def _operands(present, leaves) -> Operands:
  return Operands(**dict(zip(present, leaves)))


def _forward_impl(present, kernel: Kernel, q, k, v, *leaves):
  return kernel.plan.forward(q, k, v, _operands(present, leaves), scale=kernel.scale,
                             spec=kernel.spec, score_mod=kernel.score_mod)


def _backward_impl(present, kernel: Kernel, q, k, v, lse, delta, do, *leaves):
  return kernel.plan.backward(q, k, v, _operands(present, leaves), lse, delta, do,
                              scale=kernel.scale, spec=kernel.spec,
                              score_mod=kernel.score_mod)


def _shardings(mesh, q_info, k_info, present=()):
  """(rows, stats, operands) shardings the call runs with, derived from q's sharding.

  rows: q, out, do, dq [B, T, N, H], and k, v, dk, dv [B, S, K, H] (their K axis shards
  like q's N axis); stats: lse, delta [B, T, N]; operands: one per present operand.
  Only the batch and head axes stay sharded (see the module docstring).
  """
  sharding = q_info.sharding
  batch = heads = None
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * 4
    batch, heads = spec[0], spec[2]
  if batch is not None and q_info.shape[0] % _size(mesh, batch):
    batch = None
  if heads is not None and k_info.shape[2] % _size(mesh, heads):
    heads = None  # K/V heads cannot follow: shard by KV-head groups only
  rows = NamedSharding(mesh, PartitionSpec(batch, None, heads, None))
  stats = NamedSharding(mesh, PartitionSpec(batch, None, heads))
  axes = {"b": batch, "n": heads}
  operands = tuple(
      NamedSharding(mesh, PartitionSpec(*(axes.get(f) for f in _OPERAND_FACTORS[name].split())))
      for name in present)
  return rows, stats, operands


def _size(mesh, axes) -> int:
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def _forward_partition(present, kernel, mesh, arg_shapes, result_shape):
  del result_shape
  rows, stats, operands = _shardings(mesh, arg_shapes[0], arg_shapes[1], present)
  return (mesh, functools.partial(_forward_impl, present, kernel), (rows, stats),
          (rows,) * 3 + operands)


def _forward_infer(present, kernel, mesh, arg_shapes, result_shape):
  del present, kernel, result_shape
  return _shardings(mesh, arg_shapes[0], arg_shapes[1])[:2]


def _backward_partition(present, kernel, mesh, arg_shapes, result_shape):
  del result_shape
  rows, stats, operands = _shardings(mesh, arg_shapes[0], arg_shapes[1], present)
  return (mesh, functools.partial(_backward_impl, present, kernel), (rows,) * 3,
          (rows, rows, rows, stats, stats, rows) + operands)


def _backward_infer(present, kernel, mesh, arg_shapes, result_shape):
  del present, kernel, result_shape
  return (_shardings(mesh, arg_shapes[0], arg_shapes[1])[0],) * 3


@functools.lru_cache(maxsize=None)
def _ops(present: tuple[str, ...]):
  """The (forward, backward) custom_partitioning ops for calls with these operands.

  Factors: b batch, t queries, n query heads, h head dim, s keys, k key/value heads. The
  sequence axes and the head dim need replication; need_replication lists factors in
  order of first appearance, as Shardy requires.
  """
  extra = "".join(f", {_OPERAND_FACTORS[name]}" for name in present)
  forward_op = custom_partitioning(functools.partial(_forward_impl, present),
                                   static_argnums=(0,))
  forward_op.def_partition(
      partition=functools.partial(_forward_partition, present),
      infer_sharding_from_operands=functools.partial(_forward_infer, present),
      sharding_rule=f"b t n h, b s k h, b s k h{extra} -> b t n h, b t n",
      need_replication_factors=("t", "h", "s"))
  backward_op = custom_partitioning(functools.partial(_backward_impl, present),
                                    static_argnums=(0,))
  backward_op.def_partition(
      partition=functools.partial(_backward_partition, present),
      infer_sharding_from_operands=functools.partial(_backward_infer, present),
      sharding_rule=(f"b t n h, b s k h, b s k h, b t n, b t n, b t n h{extra} "
                     "-> b t n h, b s k h, b s k h"),
      need_replication_factors=("t", "h", "s"))
  return forward_op, backward_op


def _vmappable(op):
  """`op` on arrays whose axis 0 is the batch, with a vmap rule that folds into it."""

  @custom_batching.custom_vmap
  def call(*args):
    return op(*args)

  @call.def_vmap
  def _rule(axis_size, in_batched, *args):
    args = [x if batched else jax.numpy.broadcast_to(x, (axis_size, *x.shape))
            for x, batched in zip(args, in_batched)]
    outs = call(*(x.reshape(axis_size * x.shape[1], *x.shape[2:]) for x in args))
    outs = tuple(o.reshape(axis_size, o.shape[0] // axis_size, *o.shape[1:]) for o in outs)
    return outs, (True,) * len(outs)

  return call
