"""Preference feedback: the labels drawn from an oracle's probabilities, one function for every tier.

Every environment computes ``P(a1 ≻ a2)`` for each duel of a round — tiers 1 and 2 from a link on
exact rewards (:mod:`cdb.environments.links`), tier 3 from a host-side oracle
(:mod:`cdb.environments.llm.oracles`) — and draws the label the agent sees with
:func:`preference_labels`; :func:`preference_feedback` keeps the labels of the queried rows only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cdb import rng
from cdb.types import Feedback
from cdb.validation import check_choice

Array = jax.Array

LABEL_MODES = ("sample", "deterministic")


@functools.partial(jax.jit, static_argnames="mode")
def preference_labels(key: Array, probability: Array, mode: str = "sample", noise: float | Array = 0.0) -> Array:
    """Binary labels ``z`` ``[N]`` float32 (1.0: the first response won) from ``P(a ≻ b)`` ``[N]``.

    * ``mode='sample'``: ``z ~ Bernoulli(P)``;
    * ``mode='deterministic'``: ``z = 1[P > ½]``, a tie ``P = ½`` broken by a fair coin;
    * ``noise = ε``: each label is then flipped with probability ``ε`` (symmetric label noise).

    With ``q = P`` (sample) or ``q = 1[P > ½] + ½·1[P = ½]`` (deterministic), the label flipped
    with probability ε is ``Bernoulli(ε + (1 − 2ε) q)``, drawn as ``z = 1[u_i < ε + (1 − 2ε) q_i]``
    from one uniform ``u`` ``[N]`` of ``key``: row ``i``'s label does not depend on the others, and
    without noise ``z = 1[u < P]``. Pure and deterministic in ``key``. Jitted (``mode`` static,
    ``noise`` traced): one compiled program per batch size.
    """
    check_choice("preference_labels", "mode", mode, LABEL_MODES)
    probability = jnp.asarray(probability, jnp.float32)
    if mode == "deterministic":
        probability = jnp.where(probability == 0.5, 0.5, (probability > 0.5).astype(jnp.float32))
    noise = jnp.asarray(noise, jnp.float32)
    return (rng.uniform(key, probability.shape) < noise + (1 - 2 * noise) * probability).astype(jnp.float32)


def preference_feedback(
    key: Array, probability: Array, query: Array, mode: str = "sample", noise: float | Array = 0.0
) -> Feedback:
    """A round's :class:`~cdb.types.Feedback`: :func:`preference_labels` where ``query`` is True, 0 elsewhere.

    The labels of all ``B`` rows are drawn, so a row's label does not depend on which others are queried.

    Args:
      key: PRNG key.
      probability: ``[B]`` float, ``P(a1 ≻ a2)`` per row.
      query: ``[B]`` bool, which rows are sent to the oracle.
      mode, noise: as for :func:`preference_labels`.
    """
    query = jnp.asarray(query, bool)
    labels = preference_labels(key, probability, mode, noise)
    return Feedback(preference=jnp.where(query, labels, 0.0), queried=query)
