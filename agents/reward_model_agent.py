"""Agents that score a fixed candidate set with an epistemic reward model (tier 1).

Composition (docs/design.md §4):

* proposer  — all K arms of each context (their features ``obs.features [B, K, d]``);
* scorer    — an ensemble reward model, ``r_e(x, a)`` for members e (``cdb.ensemble``);
* selector  — a pair-selection rule on the score tensor ``[E, K]`` (``cdb.selection``);
* labeler   — the oracle, for every pair;
* learner   — the reward model's Bradley–Terry update on the oracle pairs.

The presets (:func:`ee_ts`, :func:`bai_ts`, ...) differ only by the selector; each takes a
reward model (default :func:`cdb.agents.ensembles.arm_feature_ensemble`) and the rule's fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from cdb import selection
from cdb.agents.ensembles import arm_feature_ensemble
from cdb.ensemble import RewardModel
from cdb.types import Duel, EnvSpec, Feedback, Observation


def take_arm_features(features: jax.Array, arms: jax.Array) -> jax.Array:
    """``features [B, K, d]``, ``arms [B]`` → ``[B, d]``."""
    return jnp.take_along_axis(features, arms[:, None, None], axis=1)[:, 0]


def take_pair_features(features: jax.Array, arms: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``features [B, K, d]``, duels ``arms [B, 2]`` → the two arms' features, each ``[B, d]``."""
    return take_arm_features(features, arms[:, 0]), take_arm_features(features, arms[:, 1])


def duel_pair_features(obs: Observation, duel: Duel) -> tuple[jax.Array, jax.Array]:
    """The two arms' features of each duel, for ``update``: ``duel.aux`` as ``select`` left it, or
    read from ``obs`` for a duel built elsewhere (e.g. by hand) that has no ``aux``."""
    return take_pair_features(obs.features, duel.arms) if duel.aux is None else duel.aux


@struct.dataclass
class RewardModelAgentState:
    """The reward model's state, and the feature dimension it was built for (static)."""

    reward_model: Any
    feature_dim: int = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class RewardModelAgent:
    """Selects a pair among all arms by ``selector`` applied to ``reward_model`` scores."""

    reward_model: RewardModel
    selector: Any
    name: str = "reward_model_agent"

    def __post_init__(self):
        if not isinstance(self.reward_model, RewardModel):  # e.g. the string 'linear'
            raise ValueError(
                f"{self.name}: reward_model={self.reward_model!r} is not a reward model; expected an object with "
                "num_members, init, scores and update, e.g. cdb.ensemble.LinearEnsemble() or MLPEnsemble()"
            )
        if not callable(self.selector):
            raise ValueError(
                f"{self.name}: selector={self.selector!r} is not a selection rule; expected a rule of "
                "cdb.selection, e.g. cdb.selection.EETS()"
            )
        need = getattr(self.selector, "min_members", 1)
        if self.reward_model.num_members < need:
            raise ValueError(
                f"{self.name}: reward_model.num_members={self.reward_model.num_members} is out of range; "
                f"{type(self.selector).__name__} needs at least {need} members"
            )

    def init(self, key: jax.Array, spec: EnvSpec) -> RewardModelAgentState:
        check_feature_spec(self.name, spec)
        return RewardModelAgentState(self.reward_model.init(key, spec.feature_dim), spec.feature_dim)

    def scores(self, state: RewardModelAgentState, obs: Observation) -> jax.Array:
        """Member scores ``[B, E, K]`` of every arm."""
        check_observation(self.name, obs, state.feature_dim)
        return jnp.swapaxes(self.reward_model.scores(state.reward_model, obs.features), 0, 1)

    def select(self, key, state: RewardModelAgentState, obs: Observation):
        arms = selection.select_pairs(self.selector, key, self.scores(state, obs))
        # The pair's features travel to ``update`` in ``aux``: then the round's [B, K, d] features
        # are dead once the pair is chosen, and a compiled loop can draw the next round's in place
        # (reading them again in ``update`` cost two copies of that array per round).
        return Duel(arms=arms, query=jnp.ones(arms.shape[0], bool), aux=take_pair_features(obs.features, arms)), {}

    def update(self, key, state: RewardModelAgentState, obs: Observation, duel: Duel, feedback: Feedback):
        check_observation(self.name, obs, state.feature_dim)
        first, second = duel_pair_features(obs, duel)
        rm_state, info = self.reward_model.update(
            key, state.reward_model, first, second, feedback.preference, feedback.queried
        )
        return state.replace(reward_model=rm_state), info

    def recommend(self, key, state, obs: Observation) -> jax.Array:
        """Greedy arm under the member-mean score."""
        return jnp.argmax(self.scores(state, obs).mean(axis=1), axis=-1).astype(jnp.int32)


def check_observation(name: str, obs: Observation, feature_dim: int) -> None:
    """Arm features ``[B, K, d]`` with the ``d`` the agent was initialised for; a clear error otherwise."""
    if obs.features is None or obs.features.ndim != 3:
        shape = None if obs.features is None else obs.features.shape
        raise ValueError(f"{name}: obs.features has shape {shape}; expected [batch, arms, {feature_dim}]")
    if obs.features.shape[-1] != feature_dim:
        raise ValueError(
            f"{name}: obs.features has feature dimension {obs.features.shape[-1]}; the agent was "
            f"initialised for feature_dim={feature_dim}"
        )


def check_feature_spec(name: str, spec: EnvSpec) -> None:
    """Feature-based agents need ``obs.features``; a clear error otherwise."""
    if not spec.has_features:
        raise ValueError(f"{name} needs an environment with arm features (EnvSpec.feature_dim); got {spec}")
    if spec.num_arms is None or spec.num_arms < 2:
        raise ValueError(f"{name} needs EnvSpec.num_arms >= 2; got num_arms={spec.num_arms}")


def _agent(name: str, rule, reward_model: RewardModel | None) -> RewardModelAgent:
    model = arm_feature_ensemble() if reward_model is None else reward_model
    return RewardModelAgent(model, rule, name=name)


def passive(reward_model: RewardModel | None = None) -> RewardModelAgent:
    """Uniformly random pair (:class:`cdb.selection.Passive`); the reward model learns passively
    and recommends its greedy arm (best-arm identification by passive exploration).

    ``reward_model``: default :func:`~cdb.agents.ensembles.arm_feature_ensemble`, as for every
    preset of this module.
    """
    return _agent("passive", selection.Passive(), reward_model)


def greedy_pair(reward_model: RewardModel | None = None) -> RewardModelAgent:
    """The best two arms under the member-mean score (:class:`cdb.selection.GreedyPair`): pure exploitation."""
    return _agent("greedy_pair", selection.GreedyPair(), reward_model)


def ee_ts(
    reward_model: RewardModel | None = None,
    *,
    max_tries: int = selection.EETS.max_tries,
    fallback: str = selection.EETS.fallback,
) -> RewardModelAgent:
    """SEA's explore-and-exploit Thompson sampling (Liu et al. 2024) on all arms (:class:`cdb.selection.EETS`).

    ``max_tries`` and ``fallback`` configure the rule.
    """
    return _agent("ee_ts", selection.EETS(max_tries=max_tries, fallback=fallback), reward_model)


def bai_ts(reward_model: RewardModel | None = None, *, variance: str = selection.BAITS.variance) -> RewardModelAgent:
    """SEA's best-arm-identification Thompson sampling (Liu et al. 2024) on all arms (:class:`cdb.selection.BAITS`).

    ``variance`` (``'probability'`` or ``'logit'``) configures the rule.
    """
    return _agent("bai_ts", selection.BAITS(variance=variance), reward_model)


def uncertainty(reward_model: RewardModel | None = None) -> RewardModelAgent:
    """The pair of largest logit-difference variance across members (:class:`cdb.selection.Uncertainty`)."""
    return _agent("uncertainty", selection.Uncertainty(), reward_model)


def infomax(reward_model: RewardModel | None = None) -> RewardModelAgent:
    """The pair of largest preference-probability variance across members (EE4LLM, Dwaracherla et al.
    2024; :class:`cdb.selection.Infomax`)."""
    return _agent("infomax", selection.Infomax(), reward_model)


def ensemble_double_ts(
    reward_model: RewardModel | None = None, *, max_resamples: int = selection.EnsembleDoubleTS.max_resamples
) -> RewardModelAgent:
    """Double Thompson sampling over ensemble members (EE4LLM, Dwaracherla et al. 2024;
    :class:`cdb.selection.EnsembleDoubleTS`). ``max_resamples`` configures the rule.

    Not the K-armed :class:`~cdb.agents.karmed.DoubleThompsonSampling` (Wu & Liu 2016), whose
    posterior is over a wins matrix.
    """
    return _agent("ensemble_double_ts", selection.EnsembleDoubleTS(max_resamples=max_resamples), reward_model)


def boltzmann(
    reward_model: RewardModel | None = None, *, temperature: float = selection.Boltzmann.temperature
) -> RewardModelAgent:
    """A pair sampled without replacement ∝ exp(mean score / temperature) (:class:`cdb.selection.Boltzmann`)."""
    return _agent("boltzmann", selection.Boltzmann(temperature=temperature), reward_model)


__all__ = [
    "RewardModelAgent",
    "bai_ts",
    "boltzmann",
    "ee_ts",
    "ensemble_double_ts",
    "greedy_pair",
    "infomax",
    "passive",
    "uncertainty",
]
