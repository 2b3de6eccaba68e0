"""Reward-model features of a (prompt, response) pair, for the epistemic ensemble (pluggable).

A feature map is a callable ``(ref_scores, prompts [N, Lp], responses [N, L]) -> [N, D]`` where
``ref_scores`` is the frozen reference policy's teacher-forced pass (:class:`cdb.sequences.ResponseScores`).

* :func:`reference_hidden_features` (default, as in SEA / Oat): π_ref's last hidden state at the
  last token of ``(x, y)``.
* :class:`ChainCountFeatures`: co-occurrence counts in which :class:`~cdb.environments.SequenceDuel`'s
  gold reward is exactly linear (``r*(x, y) = Σ_s Σ_t M[x_s, t, y_t] + Σ_t U[y_{t−1}, y_t]``),
  for ablations that separate exploration from representation learning.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cdb.sequences import ResponseScores
from cdb.validation import check_int

Array = jax.Array


def reference_hidden_features(ref: ResponseScores, prompts: Array, responses: Array) -> Array:
    """π_ref's last (normed) hidden state at the last token of ``(x, y)``, ``[N, D]``."""
    return ref.last_hidden


@dataclasses.dataclass(frozen=True)
class ChainCountFeatures:
    """Reward-realizable features for a chain reward over ``vocab_size`` tokens.

    ``φ(x, y) = [ vec_{u,t,v} #{s : x_s = u}·1[y_t = v] ,  vec_{u,v} #{t : y_{t−1} = u, y_t = v} ]``,
    dimension ``V·L·V + V²``. Any reward of the form ``Σ_s Σ_t M[x_s, t, y_t] + Σ_t U[y_{t−1}, y_t]``
    is linear in φ — in particular SequenceDuel's gold reward, whose unary table is linear in a
    bag-of-tokens prompt embedding.
    """

    vocab_size: int

    def __post_init__(self):
        check_int(self, "vocab_size", self.vocab_size, low=2)

    def __call__(self, ref: ResponseScores | None, prompts: Array, responses: Array) -> Array:
        v = self.vocab_size
        prompt_counts = jnp.sum(jax.nn.one_hot(prompts, v), axis=1)  # [N, V]
        response_onehot = jax.nn.one_hot(responses, v)  # [N, L, V]
        unary = jnp.einsum("nu,ntv->nutv", prompt_counts, response_onehot).reshape(prompts.shape[0], -1)
        bigram = jnp.einsum("ntu,ntv->nuv", response_onehot[:, :-1], response_onehot[:, 1:]).reshape(
            prompts.shape[0], -1
        )
        return jnp.concatenate([unary, bigram], axis=-1).astype(jnp.float32)
