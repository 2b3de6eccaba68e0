"""Preference losses.

``bradley_terry_nll`` trains reward models; the direct-alignment (DAP) family trains policies.
All functions are pure, unbatched in spirit (they act elementwise) and jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def bradley_terry_nll(score_first: Array, score_second: Array, label: Array) -> Array:
    """Bradley–Terry negative log-likelihood, elementwise.

    With Δ = r(first) − r(second) and z = 1 when the first arm won,
    ``−[z log σ(Δ) + (1 − z) log σ(−Δ)]`` (Bradley & Terry, 1952). Numerically stable via
    ``log_sigmoid``; ``z`` may be soft (in [0, 1]).
    """
    delta = score_first - score_second
    return -(label * jax.nn.log_sigmoid(delta) + (1.0 - label) * jax.nn.log_sigmoid(-delta))
