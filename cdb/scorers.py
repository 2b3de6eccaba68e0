"""Scorers: how an alignment agent scores its M candidates (docs/design.md §4, second part of an agent).

A scorer turns what the agent knows of each candidate into scores ``[B, E, M]`` (``E`` members
of an ensemble, or one row), the input of a :mod:`cdb.selection` rule and of a
:mod:`cdb.labelers` part::

    scores = scorer(ScorerInputs(reward_model, rm_state, features, policy_logprob, ref_logprob, candidates))

* :class:`EnsembleScores` — the epistemic reward model's members on the candidates' features
  (SEA, EE4LLM): ``r_e(x, y_m)``;
* :class:`ImplicitReward` — DPO's implicit reward ``β (log π_θ(y_m|x) − log π_ref(y_m|x))``
  (APL's margin, SAIL-PP's own labels), one row;
* :class:`NoScores` — zeros, one row (passive agents).

Scorers are frozen dataclasses (static under ``jit``) whose class attributes tell the agent what
to compute for them: ``needs_reward_model``, ``needs_policy_logprob``, ``needs_reference_logprob``
(π_ref's log-probabilities of every candidate, a teacher-forced pass the agent otherwise runs
over the played pair only) and ``provides_labels`` (the scores can label a pair, as
:class:`~cdb.labelers.MixedLabeler` needs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from cdb.validation import check_float

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ScorerInputs:
    """What a scorer may read, for B prompts and M candidates (a plain container, built inside a trace).

    Attributes:
      reward_model: the agent's :class:`cdb.ensemble.RewardModel` definition (``None`` without one).
      rm_state: its state.
      features: ``[B, M, D]`` reward-model features of the candidates (``None`` without a reward model).
      policy_logprob: ``[B, M]`` ``log π_θ(y_m|x)`` (``None`` unless the scorer or another part needs it).
      ref_logprob: ``[B, M]`` ``log π_ref(y_m|x)`` (``None`` unless the scorer needs it or the
        proposer computed it).
      candidates: ``[B, M, L]`` int32, the candidates themselves.
    """

    reward_model: Any
    rm_state: Any
    features: Array | None
    policy_logprob: Array | None
    ref_logprob: Array | None
    candidates: Array


@runtime_checkable
class Scorer(Protocol):
    """``scorer(inputs: ScorerInputs) -> [B, E, M]`` float32, with its requirements as class attributes."""

    needs_reward_model: ClassVar[bool]
    needs_policy_logprob: ClassVar[bool]
    needs_reference_logprob: ClassVar[bool]
    provides_labels: ClassVar[bool]

    def num_members(self, reward_model: Any) -> int:
        """E, the rows of the scores."""

    def __call__(self, inputs: ScorerInputs) -> Array: ...


@dataclasses.dataclass(frozen=True)
class EnsembleScores:
    """The reward ensemble's members: ``scores[b, e, m] = r_e(φ(x_b, y_bm))`` (Thompson sampling's samples)."""

    needs_reward_model: ClassVar[bool] = True
    needs_policy_logprob: ClassVar[bool] = False
    needs_reference_logprob: ClassVar[bool] = False
    provides_labels: ClassVar[bool] = True

    def num_members(self, reward_model: Any) -> int:
        return reward_model.num_members

    def __call__(self, inputs: ScorerInputs) -> Array:
        # the model's scores are [E, B, M]
        return jnp.swapaxes(inputs.reward_model.scores(inputs.rm_state, inputs.features), 0, 1)


@dataclasses.dataclass(frozen=True)
class ImplicitReward:
    """DPO's implicit reward ``β (log π_θ(y|x) − log π_ref(y|x))`` (Rafailov et al. 2023), one row ``[B, 1, M]``.

    Attributes:
      beta: β > 0, usually the β of the agent's DAP loss (the presets pass it).
    """

    beta: float = 0.1
    needs_reward_model: ClassVar[bool] = False
    needs_policy_logprob: ClassVar[bool] = True
    needs_reference_logprob: ClassVar[bool] = True
    provides_labels: ClassVar[bool] = True

    def __post_init__(self):
        check_float(self, "beta", self.beta, low=0.0, low_inclusive=False)

    def num_members(self, reward_model: Any) -> int:
        return 1

    def __call__(self, inputs: ScorerInputs) -> Array:
        return (self.beta * (inputs.policy_logprob - inputs.ref_logprob))[:, None, :]


@dataclasses.dataclass(frozen=True)
class NoScores:
    """Zeros ``[B, 1, M]``: the candidates are indistinguishable (passive exploration)."""

    needs_reward_model: ClassVar[bool] = False
    needs_policy_logprob: ClassVar[bool] = False
    needs_reference_logprob: ClassVar[bool] = False
    provides_labels: ClassVar[bool] = False

    def num_members(self, reward_model: Any) -> int:
        return 1

    def __call__(self, inputs: ScorerInputs) -> Array:
        batch, m = inputs.candidates.shape[:2]
        return jnp.zeros((batch, 1, m), jnp.float32)
