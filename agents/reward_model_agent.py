"""Agents that score a fixed candidate set with an epistemic reward model (tier 1).

Composition (DESIGN §4):

* proposer  — all K arms of each context (their features ``obs.features [B, K, d]``);
* scorer    — an ensemble reward model, ``r_e(x, a)`` for members e (``cdb.ensemble``);
* selector  — a pair-selection rule on the score tensor ``[E, K]`` (``cdb.selection``);
* labeler   — the oracle, for every pair;
* learner   — the reward model's Bradley–Terry update on the oracle pairs.

The named constructors (:func:`ee_ts`, :func:`bai_ts`, ...) differ only by the selector.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from cdb import selection
from cdb.ensemble import LinearEnsemble, MLPEnsemble, RewardModel
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


def default_reward_model(num_members: int = 8) -> RewardModel:
    """A small MLP ensemble with prior functions: sized for tier-1 problems on a laptop."""
    return MLPEnsemble(num_members=num_members, hidden_sizes=(32, 32), prior_scale=1.0, anchor=0.0)


def _constructor(rule_cls, name: str, doc: str):
    def make(reward_model: RewardModel | None = None, **rule_kwargs) -> RewardModelAgent:
        model = default_reward_model() if reward_model is None else reward_model
        return RewardModelAgent(model, rule_cls(**rule_kwargs), name=name)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = (
        f"{doc}\n\nKeyword arguments other than ``reward_model`` configure :class:`cdb.selection.{rule_cls.__name__}`."
    )
    return make


passive = _constructor(
    selection.Passive, "passive", "Uniformly random pair; the reward model learns passively (BAI by its greedy arm)."
)
greedy = _constructor(selection.Greedy, "greedy", "Best two arms under the member-mean score (pure exploitation).")
ee_ts = _constructor(
    selection.EETS, "ee_ts", "SEA's explore-and-exploit Thompson sampling (Liu et al. 2024) on all arms."
)
bai_ts = _constructor(
    selection.BAITS, "bai_ts", "SEA's best-arm-identification Thompson sampling (Liu et al. 2024) on all arms."
)
uncertainty = _constructor(
    selection.Uncertainty, "uncertainty", "Pair of largest logit-difference variance across members."
)
infomax = _constructor(
    selection.Infomax,
    "infomax",
    "Pair of largest preference-probability variance across members (EE4LLM, Dwaracherla et al. 2024).",
)
double_ts = _constructor(
    selection.DoubleTS, "double_ts", "Double Thompson sampling over ensemble members (EE4LLM, Dwaracherla et al. 2024)."
)
boltzmann = _constructor(
    selection.Boltzmann, "boltzmann", "Pair sampled without replacement ∝ exp(mean score / temperature)."
)

__all__ = [
    "RewardModelAgent",
    "LinearEnsemble",
    "MLPEnsemble",
    "bai_ts",
    "boltzmann",
    "double_ts",
    "ee_ts",
    "greedy",
    "infomax",
    "passive",
    "uncertainty",
]
