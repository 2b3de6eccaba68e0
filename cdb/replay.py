"""A fixed-size ring buffer of preference pairs, as a pytree (jit / vmap / scan friendly).

Reward models train on *real oracle pairs only* (docs/design.md §6): the caller adds the pairs of a
round with ``mask = feedback.queried`` and every unqueried row is dropped::

    buffer = init_buffer(capacity=4096, feature_dim=d)
    buffer = add(buffer, first, second, label, mask)            # [B, d], [B, d], [B], [B]
    first, second, label, weight = sample(key, buffer, 64)      # [64, d], [64, d], [64], [64]
    first, second, label, weight = sample_without_replacement(key, buffer, 64)   # 64 distinct pairs

Shapes never depend on how many rows were masked, so ``add`` and ``sample`` compile once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class ReplayBuffer:
    """Ring buffer of ``(first, second, label)`` preference pairs.

    Attributes:
      first: ``[N, d]`` features of the first arm of each stored pair.
      second: ``[N, d]`` features of the second arm.
      label: ``[N]`` float32, 1.0 if the first arm won.
      size: int32 scalar, number of valid entries (``<= N``).
      pointer: int32 scalar, slot the next pair is written to.
    """

    first: Array
    second: Array
    label: Array
    size: Array
    pointer: Array

    @property
    def capacity(self) -> int:
        """N, the number of slots (static)."""
        return self.label.shape[-1]


def init_buffer(capacity: int, feature_dim: int) -> ReplayBuffer:
    """An empty buffer with ``capacity`` slots of ``feature_dim`` features."""
    capacity, feature_dim = int(capacity), int(feature_dim)
    if capacity < 1:
        raise ValueError(f"init_buffer capacity={capacity!r} is out of range; expected an integer >= 1")
    if feature_dim < 1:
        raise ValueError(f"init_buffer feature_dim={feature_dim!r} is out of range; expected an integer >= 1")
    return ReplayBuffer(
        first=jnp.zeros((capacity, feature_dim), jnp.float32),
        second=jnp.zeros((capacity, feature_dim), jnp.float32),
        label=jnp.zeros((capacity,), jnp.float32),
        size=jnp.zeros((), jnp.int32),
        pointer=jnp.zeros((), jnp.int32),
    )


def add(buffer: ReplayBuffer, first: Array, second: Array, label: Array, mask: Array) -> ReplayBuffer:
    """Appends the rows with ``mask`` True, in order, overwriting the oldest when full.

    Args:
      buffer: the buffer.
      first, second: ``[B, d]`` arm features.
      label: ``[B]`` preference, 1.0 if ``first`` won.
      mask: ``[B]`` bool; rows with False are not stored.

    Row ``i`` with ``mask[i]`` goes to slot ``(pointer + cumsum(mask)[i] − 1) mod N``. When more
    than ``N`` rows are masked in one call only the last ``N`` are kept (as a sequential append
    would), so no two rows write to the same slot. Unmasked rows scatter to the out-of-range
    slot ``N`` and are dropped.
    """
    n_slots = buffer.capacity
    mask = jnp.asarray(mask, bool)
    rank = jnp.cumsum(mask.astype(jnp.int32)) - 1  # position of each masked row among masked rows
    count = jnp.sum(mask, dtype=jnp.int32)
    keep = mask & (rank >= count - n_slots)
    slot = jnp.where(keep, (buffer.pointer + rank) % n_slots, n_slots)

    def put(store, rows):
        return store.at[slot].set(rows.astype(store.dtype), mode="drop")

    return ReplayBuffer(
        first=put(buffer.first, jnp.asarray(first)),
        second=put(buffer.second, jnp.asarray(second)),
        label=put(buffer.label, jnp.asarray(label)),
        size=jnp.minimum(buffer.size + count, n_slots).astype(jnp.int32),
        pointer=((buffer.pointer + count) % n_slots).astype(jnp.int32),
    )


def sample(key: Array, buffer: ReplayBuffer, batch_size: int) -> tuple[Array, Array, Array, Array]:
    """Draws ``batch_size`` pairs uniformly, with replacement, among the ``size`` valid entries.

    Returns:
      ``(first [b, d], second [b, d], label [b], weight [b])``. ``weight`` is 1.0 for every row,
      or 0.0 for every row when the buffer is empty (the rows are then slot 0's zeros), so a
      loss weighted by it is 0 and its gradients vanish.
    """
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    weight = jnp.full((batch_size,), (buffer.size > 0).astype(jnp.float32))
    return buffer.first[idx], buffer.second[idx], buffer.label[idx], weight


def sample_without_replacement(key: Array, buffer: ReplayBuffer, batch_size: int) -> tuple[Array, Array, Array, Array]:
    """Draws ``batch_size`` distinct pairs, a uniformly random subset of the ``size`` valid entries.

    Every subset of ``batch_size`` valid slots is equally likely (the ``batch_size`` smallest of
    i.i.d. uniform keys, one per valid slot, via ``lax.top_k``), as a minibatch drawn without
    replacement from the stored pairs. ``batch_size`` must not exceed the capacity.

    Returns:
      ``(first [b, d], second [b, d], label [b], weight [b])`` in a random order. When fewer than
      ``batch_size`` entries are valid, every valid entry is drawn once and the remaining rows are
      empty slots with ``weight`` 0.0 (1.0 for the valid rows).
    """
    if not 1 <= batch_size <= buffer.capacity:
        raise ValueError(
            f"sample_without_replacement batch_size={batch_size!r} is out of range; "
            f"expected an integer in [1, {buffer.capacity}] (the buffer's capacity)"
        )
    valid = jnp.arange(buffer.capacity) < buffer.size
    # invalid slots get a priority below every valid one, so they are drawn only to fill the batch
    priority = jnp.where(valid, jax.random.uniform(key, (buffer.capacity,)), -1.0)
    _, idx = jax.lax.top_k(priority, batch_size)
    weight = valid[idx].astype(jnp.float32)
    return buffer.first[idx], buffer.second[idx], buffer.label[idx], weight
