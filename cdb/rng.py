"""Cheap random numbers for code that runs every round for every seed.

A bandit round draws a few dozen small numbers per seed, so the cost of a draw is the number of
hashes it takes, and JAX's defaults spend more hashes than needed:

* ``jax.random.bits`` with threefry keys (``jax_threefry_partitionable``, the default since
  JAX 0.5) runs one Threefry-2x32 hash per 32-bit word and XORs its two output words. A hash
  of a counter pair already gives two independent words, so :func:`bits` takes both: ``n``
  words from ``⌈n/2⌉`` hashes of the counters ``0 … n−1`` (Salmon et al. 2011, "Parallel
  random numbers: as easy as 1, 2, 3"). These are exactly ``jax.random.bits`` under
  ``jax.threefry_partitionable(False)``, JAX's own layout before 0.5, which :func:`bits` sets
  for its draw alone; keys of other PRNGs draw as ``jax.random.bits`` always does.
* ``jax.random.randint`` splits its key and draws two words per integer; :func:`below` reduces
  one word.

:func:`uniform` and :func:`normal` are ``jax.random.uniform`` and ``jax.random.normal`` drawn the
same way.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

Array = jax.Array

# A later JAX may drop the flag (and its old layout); the draws then keep JAX's default layout.
_PARTITIONABLE = getattr(jax, "threefry_partitionable", None)


def _both_words():
    return _PARTITIONABLE(False) if _PARTITIONABLE is not None else contextlib.nullcontext()


def bits(key: Array, shape: tuple[int, ...] = ()) -> Array:
    """``shape`` uniform ``uint32`` words; both words of every Threefry hash (see module doc).

    ``key`` is one key, typed (``jax.random.key``) or raw key data.
    """
    # the flag is read while tracing, so it changes only this draw's layout
    with _both_words():
        return jax.random.bits(key, tuple(shape))


def uniform(key: Array, shape: tuple[int, ...] = ()) -> Array:
    """``float32`` uniform on ``[0, 1)``: ``jax.random.uniform`` on the words of :func:`bits`."""
    with _both_words():
        return jax.random.uniform(key, tuple(shape))


def normal(key: Array, shape: tuple[int, ...] = ()) -> Array:
    """Standard normal ``float32``: ``jax.random.normal`` on the words of :func:`bits`."""
    with _both_words():
        return jax.random.normal(key, tuple(shape))


def below(words: Array, n: int) -> Array:
    """Integers in ``{0, …, n − 1}`` from uniform ``uint32`` words: ``words mod n``.

    Each value has probability within ``n / 2³²`` of ``1/n`` (modulo bias), far below what any
    finite-sample test here can see; ``n`` must be in ``[1, 2³²]``.
    """
    return (words % jnp.uint32(n)).astype(jnp.int32)


def uniform_below(key: Array, shape: tuple[int, ...], n: int) -> Array:
    """``shape`` integers uniform in ``{0, …, n − 1}`` (see :func:`below`) from :func:`bits`."""
    return below(bits(key, shape), n)


def below_except(words: Array, n: int, exclude: Array) -> Array:
    """Integers uniform over ``{0, …, n − 1} \\ {exclude}`` from uniform ``uint32`` words.

    ``r = words mod (n − 1)`` (see :func:`below`), then ``r + [r ≥ exclude]`` maps ``{0, …, n − 2}``
    one-to-one onto the values other than ``exclude``; ``n`` must be ``≥ 2``.
    """
    r = below(words, n - 1)
    return r + (r >= exclude)
