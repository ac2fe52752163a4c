"""Tile ranges of MaskSpec against a brute-force look at every tile of the mask."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jflash.masks import MaskSpec


def _dense(spec: MaskSpec, t_pad: int, s_pad: int) -> np.ndarray:
  return np.asarray(spec.visible(jnp.arange(t_pad)[:, None], jnp.arange(s_pad)[None, :]))


def _check_run(tiles, any_visible, needs_all):
  lo, full_lo, full_hi, hi = (int(x) for x in tiles)
  assert lo <= full_lo <= full_hi <= hi <= len(any_visible)
  visited = np.zeros(len(any_visible), bool)
  visited[lo:hi] = True
  # Every tile with a visible entry is visited, and no tile without one.
  np.testing.assert_array_equal(visited, any_visible)
  # Tiles run unmasked must be fully visible over the entries that matter.
  assert all(needs_all[j] for j in range(full_lo, full_hi)), (tiles, needs_all)
  # With no other mask than causal + lengths, every fully visible tile is run unmasked
  # except possibly at the run boundaries; check the masked runs hold only straddlers
  # or the single ragged tile.
  masked = [j for j in range(lo, hi) if not full_lo <= j < full_hi]
  assert sum(needs_all[j] for j in masked) <= 1, (tiles, needs_all)


SIZES = [1, 5, 16, 17, 64, 100, 128, 200]
BLOCKS = [16, 32, 64]


@pytest.mark.parametrize("is_causal", [False, True])
def test_kv_tiles_match_brute_force(is_causal):
  for t, s, bq, bkv in itertools.product(SIZES, SIZES, BLOCKS, BLOCKS):
    spec = MaskSpec(t, s, is_causal)
    nq, nkv = -(-t // bq), -(-s // bkv)
    vis = _dense(spec, nq * bq, nkv * bkv)
    for i in range(nq):
      rows = vis[i * bq:(i + 1) * bq]
      tiles_ = rows.reshape(bq, nkv, bkv)
      any_visible = tiles_.any(axis=(0, 2))
      # Rows past T are padding: a tile needs no mask if all *real* rows see all its keys.
      real = rows[: max(0, min(bq, t - i * bq))].reshape(-1, nkv, bkv)
      needs_all = real.all(axis=(0, 2)) & (np.arange(nkv) * bkv + bkv <= s)
      _check_run(spec.kv_tiles(i * bq, bq, bkv), any_visible,
                 needs_all=needs_all)


@pytest.mark.parametrize("is_causal", [False, True])
def test_q_tiles_match_brute_force(is_causal):
  for t, s, bq, bkv in itertools.product(SIZES, SIZES, BLOCKS, BLOCKS):
    spec = MaskSpec(t, s, is_causal)
    nq, nkv = -(-t // bq), -(-s // bkv)
    vis = _dense(spec, nq * bq, nkv * bkv)
    for j in range(nkv):
      cols = vis[:, j * bkv:(j + 1) * bkv]
      any_visible = cols.reshape(nq, bq, bkv).any(axis=(1, 2))
      real = cols[:, : max(0, min(bkv, s - j * bkv))]
      needs_all = real.reshape(nq, bq, -1).all(axis=(1, 2)) & (np.arange(nq) * bq + bq <= t)
      _check_run(spec.q_tiles(j * bkv, bkv, bq), any_visible,
                 needs_all=needs_all)


def test_causal_skips_tiles_above_the_diagonal():
  spec = MaskSpec(1024, 1024, is_causal=True)
  lo, full_lo, full_hi, hi = spec.kv_tiles(256, 128, 64)  # query rows 256..383
  assert (lo, full_lo, full_hi, hi) == (0, 0, 4, 6)  # tiles 4, 5 straddle; 6.. skipped
  lo, full_lo, full_hi, hi = spec.q_tiles(256, 64, 128)  # keys 256..319
  assert (lo, full_lo, full_hi, hi) == (2, 3, 8, 8)  # tile 2 straddles; 0, 1 skipped


def _dense_variants(t, s, t_pad, s_pad, is_causal, window, offset, q_len, kv_len):
  """The visibility of every (query, key) index pair, straight from the definitions."""
  i = np.arange(t_pad)[:, None]
  j = np.arange(s_pad)[None, :]
  vis = (i < min(q_len, t)) & (j < min(kv_len, s))
  if is_causal:
    vis &= j <= i + offset
  if window is not None:
    left, right = window
    if left is not None:
      vis &= j >= i + offset - left
    if right is not None:
      vis &= j <= i + offset + right
  return vis


VARIANTS = [  # is_causal, window, offset, q_len, kv_len (None: the full length)
    (False, (3, 5), 0, None, None), (True, (7, None), 0, None, None),
    (False, (None, 0), 4, None, None), (True, None, 9, None, None),
    (True, None, -6, None, None), (False, (0, 0), 2, None, None),
    (False, None, 0, 11, 40), (True, (10, 2), 30, 3, None), (False, (40, 40), -50, None, 7),
    (True, (0, None), 3, 0, 0),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_tile_ranges_of_windows_offsets_lengths(variant):
  """kv_tiles and q_tiles, with traced per-batch positions, against the dense mask."""
  is_causal, window, offset, q_len, kv_len = variant
  for t, s, bq, bkv in itertools.product([1, 17, 64, 100], [1, 23, 64, 130], [16, 32],
                                         [16, 64]):
    spec = MaskSpec(t, s, is_causal, window=window, dynamic_offset=True,
                    q_lengths=q_len is not None, kv_lengths=kv_len is not None)
    pos = spec.batch_positions(jnp.int32(offset),
                               None if q_len is None else jnp.int32(q_len),
                               None if kv_len is None else jnp.int32(kv_len))
    nq, nkv = -(-t // bq), -(-s // bkv)
    lq, lk = min(t if q_len is None else q_len, t), min(s if kv_len is None else kv_len, s)
    vis = _dense_variants(t, s, nq * bq, nkv * bkv, is_causal, window, offset, lq, lk)
    for i in range(nq):
      rows = vis[i * bq:(i + 1) * bq]
      any_visible = rows.reshape(bq, nkv, bkv).any(axis=(0, 2))
      real = rows[: max(0, min(bq, lq - i * bq))].reshape(-1, nkv, bkv)
      needs_all = real.all(axis=(0, 2)) & (np.arange(nkv) * bkv + bkv <= s)
      _check_tiles(spec.kv_tiles(jnp.int32(i * bq), bq, bkv, pos), any_visible, needs_all)
    for j in range(nkv):
      cols = vis[:, j * bkv:(j + 1) * bkv]
      any_visible = cols.reshape(nq, bq, bkv).any(axis=(1, 2))
      # Rows past the query length are padding: the backward pass gives them lse = +inf,
      # so their probabilities are 0 without a mask.
      real = cols[:, : max(0, min(bkv, s - j * bkv))] | (np.arange(nq * bq) >= lq)[:, None]
      needs_all = real.reshape(nq, bq, -1).all(axis=(1, 2)) & (np.arange(nq) * bq + bq <= t)
      _check_tiles(spec.q_tiles(jnp.int32(j * bkv), bkv, bq, pos), any_visible, needs_all)


def _check_tiles(tiles, any_visible, needs_all):
  """Exactly the tiles with a visible entry are visited; unmasked ones are fully visible."""
  lo, full_lo, full_hi, hi = (int(x) for x in tiles)
  assert 0 <= lo <= full_lo <= full_hi <= hi <= len(any_visible), tiles
  visited = np.zeros(len(any_visible), bool)
  visited[lo:hi] = True
  np.testing.assert_array_equal(visited, any_visible)
  assert all(needs_all[j] for j in range(full_lo, full_hi)), (tiles, needs_all)
  # Fully visible tiles are run unmasked, except at most one at each end of the run.
  masked = [j for j in range(lo, hi) if not full_lo <= j < full_hi]
  assert sum(needs_all[j] for j in masked) <= 2, (tiles, needs_all)


@pytest.mark.parametrize("window", [None, (3, 0), (None, 5), (7, 2)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_visible_within_extents(is_causal, window):
  """`extents` (the padded T, S a kernel's indices stay within) drops only the length
  compares that no index can fail: the same mask wherever and however padded, and no
  length compare left when T and S fill their extents."""
  for t, s, offset in itertools.product([5, 16, 64], [7, 16, 64], [0, 3]):
    spec = MaskSpec(t, s, is_causal, window=window, q_offset=offset)
    for t_pad, s_pad in ((t, s), (-(-t // 16) * 16, -(-s // 16) * 16), (t + 32, s + 32)):
      q_pos, kv_pos = jnp.arange(t_pad)[:, None], jnp.arange(s_pad)[None, :]
      np.testing.assert_array_equal(
          np.asarray(spec.visible(q_pos, kv_pos, extents=(t_pad, s_pad))),
          _dense(spec, t_pad, s_pad), err_msg=f"{spec} extents {(t_pad, s_pad)}")
    jaxpr = str(jax.make_jaxpr(lambda q, k, spec=spec: spec.visible(q, k, extents=(t, s)))(
        jnp.arange(t)[:, None], jnp.arange(s)[None, :]))
    assert " lt " not in jaxpr, jaxpr
