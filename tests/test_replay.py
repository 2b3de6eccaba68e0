"""Replay buffer: add / wrap / mask semantics against a plain Python reference, and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb import replay

CAP, D = 5, 2
add_jit = jax.jit(replay.add)
sample_jit = jax.jit(replay.sample, static_argnums=2)


class ListBuffer:
    """Reference ring buffer: one row at a time, in order."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.rows = [None] * capacity
        self.size = 0
        self.pointer = 0

    def add(self, first, second, label, mask):
        for f, s, z, m in zip(first, second, label, mask, strict=True):
            if m:
                self.rows[self.pointer] = (f, s, z)
                self.pointer = (self.pointer + 1) % self.capacity
                self.size = min(self.size + 1, self.capacity)


def _rows(rng, b, start):
    first = (start + np.arange(b, dtype=np.float32))[:, None] * np.ones((1, D), np.float32)
    second = -first
    label = rng.integers(0, 2, b).astype(np.float32)
    return first, second, label


def _assert_same(buffer, ref):
    assert int(buffer.size) == ref.size
    assert int(buffer.pointer) == ref.pointer
    for slot in range(ref.size):
        f, s, z = ref.rows[slot]
        np.testing.assert_array_equal(np.asarray(buffer.first[slot]), f)
        np.testing.assert_array_equal(np.asarray(buffer.second[slot]), s)
        assert float(buffer.label[slot]) == z


def test_init_buffer_is_empty():
    buffer = replay.init_buffer(CAP, D)
    assert buffer.capacity == CAP
    assert buffer.first.shape == (CAP, D) and buffer.second.shape == (CAP, D)
    assert buffer.label.shape == (CAP,) and buffer.label.dtype == jnp.float32
    assert int(buffer.size) == 0 and int(buffer.pointer) == 0
    assert buffer.size.dtype == jnp.int32 and buffer.pointer.dtype == jnp.int32


@pytest.mark.parametrize("capacity, feature_dim", [(0, 2), (3, 0)])
def test_init_buffer_rejects_bad_sizes(capacity, feature_dim):
    with pytest.raises(ValueError, match="capacity|feature_dim"):
        replay.init_buffer(capacity, feature_dim)


def test_add_matches_list_reference_with_masks_and_wraparound():
    rng = np.random.default_rng(0)
    buffer, ref = replay.init_buffer(CAP, D), ListBuffer(CAP)
    start = 1
    for _ in range(6):  # 6 rounds of 3 rows: wraps around several times
        first, second, label = _rows(rng, 3, start)
        start += 3
        mask = rng.random(3) < 0.6
        buffer = add_jit(buffer, first, second, label, mask)
        ref.add(first, second, label, mask)
        _assert_same(buffer, ref)
    assert ref.size == CAP  # the sequence did fill the buffer


def test_add_more_masked_rows_than_capacity_keeps_the_last_ones():
    rng = np.random.default_rng(1)
    buffer, ref = replay.init_buffer(CAP, D), ListBuffer(CAP)
    first, second, label = _rows(rng, 2, 1)
    mask = np.array([True, True])
    buffer = replay.add(buffer, first, second, label, mask)
    ref.add(first, second, label, mask)
    first, second, label = _rows(rng, 8, 10)
    mask = np.array([True, False, True, True, True, True, False, True])  # 6 masked > CAP
    buffer = replay.add(buffer, first, second, label, mask)
    ref.add(first, second, label, mask)
    _assert_same(buffer, ref)
    stored = sorted(float(v) for v in np.asarray(buffer.first[:, 0]))
    assert stored == [12.0, 13.0, 14.0, 15.0, 17.0]


def test_add_with_no_mask_changes_nothing():
    rng = np.random.default_rng(2)
    buffer = replay.add(replay.init_buffer(CAP, D), *_rows(rng, 3, 1), np.array([True, False, True]))
    after = add_jit(buffer, *_rows(rng, 3, 50), np.zeros(3, bool))
    for a, b in zip(jax.tree.leaves(buffer), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sample_is_uniform_over_valid_entries_only():
    rng = np.random.default_rng(3)
    buffer = replay.init_buffer(CAP, D)
    buffer = replay.add(buffer, *_rows(rng, 3, 1), np.ones(3, bool))  # rows 1, 2, 3 in slots 0-2
    first, second, label, weight = sample_jit(jax.random.key(0), buffer, 300)
    assert first.shape == (300, D) and second.shape == (300, D) and label.shape == (300,)
    np.testing.assert_array_equal(np.asarray(weight), np.ones(300, np.float32))
    ids = np.asarray(first[:, 0])
    assert set(ids.tolist()) == {1.0, 2.0, 3.0}  # every valid entry, never an empty slot
    counts = np.array([(ids == v).sum() for v in (1.0, 2.0, 3.0)])
    assert counts.min() > 60  # roughly uniform (expected 100 each)
    np.testing.assert_array_equal(np.asarray(second), -np.asarray(first))
    stored_label = dict(
        zip(np.asarray(buffer.first[:3, 0]).tolist(), np.asarray(buffer.label[:3]).tolist(), strict=True)
    )
    assert all(stored_label[i] == z for i, z in zip(ids.tolist(), np.asarray(label).tolist(), strict=True))


def test_sample_from_empty_buffer_has_zero_weight():
    buffer = replay.init_buffer(CAP, D)
    first, second, label, weight = sample_jit(jax.random.key(1), buffer, 4)
    assert first.shape == (4, D)
    np.testing.assert_array_equal(np.asarray(weight), np.zeros(4, np.float32))
    # a loss weighted by it has zero gradient
    grad = jax.grad(lambda w: jnp.sum(weight * (first @ w - label) ** 2))(jnp.ones(D))
    np.testing.assert_array_equal(np.asarray(grad), np.zeros(D))


distinct_jit = jax.jit(jax.vmap(replay.sample_without_replacement, in_axes=(0, None, None)), static_argnums=2)


def _filled(valid, wrap=0):
    """A buffer of ``CAP`` slots holding rows ``1..valid`` (``wrap`` more rows overwrite the oldest)."""
    rng = np.random.default_rng(4)
    n = valid + wrap
    return replay.add(replay.init_buffer(CAP, D), *_rows(rng, n, 1), np.ones(n, bool))


def test_sample_without_replacement_draws_every_subset_equally_often():
    """4 valid slots, batches of 2: each of the C(4, 2) = 6 subsets has probability 1/6."""
    buffer = _filled(4)
    draws = 6000
    first, second, label, weight = distinct_jit(jax.random.split(jax.random.key(5), draws), buffer, 2)
    ids = np.asarray(first[..., 0])  # [draws, 2] row ids
    assert np.all(ids[:, 0] != ids[:, 1])  # never the same pair twice in a minibatch
    np.testing.assert_array_equal(np.asarray(weight), 1.0)
    np.testing.assert_array_equal(np.asarray(second), -np.asarray(first))
    subsets = [tuple(sorted(row)) for row in ids.tolist()]
    expected = {(float(a), float(b)) for a in range(1, 5) for b in range(a + 1, 5)}
    assert set(subsets) == expected
    freq = np.array([subsets.count(s) for s in sorted(expected)]) / draws
    # binomial s.d. of each frequency: sqrt(1/6 · 5/6 / 6000) ≈ 0.005
    np.testing.assert_allclose(freq, 1 / 6, atol=0.025)
    # the order within a minibatch is random too: each stored row comes first in 1/4 of the draws
    np.testing.assert_allclose([np.mean(ids[:, 0] == v) for v in range(1, 5)], 0.25, atol=0.03)
    stored = dict(zip(np.asarray(buffer.first[:4, 0]).tolist(), np.asarray(buffer.label[:4]).tolist(), strict=True))
    assert all(stored[i] == z for i, z in zip(ids.ravel().tolist(), np.asarray(label).ravel().tolist(), strict=True))


def test_sample_without_replacement_from_a_full_wrapped_buffer_uses_every_slot():
    buffer = _filled(CAP, wrap=2)  # rows 1..7 written; slots hold rows 6, 7, 3, 4, 5
    first, *_, weight = distinct_jit(jax.random.split(jax.random.key(6), 200), buffer, CAP)
    np.testing.assert_array_equal(np.asarray(weight), 1.0)
    for row in np.asarray(first[..., 0]):
        assert sorted(row.tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]  # the whole buffer, each slot once


def test_sample_without_replacement_short_buffer_fills_with_zero_weight_rows():
    buffer = _filled(2)
    first, _, _, weight = distinct_jit(jax.random.split(jax.random.key(7), 50), buffer, 4)
    ids, weight = np.asarray(first[..., 0]), np.asarray(weight)
    np.testing.assert_array_equal(weight.sum(axis=1), 2.0)  # both valid rows, once each
    for row, w in zip(ids, weight, strict=True):
        assert sorted(row[w == 1].tolist()) == [1.0, 2.0]
        np.testing.assert_array_equal(row[w == 0], 0.0)  # empty slots


@pytest.mark.parametrize("batch_size", [0, CAP + 1])
def test_sample_without_replacement_rejects_batches_outside_the_capacity(batch_size):
    with pytest.raises(ValueError, match=f"batch_size={batch_size}"):
        replay.sample_without_replacement(jax.random.key(0), replay.init_buffer(CAP, D), batch_size)


def test_vmapped_over_seeds():
    buffers = jax.vmap(lambda _: replay.init_buffer(CAP, D))(jnp.arange(2))
    first = jnp.ones((2, 3, D))
    mask = jnp.array([[True, False, True], [False, False, False]])
    buffers = jax.vmap(replay.add)(buffers, first, -first, jnp.ones((2, 3)), mask)
    np.testing.assert_array_equal(np.asarray(buffers.size), [2, 0])
    keys = jax.random.split(jax.random.key(0), 2)
    *_, weight = jax.vmap(replay.sample, in_axes=(0, 0, None))(keys, buffers, 4)
    np.testing.assert_array_equal(np.asarray(weight), [[1.0] * 4, [0.0] * 4])
