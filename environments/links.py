"""Link functions: how a latent reward gap becomes a preference probability.

``P(a1 ≻ a2) = F(scale · (r1 − r2))`` with

* ``'bradley_terry'``  F = σ (logistic), the Bradley–Terry model of DPO / RLHF;
* ``'probit'``         F = Φ (standard normal CDF), the Thurstone model;
* ``'deterministic'``  F(z) = 1[z > 0] + ½·1[z = 0]: the better arm always wins, ties are a fair coin.

Every link gives exactly ½ when ``r1 == r2`` (in particular when an arm duels itself), and
``scale = 0`` makes every duel a fair coin. ``scale`` is the inverse temperature of the oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

LINKS = ("bradley_terry", "probit", "deterministic")


def preference_probability(link: str, scale: Array | float, r1: Array, r2: Array) -> Array:
    """``P(a1 ≻ a2) = F(scale · (r1 − r2))`` elementwise, as float32.

    Args:
      link: one of :data:`LINKS` (static).
      scale: non-negative inverse temperature (scalar or broadcastable to ``r1``).
      r1: latent reward of the first arm, any shape.
      r2: latent reward of the second arm, same shape as ``r1``.

    Returns:
      probabilities in ``[0, 1]``, the broadcast shape of the inputs; exactly ½ where ``r1 == r2``.
    """
    z = jnp.asarray(scale, jnp.float32) * (jnp.asarray(r1, jnp.float32) - jnp.asarray(r2, jnp.float32))
    if link == "bradley_terry":
        return jax.nn.sigmoid(z)
    if link == "probit":
        return jax.scipy.stats.norm.cdf(z).astype(jnp.float32)
    if link == "deterministic":
        return jnp.where(z > 0, 1.0, jnp.where(z < 0, 0.0, 0.5)).astype(jnp.float32)
    raise ValueError(f"link={link!r} is not allowed; expected one of {LINKS}")
