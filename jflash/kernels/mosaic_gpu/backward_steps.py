"""Per-tile steps shared by the Mosaic GPU backward kernels (:mod:`.backward`).

Probabilities and score gradients recomputed from the saved lse, matrix multiplies on
the tensor cores (fresh or accumulating, through shared memory in the interpretable
form), the fused kernel's dQ share, the consumers' own-tile loads and stores, and the
warp-specialised loop over a CTA's work items.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jflash.kernels.mosaic_gpu import common

LOG2E = math.log2(math.e)
CONSUMERS = 2
WGMMA = plgpu.Layout.WGMMA


def probabilities(s, lse2, *, scale, score_mod, lse_dim, visible=None):
  """(P, dz/ds or None) of a tile of raw scores `s`; lse2 = lse log2(e) along `lse_dim`.

  P is 0 where `visible` (if given: a function returning a boolean tile, called after
  the exponentials so that the mask and the positions it compares are not live across
  the product before them) is False. (ALiBi, which needs positions, is not served.)
  """
  lse2 = lax.broadcast_in_dim(lse2, s.shape, [lse_dim])
  dz = None
  if not score_mod.active:
    p = jnp.exp2(s * (scale * LOG2E) - lse2)
  else:
    z, dz = score_mod.logits(s * scale, with_grad=True)
    p = jnp.exp2(z * LOG2E - lse2)
  return (p if visible is None else jnp.where(visible(), p, 0.0)), dz


def score_grads(p, dp, delta, dz, delta_dim):
  """dL/d(scaled scores) = P (dP - delta) dz/ds, delta broadcast along `delta_dim`."""
  ds = p * (dp - lax.broadcast_in_dim(delta, p.shape, [delta_dim]))
  return ds if dz is None else ds * dz


def matmul(a, b, shape, more=()):
  """a @ b (+ the products of the (a, b) pairs `more`) on the tensor cores, into a fresh
  fp32 accumulator of `shape`."""
  def body(acc_ref):
    for a_, b_ in ((a, b), *more):
      plgpu.wgmma(acc_ref, a_, b_)
    return acc_ref[...]
  return pl.run_scoped(body, plgpu.ACC(shape, jnp.float32))


class _Refs:
  """Pipelined products (native form): wgmma issued asynchronously into accumulator
  refs, awaited where read."""

  def __init__(self, refs):
    self.refs = list(refs)

  def mma(self, i, a, b):
    plgpu.wgmma(self.refs[i], a, b)

  def get(self, i, wait_n):
    return plgpu.wgmma_accumulator_load(self.refs[i], wait_n=wait_n)


class _Serial:
  """Serial products: each computed when issued, in an accumulator scope of its own, so
  only the carried accumulators and the operands in use are live (the fewest
  registers). In the interpretable form (`a_smem`, the register operands'
  shared-memory buffer) register operands go through shared memory: the interpreter
  has neither register-operand wgmma nor accumulator refs around a step."""

  def __init__(self, values, a_smem):
    self.values, self.a_smem = list(values), a_smem

  def mma(self, i, a, b):
    acc = self.values[i]
    if isinstance(acc, tuple):  # a fresh accumulator: its shape
      self.values[i] = matmul(a, b, acc)
    elif isinstance(a, jax.Array) and self.a_smem is None:  # native, register operand
      self.values[i] = pl.run_state(lambda ref: plgpu.wgmma(ref, a, b))(plgpu.ACC.init(acc))
    else:
      if isinstance(a, jax.Array):  # a register tile (refs are not jax.Arrays)
        self.a_smem[...] = a
        plgpu.commit_smem()
        a = self.a_smem
      self.values[i] = acc + matmul(a, b, acc.shape)

  def get(self, i, wait_n):
    del wait_n
    return self.values[i]


def pipelined(body, carry, fresh, *, asynchronous: bool, a_smem=None):
  """One step's matrix multiplies on the tensor cores, written once for every form.

  `body(mm)` issues ``mm.mma(i, a, b)`` (acc_i += a @ b) and reads ``mm.get(i, wait_n)``.
  Accumulators 0 .. len(carry) - 1 start from the fp32 register tiles `carry`; the next
  ones are fresh (zero), of the shapes `fresh`, and live only within the step. Returns
  the new carry.

  `asynchronous` (native form only): ``get`` waits until at most `wait_n` of the
  products issued so far still run (wgmma groups complete in order), and the step's end
  waits for all. So exponentials run while the next product is on the tensor cores,
  FlashAttention-3's intra-warpgroup overlap; the cost is registers, as every fresh
  accumulator is live for the whole step. Otherwise each product completes when issued
  (:class:`_Serial`), in the body's order, which the interpretable form (`a_smem`
  given) so checks for the asynchronous one too.
  """
  if not asynchronous:
    mm = _Serial([*carry, *fresh], a_smem)
    body(mm)
    return tuple(mm.values[:len(carry)])

  def run(carry_refs):
    def scoped(*fresh_refs):
      body(_Refs([*carry_refs, *fresh_refs]))
    pl.run_scoped(scoped, *[plgpu.ACC(shape, jnp.float32) for shape in fresh])

  return tuple(pl.run_state(run)(tuple(plgpu.ACC.init(c) for c in carry)))


#: How the two consumers of the fused backward share a query tile's dQ (:func:`dq_share`).
DQ_SHARES = ("cols", "alternate")


def dq_share(ds_t, wg, t, k_smem, ds_smem, dq_smem, ready, dq_out, *, mode: str,
             interpretable: bool):
  """Fused backward: a consumer's share of one query tile's dQ (fp32, unscaled), added
  into `dq_out` ([queries, H] in GMEM) by a TMA reduce-add.

  The consumers first exchange their dS tiles through shared memory (barrier `ready`),
  so that a share spans both consumers' keys; then, by `mode` (one of
  :data:`DQ_SHARES`):

  * "cols" (H = 128): each consumer adds half of the columns.
  * "alternate" (H < 128, where half a row is not a whole 128-byte swizzle row): the
    consumer whose turn it is (by the parity of entry `t`) adds all H columns.

  Either way a query tile gets one reduce-add of [queries, H] per CTA and entry, half
  as many as if each consumer added dS K over its own keys (on an H200 at H = 64 that
  ran 3-20% slower, BUILD_NOTES issue 10 session 10).

  The interpreter has no TMA reductions (nor transposed operands): the interpretable
  form stores the share to a slice of its own, summed afterwards, and keeps dS
  untransposed in shared memory.

  ds_t: dSᵀ [keys, queries] in registers, of stream entry `t`; k_smem: both consumers'
  key tiles [2, keys, H]; ds_smem: [2 slots (by entry parity), 2, keys, queries]
  ([.., queries, keys] interpretable); dq_smem: the fp32 staging buffer [2, queries,
  H / 2 ("cols") or H], reusable once its last reduce-add read it.
  """
  slot = lax.rem(t, jnp.int32(ds_smem.shape[0]))
  ds_smem.at[slot, wg][...] = ds_t.T if interpretable else ds_t
  plgpu.commit_smem()
  ds = lambda c: ds_smem.at[slot, c] if interpretable else ds_smem.at[slot, c].T
  plgpu.barrier_arrive(ready.at[slot])
  plgpu.barrier_wait(ready.at[slot])

  def reduce_add(part, out):
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    dq_smem.at[wg][...] = part
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(dq_smem.at[wg], out,
                            reduction_op=None if interpretable else "add")

  shape = dq_smem.shape[1:]
  if mode == "alternate":

    @pl.when(wg == lax.rem(t, jnp.int32(CONSUMERS)))
    def _share():
      pairs = [(ds(o), k_smem.at[common.opaque(o)]) for o in range(CONSUMERS)]
      reduce_add(matmul(*pairs[0], shape, more=pairs[1:]), dq_out)

    return
  for c in range(CONSUMERS):  # static column slices of K: one branch per consumer
    cols = pl.ds(c * shape[1], shape[1])

    @pl.when(wg == c)
    def _share():
      pairs = [(ds(o), k_smem.at[common.opaque(o)].at[:, cols]) for o in range(CONSUMERS)]
      reduce_add(matmul(*pairs[0], shape, more=pairs[1:]), dq_out.at[:, cols])


def hand_over(share, handed, t, value=None):
  """Two consumers' lock-step handover of an fp32 tile through shared memory, at stream
  entry `t`: the giver (`value` given) stores it in slot t % 2 of `share` ([2, rows,
  cols]); both arrive on and wait for that slot's barrier (`handed`, 2 arrivals); the
  taker (`value` None) gets the tile back in the WGMMA layout. The giver rewrites a slot
  two entries later, after the next entry's barrier, which the taker reaches only once
  it has loaded the slot."""
  slot = lax.rem(t, jnp.int32(share.shape[0]))
  if value is not None:
    share.at[slot][...] = value
  plgpu.barrier_arrive(handed.at[slot])
  plgpu.barrier_wait(handed.at[slot])
  return None if value is not None else plgpu.load(share.at[slot], layout=WGMMA)


def load_own(copies, barriers, wg):
  """Consumer: TMA-loads its own tiles (src, dst pairs), one barrier each, and waits."""
  for (src, dst), barrier in zip(copies, barriers):
    plgpu.copy_gmem_to_smem(src, dst, barrier.at[wg])
  for barrier in barriers:
    plgpu.barrier_wait(barrier.at[wg])


def store_own(pairs):
  """Consumer: stores (value, smem, gmem) triples through shared memory with TMA."""
  for value, smem, _ in pairs:
    smem[...] = value
  plgpu.commit_smem()
  for _, smem, gmem in pairs:
    plgpu.copy_smem_to_gmem(smem, gmem)
  # No wait: the next work item waits (wait_smem_to_gmem(0, wait_read_only=True)) before
  # it reuses the buffers, and the kernel waits for every store at its end.


def run_items(wg, consumers: int, local_items, item, consume_item, produce_item, stream):
  """A CTA's work items, warp-specialised: each consumer warpgroup (240 registers) runs
  ``consume_item(base, *item(k))`` and the producer (24) ``produce_item(k, base)`` for k
  in [0, local_items), `base` counting the stream entries of the earlier items; the
  consumers then wait for their last stores, the producer for the last frees."""

  @pl.when(wg < consumers)
  def _consumer():
    plgpu.set_max_registers(240, action="increase")
    lax.fori_loop(0, local_items, lambda k, base: consume_item(base, *item(k)), jnp.int32(0))
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == consumers)
  def _producer():
    plgpu.set_max_registers(24, action="decrease")
    stream.drain(lax.fori_loop(0, local_items, produce_item, jnp.int32(0)))
