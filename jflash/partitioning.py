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
heads, and the sequence axes of segment ids are gathered like T and S. A bias or mask
[B or 1, N or 1, T, S] shards by batch and heads where it has those axes (size 1:
replicated). dbias comes out of the per-shard call as a full [B, N, T, S] array, sharded
like q's batch and heads, and is summed over the bias's broadcast axes after it (where XLA
adds the cross-shard reduction that sum needs). Under `vmap` a bias or mask of batch 1 is
broadcast to the batch (memory B times its size).

On one device both are plain calls. Mosaic GPU's interpret mode (a testing tool) runs
unpartitioned: its ordered callbacks do not lower inside custom_partitioning.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import custom_batching
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jflash.backends import Operands, Plan, get
from jflash.masks import MaskSpec
from jflash.scores import ScoreMod

# The factors of each operand (see the Shardy rules below), by Operands field. A bias or
# mask axis of size 1 (broadcast) gets a factor of its own: "x" batch, "y" heads.
_OPERAND_FACTORS = {"q_offset": "b", "q_lengths": "b", "kv_lengths": "b",
                    "q_segment_ids": "b t", "kv_segment_ids": "b s", "alibi_slopes": "b n",
                    "bias": "b n t s", "mask": "b n t s", "dropout_seeds": "b n"}
_BROADCASTABLE = ("bias", "mask")


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
  op = functools.partial(_ops(present, False)[0] if _partitioned(kernel)
                         else functools.partial(_forward_impl, present), kernel)
  leaves = _leaves(operands, present)
  return _vmappable(op, _broadcastable(3, present))(q, k, v, *leaves)


def backward(kernel: Kernel, q, k, v, operands: Operands, lse, delta, do):
  """(dq, dk, dv, dbias) of `kernel`, partitioned and batched like :func:`forward`.

  dbias is None unless ``kernel.score_mod.bias_grad``; then float32 with the bias's shape.
  """
  present = _present(operands)
  with_dbias = kernel.score_mod.bias_grad
  op = functools.partial(_ops(present, with_dbias)[1] if _partitioned(kernel)
                         else functools.partial(_backward_impl, present), kernel)
  outs = _vmappable(op, _broadcastable(6, present))(q, k, v, lse, delta, do,
                                                    *_leaves(operands, present))
  if not with_dbias:
    return (*outs, None)
  dq, dk, dv, dbias = outs  # [B, N, T, S]: summed here, outside the per-shard call
  broadcast = tuple(a for a in (0, 1) if operands.bias.shape[a] == 1)
  return dq, dk, dv, jnp.sum(dbias, axis=broadcast, keepdims=True)


def _partitioned(kernel: Kernel) -> bool:
  """False for an interpret mode whose callbacks custom_partitioning cannot lower."""
  return not (kernel.plan.interpret and get(kernel.plan.backend).interpret_effects)


def _present(operands: Operands) -> tuple[tuple[str, str], ...]:
  """(name, factors) of every present operand; see `_OPERAND_FACTORS`."""
  present = []
  for name, x in operands._asdict().items():
    if x is None:
      continue
    factors = _OPERAND_FACTORS[name]
    if name in _BROADCASTABLE:
      factors = " ".join(f if x.shape[a] > 1 else broadcast
                         for a, (f, broadcast) in enumerate(zip("bnts", "xyts")))
    present.append((name, factors))
  return tuple(present)


def _broadcastable(num_arrays: int, present) -> tuple[bool, ...]:
  """Per op argument: whether it is a bias or mask (whose axis 0 may be 1)."""
  return (False,) * num_arrays + tuple(name in _BROADCASTABLE for name, _ in present)


def _leaves(operands: Operands, present):
  return [getattr(operands, name) for name, _ in present]


def _operands(present, leaves) -> Operands:
  return Operands(**{name: x for (name, _), x in zip(present, leaves)})


def _forward_impl(present, kernel: Kernel, q, k, v, *leaves):
  return kernel.plan.forward(q, k, v, _operands(present, leaves), scale=kernel.scale,
                             spec=kernel.spec, score_mod=kernel.score_mod)


def _backward_impl(present, kernel: Kernel, q, k, v, lse, delta, do, *leaves):
  *grads, dbias = kernel.plan.backward(q, k, v, _operands(present, leaves), lse, delta, do,
                                       scale=kernel.scale, spec=kernel.spec,
                                       score_mod=kernel.score_mod)
  return (*grads, dbias) if kernel.score_mod.bias_grad else tuple(grads)


def _shardings(mesh, q_info, k_info, present=()):
  """(rows, stats, operands) shardings the call runs with, derived from q's sharding.

  `present` holds (name, factors) of the operands.

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
  operands = tuple(NamedSharding(mesh, PartitionSpec(*(axes.get(f) for f in factors.split())))
                   for _, factors in present)
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


def _backward_outputs(present, kernel, rows, operands):
  """Output shardings of the backward: dq, dk, dv like the rows, dbias [B, N, T, S] by
  batch and heads."""
  del present, operands
  if not kernel.score_mod.bias_grad:
    return (rows,) * 3
  spec = rows.spec  # (batch, None, heads, None) -> (batch, heads, None, None)
  return (rows,) * 3 + (NamedSharding(rows.mesh, PartitionSpec(spec[0], spec[2], None, None)),)


def _backward_partition(present, kernel, mesh, arg_shapes, result_shape):
  del result_shape
  rows, stats, operands = _shardings(mesh, arg_shapes[0], arg_shapes[1], present)
  return (mesh, functools.partial(_backward_impl, present, kernel),
          _backward_outputs(present, kernel, rows, operands),
          (rows, rows, rows, stats, stats, rows) + operands)


def _backward_infer(present, kernel, mesh, arg_shapes, result_shape):
  del result_shape
  rows, _, operands = _shardings(mesh, arg_shapes[0], arg_shapes[1], present)
  return _backward_outputs(present, kernel, rows, operands)


@functools.lru_cache(maxsize=None)
def _ops(present: tuple[tuple[str, str], ...], dbias: bool):
  """The (forward, backward) custom_partitioning ops for calls with these operands.

  Factors: b batch, t queries, n query heads, h head dim, s keys, k key/value heads (x, y:
  broadcast bias/mask axes). The sequence axes and the head dim need replication;
  need_replication lists factors in order of first appearance, as Shardy requires.
  `dbias`: the backward also returns dL/dbias, factored like the bias.
  """
  extra = "".join(f", {factors}" for _, factors in present)
  dbias_out = ", b n t s" if dbias else ""
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
                     f"-> b t n h, b s k h, b s k h{dbias_out}"),
      need_replication_factors=("t", "h", "s"))
  return forward_op, backward_op


def _vmappable(op, broadcastable):
  """`op` on arrays whose axis 0 is the batch, with a vmap rule that folds into it.

  `broadcastable[i]`: argument i may have batch 1 (broadcast); the rule broadcasts it to
  q's batch first.
  """

  @custom_batching.custom_vmap
  def call(*args):
    return op(*args)

  @call.def_vmap
  def _rule(axis_size, in_batched, *args):
    q, batched_q = args[0], in_batched[0]
    batch = q.shape[1] if batched_q else q.shape[0]
    unbatched_shapes = [x.shape[1:] if b else x.shape for x, b in zip(args, in_batched)]
    folded = []
    for x, batched, shape, wide in zip(args, in_batched, unbatched_shapes, broadcastable):
      if not batched:
        x = jax.numpy.broadcast_to(x, (axis_size, *x.shape))
      if wide and shape[0] == 1:
        x = jax.numpy.broadcast_to(x, (axis_size, batch, *shape[1:]))
      folded.append(x.reshape(axis_size * x.shape[1], *x.shape[2:]))
    outs = call(*folded)
    outs = [o.reshape(axis_size, o.shape[0] // axis_size, *o.shape[1:]) for o in outs]
    return tuple(outs), (True,) * len(outs)

  return call
