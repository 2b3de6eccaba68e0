"""``cdb.rng``: words from both outputs of every hash, uniform small integers, the exclusion map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb import rng


@pytest.mark.parametrize("n", [1, 2, 7, 32, 4096])
def test_uniform_below_is_in_range_and_uniform(n):
    draws = np.asarray(rng.uniform_below(jax.random.key(0), (200_000,), n))
    assert draws.dtype == np.int32
    assert draws.min() >= 0 and draws.max() <= n - 1
    if n > 1:
        counts = np.bincount(draws, minlength=n)
        expected = len(draws) / n
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        # the 0.999 quantile of chi-square with n - 1 degrees of freedom is below n - 1 + 6 sqrt(n) + 10
        assert chi2 < n - 1 + 6 * np.sqrt(n) + 10, chi2


def test_below_reduces_words_modulo_n():
    bits = jnp.array([0, 6, 7, 2**32 - 1], jnp.uint32)
    np.testing.assert_array_equal(rng.below(bits, 7), [0, 6, 0, (2**32 - 1) % 7])


def test_below_except_maps_onto_the_other_values():
    for exclude in range(5):
        mapped = np.asarray(rng.below_except(jnp.arange(4, dtype=jnp.uint32), 5, exclude))
        assert sorted(mapped) == [v for v in range(5) if v != exclude]


def test_same_key_same_draws_and_different_keys_differ():
    a = rng.uniform_below(jax.random.key(1), (64,), 10)
    b = rng.uniform_below(jax.random.key(1), (64,), 10)
    c = rng.uniform_below(jax.random.key(2), (64,), 10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


SHAPES = [(), (1,), (7,), (4, 10), (3, 2, 5)]


@pytest.mark.skipif(not hasattr(jax, "threefry_partitionable"), reason="this JAX has one threefry layout only")
@pytest.mark.parametrize("shape", SHAPES)
def test_draws_equal_jax_random_with_both_words_of_each_hash(shape):
    # the independent computation: JAX's own draws in its non-partitionable threefry layout
    key = jax.random.key(3)
    with jax.threefry_partitionable(False):
        bits = jax.random.bits(key, shape)
        uniform, normal = jax.random.uniform(key, shape), jax.random.normal(key, shape)
    np.testing.assert_array_equal(rng.bits(key, shape), bits)
    np.testing.assert_array_equal(rng.uniform(key, shape), uniform)
    np.testing.assert_array_equal(rng.normal(key, shape), normal)
    np.testing.assert_array_equal(rng.bits(jax.random.key_data(key), shape), bits)  # raw key data


def test_draws_are_the_same_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(4), 3)
    eager = np.stack([np.asarray(rng.normal(k, (4, 8))) for k in keys])
    np.testing.assert_array_equal(jax.jit(jax.vmap(lambda k: rng.normal(k, (4, 8))))(keys), eager)


def test_other_prngs_draw_as_jax_random_does():
    key = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(rng.bits(key, (6,)), jax.random.bits(key, (6,)))


def test_without_the_layout_flag_draws_keep_jax_default_layout(monkeypatch):
    monkeypatch.setattr(rng, "_PARTITIONABLE", None)  # as on a JAX that has dropped the flag
    key = jax.random.key(6)
    np.testing.assert_array_equal(rng.bits(key, (6,)), jax.random.bits(key, (6,)))
    np.testing.assert_array_equal(rng.normal(key, (6,)), jax.random.normal(key, (6,)))
