"""Static block-sparse masks against brute force: entries, tile classes, patterns."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
import pytest

from jflash import sparsity
from jflash.block_info import block_info, density, transposed
from jflash.sparsity import (FULL, MASKED, SKIP, And, BlockLayout, Causal, ChunkedCausal,
                             GlobalTokens, LocalWindow, Mask, Or, Strided)

N = 200  # brute-force masks are built once at N x N and sliced


def _brute(pred, t: int = N, s: int = N) -> np.ndarray:
  """The dense [t, s] mask of pred(i, j), one Python call per entry."""
  out = np.zeros((t, s), bool)
  for i in range(t):
    for j in range(s):
      out[i, j] = bool(pred(i, j))
  return out


def _layout_pred(layout, bq, bkv):
  return lambda i, j: layout[i // bq][j // bkv]


# (id, mask, predicate): masks that do not depend on the problem size.
CASES = [
    ("causal", Causal(), lambda i, j: j <= i),
    ("causal+3", Causal(3), lambda i, j: j <= i + 3),
    ("causal-5", Causal(-5), lambda i, j: j <= i - 5),
    ("window5,0", LocalWindow(5, 0), lambda i, j: i - 5 <= j <= i),
    ("window2,7,off4", LocalWindow(2, 7, offset=4), lambda i, j: i + 2 <= j <= i + 11),
    ("window-,3", LocalWindow(None, 3), lambda i, j: j <= i + 3),
    ("window4,-", LocalWindow(4, None), lambda i, j: j >= i - 4),
    ("window-,-", LocalWindow(None, None), lambda i, j: True),
    ("window0,0,off-30", LocalWindow(0, 0, -30), lambda i, j: j == i - 30),
    ("chunked8", ChunkedCausal(8), lambda i, j: i // 8 == j // 8 and j <= i),
    ("chunked1", ChunkedCausal(1), lambda i, j: i == j),
    ("chunked23", ChunkedCausal(23), lambda i, j: i // 23 == j // 23 and j <= i),
    ("strided4", Strided(4), lambda i, j: abs(i - j) % 4 == 0),
    ("strided3", Strided(3), lambda i, j: abs(i - j) % 3 == 0),
    ("strided1", Strided(1), lambda i, j: True),
    ("global2", GlobalTokens(2), lambda i, j: i < 2 or j < 2),
    ("global0", GlobalTokens(0), lambda i, j: False),
    ("causal&window", Causal() & LocalWindow(5, 0), lambda i, j: i - 5 <= j <= i),
    ("(strided|window)&causal", (Strided(4) | LocalWindow(3, 0)) & Causal(),
     lambda i, j: j <= i and ((i - j) % 4 == 0 or i - j <= 3)),
    ("global|chunked", GlobalTokens(2) | ChunkedCausal(8),
     lambda i, j: i < 2 or j < 2 or (i // 8 == j // 8 and j <= i)),
    ("global&causal", GlobalTokens(40) & Causal(),
     lambda i, j: (i < 40 or j < 40) and j <= i),
    ("causal&window&chunked", Causal(2) & LocalWindow(None, 1) & ChunkedCausal(16),
     lambda i, j: j <= i + 1 and i // 16 == j // 16 and j <= i),
    ("global|window", GlobalTokens(3) | LocalWindow(2, 2),
     lambda i, j: i < 3 or j < 3 or abs(i - j) <= 2),
]
IDS = [c[0] for c in CASES]


@functools.cache
def _dense_case(name: str) -> np.ndarray:
  return _brute(dict((c[0], c[2]) for c in CASES)[name])


def _layout(t: int, s: int, bq: int, bkv: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed + 1000 * t + s)
  return rng.random((-(-t // bq), -(-s // bkv))) < 0.4


def _layout_cases(t: int, s: int):
  """(mask, dense) pairs of BlockLayout masks for a t x s problem."""
  unaligned = _layout(t, s, 8, 24)
  aligned = _layout(t, s, 16, 16, seed=1)
  yield BlockLayout(unaligned, 8, 24), _brute(_layout_pred(unaligned, 8, 24), t, s)
  yield (BlockLayout(aligned.astype(np.int8), 16, 16) & Causal(),
         _brute(lambda i, j: aligned[i // 16][j // 16] and j <= i, t, s))


def _call(mask: Mask, t: int, s: int) -> np.ndarray:
  out = mask(np.arange(t)[:, None], np.arange(s)[None, :])
  assert isinstance(out, np.ndarray) and out.dtype == np.bool_ and out.shape == (t, s)
  return out


@pytest.mark.parametrize("name,mask,pred", CASES, ids=IDS)
def test_mask_matches_brute_force(name, mask, pred):
  del pred
  dense = _dense_case(name)
  np.testing.assert_array_equal(_call(mask, N, N), dense)
  np.testing.assert_array_equal(_call(mask, 37, 53), dense[:37, :53])
  assert mask(np.int32(5), 5).shape == ()  # scalars and int32 work too
  assert mask(np.int32(5), 5) == dense[5, 5]


@pytest.mark.parametrize("t,s", [(17, 97), (200, 1), (97, 200)])
def test_block_layout_matches_brute_force(t, s):
  for mask, dense in _layout_cases(t, s):
    np.testing.assert_array_equal(_call(mask, t, s), dense)


def _reconstruct(info, t: int, s: int) -> np.ndarray:
  nq, nkv = info.kind.shape
  _, bq, bkv = info.blocks.shape
  out = np.zeros((nq * bq, nkv * bkv), bool)
  for r, c in itertools.product(range(nq), range(nkv)):
    tile = out[r * bq:(r + 1) * bq, c * bkv:(c + 1) * bkv]
    if info.kind[r, c] == FULL:
      tile[...] = True
    elif info.kind[r, c] == MASKED:
      tile[...] = info.blocks[info.block_ids[r, c]]
    else:
      assert info.kind[r, c] == SKIP
  # Patterns of MASKED tiles are False past T and S; FULL tiles are judged within.
  masked = np.repeat(np.repeat(info.kind == MASKED, bq, 0), bkv, 1)
  assert not (out & masked)[t:].any() and not (out & masked)[:, s:].any()
  return out[:t, :s]


def _check_info(info, dense: np.ndarray, bq: int, bkv: int):
  t, s = dense.shape
  nq, nkv = -(-t // bq), -(-s // bkv)
  assert info.kind.shape == info.block_ids.shape == (nq, nkv)
  assert info.kind.dtype == info.block_ids.dtype == np.int32
  assert info.blocks.dtype == np.bool_ and info.blocks.shape[1:] == (bq, bkv)
  for r, c in itertools.product(range(nq), range(nkv)):
    sub = dense[r * bq:(r + 1) * bq, c * bkv:(c + 1) * bkv]
    want = FULL if sub.all() else MASKED if sub.any() else SKIP
    assert info.kind[r, c] == want, (r, c)
  assert (info.block_ids[info.kind != MASKED] == 0).all()
  np.testing.assert_array_equal(_reconstruct(info, t, s), dense)
  # Blocks are distinct, and each one is used (or the lone all-False placeholder).
  u = info.blocks.shape[0]
  assert len({b.tobytes() for b in info.blocks}) == u
  used = set(info.block_ids[info.kind == MASKED].tolist())
  if used:
    assert used == set(range(u))
  else:
    assert u == 1 and not info.blocks.any()
  assert density(info) == pytest.approx(np.mean(info.kind != SKIP))


SIZES = [(t, s) for t, s in itertools.product([1, 17, 97, 200], repeat=2) if t != s]
TILES = list(itertools.product([16, 32], repeat=2))


def _check_all_sizes(mask_and_dense):
  for (t, s), (bq, bkv) in itertools.product(SIZES, TILES):
    mask, dense = mask_and_dense(t, s)
    info = block_info(mask, t, s, bq, bkv)
    _check_info(info, dense, bq, bkv)
    info_t = transposed(info)
    assert info_t.blocks.shape[1:] == (bkv, bq)
    _check_info(info_t, dense.T, bkv, bq)


@pytest.mark.parametrize("name,mask,pred", CASES, ids=IDS)
def test_block_info_matches_brute_force(name, mask, pred):
  del pred
  _check_all_sizes(lambda t, s: (mask, _dense_case(name)[:t, :s]))


@pytest.mark.parametrize("which", [0, 1])
def test_block_info_of_block_layouts(which):
  _check_all_sizes(lambda t, s: list(_layout_cases(t, s))[which])


@dataclasses.dataclass(frozen=True)
class _Opaque(Mask):
  """A user mask with only __call__: block_info evaluates it densely."""

  inner: Mask

  def __call__(self, q_idx, kv_idx):
    return self.inner(q_idx, kv_idx)


@pytest.mark.parametrize("name,mask,pred", CASES[:12], ids=IDS[:12])
def test_run_fast_path_equals_dense_path(name, mask, pred):
  del name, pred
  for t, s, bq, bkv in [(300, 257, 32, 16), (64, 64, 16, 16), (5, 300, 64, 128)]:
    fast, slow = block_info(mask, t, s, bq, bkv), block_info(_Opaque(mask), t, s, bq, bkv)
    for a, b in zip(fast, slow):
      np.testing.assert_array_equal(a, b)


def test_dedup_and_density_on_a_large_problem():
  info = block_info(Causal(), 1024, 1024, 128, 128)
  assert info.blocks.shape == (1, 128, 128)  # every diagonal tile shares one pattern
  np.testing.assert_array_equal(info.kind, np.where(
      np.eye(8, dtype=bool), MASKED, np.where(np.tri(8, dtype=bool), FULL, SKIP)))
  assert density(info) == pytest.approx(36 / 64)
  none = block_info(Causal(-2000), 1024, 1024, 128, 128)
  assert density(none) == 0.0 and none.blocks.shape == (1, 128, 128)
  assert not none.blocks.any()


def test_equal_masks_hash_equal_and_hit_the_cache():
  assert Causal() == Causal(0) and hash(Causal()) == hash(Causal(np.int64(0)))
  assert LocalWindow(5, 0) != LocalWindow(5, 1) and Causal() != LocalWindow(None, 0)
  a, b, c = Causal(), LocalWindow(5, 0), Strided(4)
  assert (a & b) & c == a & (b & c) == And(a, b, c) != Or(a, b, c)
  assert hash((a | b) | c) == hash(Or(a, b, c))
  assert And(a, b) != And(b, a)  # structural equality
  layout = [[True, False], [True, True]]
  assert BlockLayout(layout, 2, 3) == BlockLayout(np.array(layout), 2, 3)
  assert hash(BlockLayout(layout, 2, 3)) == hash(BlockLayout(np.array([[1, 0], [1, 1]]), 2, 3))
  assert BlockLayout(layout, 2, 3) != BlockLayout([[True, True], [True, True]], 2, 3)
  assert BlockLayout(layout, 2, 3) != BlockLayout(layout, 2, 2)
  view = BlockLayout(layout, 2, 3).layout
  np.testing.assert_array_equal(view, layout)
  assert view.dtype == np.bool_ and not view.flags.writeable
  assert "BlockLayout(" in repr(BlockLayout(layout, 2, 3)) and "And(" in repr(a & b)
  first = block_info(Causal() & LocalWindow(7, 0), 100, 90, 16, 32)
  assert block_info(Causal(0) & LocalWindow(7, 0), np.int64(100), 90, 16, 32) is first
  assert not first.kind.flags.writeable and not first.blocks.flags.writeable


@pytest.mark.parametrize("make,match", [
    (lambda: LocalWindow(-1, 0), r"left must be a non-negative int or None, got -1"),
    (lambda: LocalWindow(0, -2), r"right must be a non-negative int or None, got -2"),
    (lambda: LocalWindow(1.5, 0), r"left .* got 1.5"),
    (lambda: Causal(True), r"offset must be an int, got True"),
    (lambda: ChunkedCausal(0), r"chunk_size must be a positive int, got 0"),
    (lambda: Strided(0), r"stride must be a positive int, got 0"),
    (lambda: GlobalTokens(-3), r"num_tokens must be a non-negative int, got -3"),
    (lambda: BlockLayout([1, 0, 1], 2, 2), r"2-D"),
    (lambda: BlockLayout([[0, 2]], 2, 2), r"bools or 0/1"),
    (lambda: BlockLayout([[1]], 0, 2), r"block_q must be a positive int, got 0"),
    (lambda: And(Causal()), r"at least two masks, got 1"),
    (lambda: Or(), r"at least two masks, got 0"),
    (lambda: And(Causal(), "causal"), r"must be a Mask, got 'causal'"),
    (lambda: Or(Causal(), None), r"must be a Mask, got None"),
    (lambda: Causal()(np.arange(3.0), 1), r"q_idx must be an integer array"),
])
def test_invalid_masks_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_block_info_rejects_bad_arguments():
  layout = BlockLayout(np.ones((2, 3), bool), 16, 16)
  block_info(layout, 32, 48, 64, 64)  # covers 32 x 48: fine
  with pytest.raises(ValueError, match=r"layout shape \(2, 3\) does not cover T=33 x S=48 .* "
                                       r"needs shape \(3, 3\)"):
    block_info(layout, 33, 48, 64, 64)
  with pytest.raises(ValueError, match=r"needs shape \(2, 4\)"):
    block_info(Causal() & (Strided(2) | layout), 32, 49, 16, 16)  # composites check parts
  with pytest.raises(ValueError, match=r"q_len must be a positive int, got 0"):
    block_info(Causal(), 0, 16, 16, 16)
  with pytest.raises(ValueError, match=r"block_kv must be a positive int, got -16"):
    block_info(Causal(), 16, 16, 16, -16)
  with pytest.raises(ValueError, match=r"mask must be a Mask"):
    block_info(np.ones((4, 4), bool), 4, 4, 16, 16)
  with pytest.raises(TypeError):
    Causal() & "causal"
  assert sparsity.SKIP == 0 and sparsity.MASKED == 1 and sparsity.FULL == 2
