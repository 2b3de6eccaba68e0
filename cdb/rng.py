"""Cheap uniform integers for code that runs every round for every seed.

``jax.random.randint`` splits its key and draws two 32-bit words per integer (three threefry
calls). Selection rules and environments draw a handful of small integers per context and
round, so they take one call of raw words and reduce them here instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def below(bits: Array, n: int) -> Array:
    """Integers in ``{0, …, n − 1}`` from uniform ``uint32`` words: ``bits mod n``.

    Each value has probability within ``n / 2³²`` of ``1/n`` (modulo bias), far below what any
    finite-sample test here can see; ``n`` must be in ``[1, 2³²]``.
    """
    return (bits % jnp.uint32(n)).astype(jnp.int32)


def uniform_below(key: Array, shape: tuple[int, ...], n: int) -> Array:
    """``shape`` integers uniform in ``{0, …, n − 1}`` (see :func:`below`) from one threefry call."""
    return below(jax.random.bits(key, shape), n)


def below_except(bits: Array, n: int, exclude: Array) -> Array:
    """Integers uniform over ``{0, …, n − 1} \\ {exclude}`` from uniform ``uint32`` words.

    ``r = bits mod (n − 1)`` (see :func:`below`), then ``r + [r ≥ exclude]`` maps ``{0, …, n − 2}``
    one-to-one onto the values other than ``exclude``; ``n`` must be ``≥ 2``.
    """
    r = below(bits, n - 1)
    return r + (r >= exclude)
