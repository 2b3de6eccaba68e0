"""The key schedule of ``cdb.run``: which key each step of an experiment gets.

From the run's ``key`` (an int, a typed JAX key or raw key data; :func:`as_key`)::

    k_s       = split(key, seeds)[s]                              # seed s        (seed_keys)
    reset     = fold_in(k_s, RESET)                               # env.reset     (reset_key)
    init      = fold_in(k_s, INIT)                                # agent.init    (init_key)
    k_s,t     = fold_in(fold_in(k_s, ROUNDS), t)                  # round t       (stage_key)
    select, step, update = split(k_s,t, 3)                        #               (round_keys)
    k_s,i     = fold_in(fold_in(k_s, EVAL), i)                    # evaluation i  (stage_key)
    recommend, evaluate  = split(k_s,i, 2)                        #               (eval_keys)

with the stages ``RESET, INIT, ROUNDS, EVAL = 0, 1, 2, 3``. Round ``t`` counts from 0 (the
first round played is ``t = 0``); evaluation ``i = 0`` is the one before any round and ``i = n``
the one after the ``n``-th block of ``eval_every`` rounds. A round's key depends only on the
seed's key and ``t``, so results do not depend on how a run is cut into blocks, resumed or split
by ``seed_range``; folding the stage in first keeps round ``t``'s key apart from evaluation
``t``'s and from the reset and init keys.

The runners carry each seed's key as raw ``uint32`` key data (checkpoints need no typed-key
support), so :func:`stage_key`, :func:`round_keys` and :func:`eval_keys` take that data and the
PRNG's name ``impl`` (``str(jax.random.key_impl(key))``). Code that replays a run's randomness
outside ``cdb.run`` (e.g. :mod:`cdb.agents.optimal_design`) uses these functions, so it meets the
very problem instance ``cdb.run`` gives each seed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

RESET, INIT, ROUNDS, EVAL = range(4)

#: ``jax.random.key_data(jax.random.key(0)).shape`` for JAX's default PRNG, threefry.
KEY_DATA_SHAPE = (2,)

__all__ = [
    "EVAL",
    "INIT",
    "KEY_DATA_SHAPE",
    "RESET",
    "ROUNDS",
    "as_key",
    "eval_keys",
    "init_key",
    "reset_key",
    "round_keys",
    "seed_keys",
    "stage_key",
]


def as_key(key: Any, caller: str = "run") -> Array:
    """One typed PRNG key from ``cdb.run``'s ``key`` argument, or a ``ValueError`` naming ``key``.

    Accepts an int in ``[0, 2**32)`` (JAX's default PRNG), one typed key of any PRNG, or the raw
    ``uint32`` data of one default key, shape :data:`KEY_DATA_SHAPE`. ``caller`` names the function
    in the error.
    """
    allowed = (
        "expected an int in [0, 2**32), one typed JAX key (jax.random.key(n)) or the raw uint32 key "
        f"data of one key, shape {KEY_DATA_SHAPE}"
    )
    if isinstance(key, bool | np.bool_):
        raise ValueError(f"{caller}: key={key!r} is a bool; {allowed}")
    if isinstance(key, int | np.integer):
        # JAX without x64 keeps only the low 32 bits of a seed: 2**32 would silently be seed 0
        if not 0 <= int(key) < 2**32:
            raise ValueError(f"{caller}: key={key!r} is out of range; {allowed}")
        return jax.random.key(int(key))
    if isinstance(key, np.ndarray | jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"{caller}: key is a batch of keys of shape {key.shape}; {allowed}")
            return key
        if key.dtype == np.uint32 and key.shape == KEY_DATA_SHAPE:
            return jax.random.wrap_key_data(jnp.asarray(key))
        raise ValueError(f"{caller}: key is an array of shape {key.shape} and dtype {key.dtype}; {allowed}")
    raise ValueError(f"{caller}: key={key!r} of type {type(key).__name__} is not a key; {allowed}")


def seed_keys(key: Any, seeds: int, caller: str = "run") -> Array:
    """The ``[seeds]`` typed per-seed keys of a run: ``k_s = split(as_key(key), seeds)[s]``."""
    return jax.random.split(as_key(key, caller), seeds)


def reset_key(seed_key: Array) -> Array:
    """The key of ``env.reset`` for one seed: ``fold_in(k_s, RESET)`` (typed ``seed_key``)."""
    return jax.random.fold_in(seed_key, RESET)


def init_key(seed_key: Array) -> Array:
    """The key of ``agent.init`` for one seed: ``fold_in(k_s, INIT)`` (typed ``seed_key``)."""
    return jax.random.fold_in(seed_key, INIT)


def stage_key(seed_key_data: Array, stage: int, index: Any, impl: str) -> Array:
    """``fold_in(fold_in(k_s, stage), index)``: the key of round or evaluation ``index`` of one seed.

    Args:
      seed_key_data: the seed's raw key data (``jax.random.key_data(k_s)``).
      stage: :data:`ROUNDS` or :data:`EVAL`.
      index: the round ``t`` or the evaluation ``i`` (an int or an int32 scalar, traced or not).
      impl: the PRNG's name, ``str(jax.random.key_impl(k_s))``.
    """
    seed_key = jax.random.wrap_key_data(seed_key_data, impl=impl)
    return jax.random.fold_in(jax.random.fold_in(seed_key, stage), index)


def round_keys(seed_key_data: Array, t: Any, impl: str) -> Array:
    """Round ``t``'s ``[3]`` keys, ``(select, env.step, update) = split(stage_key(k_s, ROUNDS, t), 3)``."""
    return jax.random.split(stage_key(seed_key_data, ROUNDS, t, impl), 3)


def eval_keys(seed_key_data: Array, i: Any, impl: str) -> Array:
    """Evaluation ``i``'s ``[2]`` keys, ``(recommend, env.evaluate) = split(stage_key(k_s, EVAL, i), 2)``."""
    return jax.random.split(stage_key(seed_key_data, EVAL, i, impl), 2)
