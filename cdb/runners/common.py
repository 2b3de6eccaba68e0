"""What both runners share: the per-seed carry, the stages of the key schedule, the state check.

Randomness: seed ``s`` gets ``k_s = split(key, seeds)[s]``; round ``t`` uses
``fold_in(fold_in(k_s, _ROUNDS), t)`` and evaluation ``i`` ``fold_in(fold_in(k_s, _EVAL), i)``,
so results do not depend on how the run is cut into blocks or resumed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

_RESET, _INIT, _ROUNDS, _EVAL = range(4)


@struct.dataclass
class Carry:
    """Everything one seed's experiment carries from round to round."""

    env_state: Any
    agent_state: Any
    obs: Any
    seed_key: jax.Array  # raw uint32 key data, so checkpoints need no typed-key support


def _stage_key(seed_key: jax.Array, stage: int, index, impl: str) -> jax.Array:
    """The key of one stage (rounds / evaluation) at one index, from a seed's raw key data."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(seed_key, impl=impl), stage), index)


def _state_is_finite(agent_state: Any) -> jax.Array:
    """Whether every floating leaf of one seed's agent state is finite (a scalar bool)."""
    ok = jnp.bool_(True)
    for leaf in jax.tree.leaves(agent_state):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok
