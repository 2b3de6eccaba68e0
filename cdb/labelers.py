"""Labelers: which pairs go to the oracle, and which are labelled by the agent's own model.

A labeler is called as ``labeler(key, LabelerInputs(pairs, scores, policy_logprob, queries_so_far))``:
it sees the pairs a selector chose (``[B, 2]`` candidate indices), the candidates' scores
``[B, E, M]`` (ensemble members, or one row of implicit rewards), where available the
candidates' log-probabilities under π_θ ``[B, M]``, and the oracle queries made so far; it
returns :class:`Labels`.

Only pairs with ``query=True`` are sent to the oracle and counted as queries. Model-labelled
pairs never reach the oracle (Oat leaks oracle labels there; this library does not).
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from typing import ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from cdb.validation import check_choice, check_float, check_int

Array = jax.Array


@struct.dataclass
class Labels:
    """What happens to each prompt's pair.

    Attributes:
      pairs: ``[B, 2]`` int32 candidate indices of the pair played.
      query: ``[B]`` bool, sent to the oracle (counted as a query).
      model_label: ``[B]`` float32, 1.0 if the first arm is preferred by the model (used where
        ``query`` is False and ``model_trained`` is True; 0.0 elsewhere).
      model_trained: ``[B]`` bool, the policy learns from the model label of an unqueried pair.
    """

    pairs: Array
    query: Array
    model_label: Array
    model_trained: Array


@struct.dataclass
class LabelerInputs:
    """What a labeler may read, for B prompts and M candidates.

    Attributes:
      pairs: ``[B, 2]`` int32, the selector's pair of candidates per prompt.
      scores: ``[B, E, M]`` the scorer's scores (ensemble members, or one row).
      policy_logprob: ``[B, M]`` ``log π_θ`` of the candidates, or ``None`` (unless the labeler needs it).
      queries_so_far: int32 scalar, the oracle queries made before this round.
    """

    pairs: Array
    scores: Array
    policy_logprob: Array | None = None
    queries_so_far: Array | None = None


@runtime_checkable
class Labeler(Protocol):
    """What agents rely on: ``uses_model_labels`` (some pairs are labelled by the scorer's model,
    so the agent needs a scorer that provides one) and the call
    ``(key, LabelerInputs) -> Labels``; ``offline`` (the labeler fills a fixed dataset of pairs, on
    which the policy then trains, as offline DPO)."""

    uses_model_labels: ClassVar[bool]
    needs_policy_logprob: ClassVar[bool]
    offline: ClassVar[bool]

    def __call__(self, key: Array, inputs: LabelerInputs) -> Labels: ...


def _oracle_only(pairs: Array, query: Array) -> Labels:
    batch = pairs.shape[0]
    return Labels(pairs, query, jnp.zeros(batch, jnp.float32), jnp.zeros(batch, bool))


@dataclasses.dataclass(frozen=True)
class OracleLabeler:
    """Every pair goes to the oracle."""

    uses_model_labels: ClassVar[bool] = False
    needs_policy_logprob: ClassVar[bool] = False
    offline: ClassVar[bool] = False

    def __call__(self, key: Array, inputs: LabelerInputs) -> Labels:
        pairs = inputs.pairs
        return _oracle_only(pairs, jnp.ones(pairs.shape[0], bool))


@dataclasses.dataclass(frozen=True)
class QueryBudget:
    """The first ``budget`` pairs go to the oracle, none after (an offline dataset of ``budget`` pairs)."""

    budget: int
    uses_model_labels: ClassVar[bool] = False
    needs_policy_logprob: ClassVar[bool] = False
    offline: ClassVar[bool] = True

    def __post_init__(self):
        check_int(self, "budget", self.budget, low=1)

    def __call__(self, key: Array, inputs: LabelerInputs) -> Labels:
        pairs = inputs.pairs
        position = inputs.queries_so_far + jnp.arange(1, pairs.shape[0] + 1)
        return _oracle_only(pairs, position <= self.budget)


MIXING_DRAWS = ("bernoulli", "fixed_count")


@dataclasses.dataclass(frozen=True)
class MixedLabeler:
    """SEA's mixed preference learning (Liu et al. 2024, §4.3): a fraction γ of the pairs goes to the oracle.

    Which prompts go to the oracle (``draw``):

    * ``'bernoulli'`` — each prompt independently with probability ``gamma``;
    * ``'fixed_count'`` — as the authors run it (Oat 0.2.4, ``ModelBasedExplorer._random_select``):
      exactly ``⌊(1 − γ)·B⌋`` of the B prompts of every batch are model-labelled (Oat's
      ``int(B · max_model_data_ratio)``, a floor), a uniformly random subset drawn with the key
      (Oat shuffles the batch), and the others go to the oracle.

    For the first ``burn_in`` rounds every pair goes to the oracle (Oat's ``burn_in_period``, which
    counts the explorer's calls, one per batch). The labeler sees the oracle queries so far, not the
    round: since every pair of a burn-in round is queried, round ``t < burn_in`` is exactly
    ``queries_so_far < burn_in · B``, so the burn-in is read from ``queries_so_far``.

    A model-labelled pair is *not* sent to the oracle and not counted as a query: a random
    ensemble member ``e`` (one per prompt) labels

    * ``model_pair='best_worst'`` — the pair ``(argmax_j r_e(j), argmin_j r_e(j))`` over the M
      candidates, labelled ``first ≻ second`` (the pair of largest ``|r_e(i) − r_e(j)|``, as in Oat);
    * ``model_pair='selected'`` — the selector's pair, labelled ``1[r_e(a₁) > r_e(a₂)]``
      (``label_mode='argmax'``) or ``z ~ Bernoulli(σ(r_e(a₁) − r_e(a₂)))`` (``label_mode='sample'``,
      the model's own Bradley–Terry preference, as SAIL-PP labels with the implicit reward).

    Oat sends its model pairs to the oracle as well (without counting them) and trains on the
    oracle's labels; here they keep the model's label and never reach the oracle. With
    ``gamma=1`` every pair is an oracle pair.

    Attributes:
      gamma: γ ∈ [0, 1], the oracle's share of the pairs.
      model_pair: ``'best_worst'`` or ``'selected'``.
      label_mode: ``'argmax'`` or ``'sample'`` (with ``'selected'`` only).
      draw: ``'bernoulli'`` or ``'fixed_count'``.
      burn_in: rounds at the start in which every pair goes to the oracle (``>= 0``).
    """

    gamma: float = 0.5
    model_pair: str = "best_worst"
    label_mode: str = "argmax"
    draw: str = "bernoulli"
    burn_in: int = 0
    uses_model_labels: ClassVar[bool] = True
    needs_policy_logprob: ClassVar[bool] = False
    offline: ClassVar[bool] = False

    def __post_init__(self):
        check_float(self, "gamma", self.gamma, low=0.0, high=1.0)
        check_choice(self, "model_pair", self.model_pair, ("best_worst", "selected"))
        check_choice(self, "label_mode", self.label_mode, ("argmax", "sample"))
        check_choice(self, "draw", self.draw, MIXING_DRAWS)
        check_int(self, "burn_in", self.burn_in, low=0)
        if self.label_mode == "sample" and self.model_pair != "selected":
            raise ValueError(f"MixedLabeler.label_mode={self.label_mode!r} needs model_pair='selected'")

    def model_labelled_count(self, batch: int) -> int:
        """``⌊(1 − γ)·B⌋``, the model-labelled prompts of a batch after the burn-in (``'fixed_count'``).

        Computed on the decimal value of γ: in floating point (1 − 0.7)·10 would be 2.9999999999999996.
        """
        return math.floor((1 - fractions.Fraction(str(self.gamma))) * batch)

    def _model_labelled(self, key, batch: int, queries_so_far) -> Array:
        """``[B]`` bool: the prompts whose pair the model labels this round."""
        if self.draw == "bernoulli":
            model = jax.random.uniform(key, (batch,)) >= self.gamma
        else:
            rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch,))))  # a uniformly random order
            model = rank < self.model_labelled_count(batch)
        if self.burn_in == 0:
            return model
        if queries_so_far is None:
            raise ValueError(
                f"MixedLabeler(burn_in={self.burn_in}) needs queries_so_far (the oracle queries before this round)"
            )
        return model & (jnp.asarray(queries_so_far) >= self.burn_in * batch)

    def __call__(self, key: Array, inputs: LabelerInputs) -> Labels:
        pairs, scores = inputs.pairs, inputs.scores
        batch, members, _ = scores.shape
        k_query, k_member, k_label = jax.random.split(key, 3)
        query = ~self._model_labelled(k_query, batch, inputs.queries_so_far)
        member = jax.random.randint(k_member, (batch,), 0, members)
        member_scores = jnp.take_along_axis(scores, member[:, None, None], axis=1)[:, 0]  # [B, M]
        if self.model_pair == "best_worst":
            model_pairs = jnp.stack([jnp.argmax(member_scores, -1), jnp.argmin(member_scores, -1)], -1).astype(
                jnp.int32
            )
            # all candidates tied: nothing to learn from this pair
            informative = model_pairs[:, 0] != model_pairs[:, 1]
            model_label = jnp.ones(batch, jnp.float32)
        else:
            model_pairs = pairs
            pair_scores = jnp.take_along_axis(member_scores, pairs, axis=1)
            margin = pair_scores[:, 0] - pair_scores[:, 1]
            if self.label_mode == "sample":
                informative = jnp.ones(batch, bool)
                model_label = jax.random.bernoulli(k_label, jax.nn.sigmoid(margin)).astype(jnp.float32)
            else:
                informative = margin != 0
                model_label = (margin > 0).astype(jnp.float32)
        model_pairs = jnp.where(informative[:, None], model_pairs, pairs)
        return Labels(
            pairs=jnp.where(query[:, None], pairs, model_pairs),
            query=query,
            model_label=jnp.where(query, 0.0, model_label),
            model_trained=~query & informative,
        )


@dataclasses.dataclass(frozen=True)
class EntropyQueries:
    """APL's prompt selection (Muldrew et al. 2024): query the highest-entropy prompts first.

    The predictive entropy of π_θ on a prompt is estimated from its M candidates as
    ``Ĥ(x) = −(1/M) Σ_m log π_θ(y_m|x)``; the ``ceil(fraction · B)`` prompts of highest Ĥ go
    to the oracle (highest entropy first — Oat's ordering is inverted; not copied here), the
    others are neither queried nor learnt from.
    """

    fraction: float = 0.5
    uses_model_labels: ClassVar[bool] = False
    needs_policy_logprob: ClassVar[bool] = True
    offline: ClassVar[bool] = False

    def __post_init__(self):
        check_float(self, "fraction", self.fraction, low=0.0, high=1.0, low_inclusive=False)

    def __call__(self, key: Array, inputs: LabelerInputs) -> Labels:
        pairs = inputs.pairs
        policy_logprob = inputs.policy_logprob
        if policy_logprob is None:
            raise ValueError("EntropyQueries needs the candidates' log-probabilities under the policy")
        batch = pairs.shape[0]
        entropy = -jnp.mean(policy_logprob, axis=-1)  # [B]
        # exact ceil(fraction · B): in floating point 0.07 · 100 would round up to 8
        k = max(1, math.ceil(fractions.Fraction(str(self.fraction)) * batch))
        rank = jnp.argsort(jnp.argsort(-entropy))  # 0 = highest entropy
        return _oracle_only(pairs, rank < k)
