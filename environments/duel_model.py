"""What the environments with exact rewards (tiers 1 and 2) share about a duel: its parameters,
its exact truth and its checks.

* :class:`DuelParams` — the numeric parameters of an environment (a pytree, so they can be
  vmapped like gymnax params), checked by :func:`check_params`.
* :func:`duel_info` — the metrics-only truth of a batch of duels (rewards and regrets), from
  per-arm rewards.
* :func:`check_duel` — the shape and dtype check of a duel at the API boundary.

The labels of a duel are drawn by :func:`cdb.environments.feedback.preference_feedback`, as in tier 3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cdb.types import Info

Array = jax.Array


@struct.dataclass
class DuelParams:
    """Numeric parameters of a tier-1 environment.

    Attributes:
      scale: inverse temperature of the link, ``P(a1 ≻ a2) = F(scale · (r1 − r2))``; finite, ``>= 0``.
        ``KArmedDuel`` built from an explicit ``preference_matrix`` ignores it.
    """

    scale: Array | float = 1.0


def check_params(owner: object, params: DuelParams) -> None:
    """Raises ``ValueError`` if concrete ``params`` are out of range; traced params are not checked."""
    scale = params.scale
    if isinstance(scale, jax.core.Tracer):
        return
    expected = "expected a number >= 0, finite in float32"
    if isinstance(scale, bool | np.bool_ | str | bytes) or np.asarray(scale).dtype.kind not in "iuf":
        raise ValueError(f"{type(owner).__name__} params.scale={scale!r} is not a number; {expected}")
    # float32 is what the oracle computes in: 1e39 would be inf there
    value = np.asarray(scale, dtype=np.float64)
    if not (np.all(np.isfinite(value)) and np.all(value >= 0) and np.all(value <= np.finfo(np.float32).max)):
        raise ValueError(f"{type(owner).__name__} params.scale={scale!r} is out of range; {expected}")


def duel_info(reward_first: Array, reward_second: Array, best_reward: Array) -> Info:
    """Exact per-duel truth: rewards and the average / weak / strong regret (docs/design.md §1).

    ``regret = best − (r1 + r2)/2``, ``weak_regret = best − max(r1, r2)`` (the better arm's regret),
    ``strong_regret = best − min(r1, r2)`` (the worse arm's regret); all ``[B]`` float32.
    """
    r1 = jnp.asarray(reward_first, jnp.float32)
    r2 = jnp.asarray(reward_second, jnp.float32)
    best = jnp.asarray(best_reward, jnp.float32)
    return {
        "reward_first": r1,
        "reward_second": r2,
        "best_reward": best,
        "regret": best - 0.5 * (r1 + r2),
        "weak_regret": best - jnp.maximum(r1, r2),
        "strong_regret": best - jnp.minimum(r1, r2),
    }


def check_duel(owner: object, arms: Array, query: Array, batch_size: int) -> None:
    """Shape / dtype checks of a duel at the API boundary (trace time)."""
    name = type(owner).__name__
    if tuple(arms.shape) != (batch_size, 2) or not jnp.issubdtype(arms.dtype, jnp.integer):
        raise ValueError(
            f"{name}.step: duel.arms has shape {arms.shape} and dtype {arms.dtype}; "
            f"expected integers of shape ({batch_size}, 2)"
        )
    if tuple(jnp.shape(query)) != (batch_size,):
        raise ValueError(f"{name}.step: duel.query has shape {jnp.shape(query)}; expected ({batch_size},)")
