"""Fused dropout in `jflash.attention`: the keep mask the kernels apply, its statistics,
determinism, and validation. (The hash itself: test_dropout_hash.py; dropout against the
dense oracle, alone and combined: test_variants.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jflash
from dropout_numpy import head_seeds_np, keep_np

from conftest import IMPLEMENTATIONS, interpret_for

B, N, T = 2, 2, 64


def _probe(rate, key, implementation, causal=False):
  """Attention whose output is the keep mask itself: q = k = 0 gives p = 1/S (1/(i+1)
  causal), v = identity, so out[b, i, n, j] * S (1 - rate) = keep[b, n, i, j]."""
  q = jnp.zeros((B, T, N, T), jnp.float32)
  v = jnp.broadcast_to(jnp.eye(T, dtype=jnp.float32)[None, :, None, :], (B, T, N, T))
  out = jflash.attention(q, q, v, dropout_rate=rate, dropout_rng=key, is_causal=causal,
                         implementation=implementation,
                         interpret=interpret_for(implementation))
  width = (jnp.arange(T) + 1.0)[None, :, None, None] if causal else float(T)
  return np.asarray(jnp.round(out * width * (1 - rate)).astype(jnp.int32)).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_kernels_apply_the_hash_mask_exactly(rate, implementation):
  """The mask recovered from the output is bitwise the independent NumPy hash's."""
  key = jax.random.key(42)
  got = _probe(rate, key, implementation)
  want = keep_np(head_seeds_np(np.asarray(jax.random.key_data(key)), B, N), T, T, rate)
  np.testing.assert_array_equal(got, want.astype(np.int32))
  causal = _probe(rate, key, implementation, causal=True)
  lower = np.tril(np.ones((T, T), bool))
  np.testing.assert_array_equal(np.where(lower, causal, 0), np.where(lower, want, 0))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_keep_rate_and_independence(implementation):
  rate = 0.3
  masks = np.stack([_probe(rate, jax.random.key(s), implementation) for s in range(4)])
  n = masks.size
  kept = masks.mean()
  assert abs(kept - (1 - rate)) <= 5 * np.sqrt(rate * (1 - rate) / n), kept
  # Different keys, heads and batch rows give different masks.
  assert not np.array_equal(masks[0], masks[1])
  assert not np.array_equal(masks[0, :, 0], masks[0, :, 1])
  assert not np.array_equal(masks[0, 0], masks[0, 1])


def test_dropout_is_unbiased():
  """Averaged over keys, dropped attention converges to attention without dropout."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 32, 2, 16)), jnp.float32) for _ in range(3))
  plain = jflash.attention(q, k, v, implementation="xla")
  rate, keys = 0.4, 256
  f = jax.jit(jax.vmap(lambda key: jflash.attention(q, k, v, dropout_rate=rate,
                                                    dropout_rng=key, implementation="xla")))
  outs = np.asarray(f(jax.random.split(jax.random.key(1), keys)))
  mean, sem = outs.mean(0), outs.std(0) / np.sqrt(keys)
  z = np.abs(mean - np.asarray(plain)) / np.maximum(sem, 1e-6)
  assert np.mean(z < 3) > 0.97 and z.max() < 6, (np.mean(z < 3), z.max())


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_same_key_same_bits(implementation):
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(B, 40, N, 16)), jnp.bfloat16) for _ in range(3))

  def grads(key):
    f = lambda q, k, v: jflash.attention(  # noqa: E731
        q, k, v, dropout_rate=0.2, dropout_rng=key, is_causal=True,
        implementation=implementation, interpret=interpret_for(implementation)).astype(
            jnp.float32).sum()
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)

  a, b, c = grads(jax.random.key(5)), grads(jax.random.key(5)), grads(jax.random.key(6))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
  assert not np.array_equal(np.asarray(a[0], np.float32), np.asarray(c[0], np.float32))


_Q = jnp.zeros((2, 8, 4, 16), jnp.float32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dropout_rate=1.0, dropout_rng=jax.random.key(0)), "dropout_rate=1.0"),
    (dict(dropout_rate=-0.1, dropout_rng=jax.random.key(0)), "dropout_rate=-0.1"),
    (dict(dropout_rate="0.1", dropout_rng=jax.random.key(0)), "dropout_rate='0.1'"),
    (dict(dropout_rate=0.1), "dropout_rate=0.1 needs a dropout_rng"),
    (dict(dropout_rate=0.1, dropout_rng=jnp.zeros((3,), jnp.float32)), "shape"),
])
def test_bad_dropout_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    jflash.attention(_Q, _Q, _Q, implementation="xla", **kwargs)
