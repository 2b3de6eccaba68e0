"""Core data types and the Env / Agent protocols of a contextual dueling bandit (docs/design.md §4).

One round of a CDB, for a batch of ``B`` contexts::

    duel, _ = agent.select(key, agent_state, obs)          # two arms per context
    env_state, next_obs, feedback, info = env.step(key, env_state, duel, params)
    agent_state, _ = agent.update(key, agent_state, obs, duel, feedback)

``obs`` and ``feedback`` are all the agent may see. The latent reward, the best arm and the
regrets travel only in ``info`` (a dict of metrics-only truth).

Shapes use ``B`` for the context batch, ``K`` for the number of candidate arms, ``d`` for the
feature dimension, ``Lp`` / ``L`` for prompt / response lengths.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
from flax import struct

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
Info = dict[str, Array]


@struct.dataclass
class Observation:
    """What the agent sees of one round.

    Attributes:
      features: ``[B, K, d]`` arm features φ(x, a) for tier-1 environments, else ``None``.
      prompts: ``[B, Lp]`` prompt tokens for tiers 2-3, else ``None``; *left*-padded in tier 3.
      prompt_mask: ``[B, Lp]`` bool, which prompt tokens are real (tier 3's left padding);
        ``None`` means every token is real (tier 2's fixed-length prompts).
    """

    features: Array | None = None
    prompts: Array | None = None
    prompt_mask: Array | None = None

    @property
    def batch_size(self) -> int:
        leaf = self.features if self.features is not None else self.prompts
        return leaf.shape[0]


@struct.dataclass
class Duel:
    """The two arms an agent plays for each context of the batch.

    Attributes:
      arms: ``[B, 2]`` integer arm indices (tier 1) or ``[B, 2, L]`` response tokens (tiers 2-3).
      query: ``[B]`` bool, whether the pair is sent to the oracle. Pairs with ``query=False``
        are still played (they count for regret) but are never shown to the oracle, and their
        preference in :class:`Feedback` is zero.
      aux: agent-private data carried from ``select`` to ``update`` (e.g. the whole candidate
        set and its scores); environments ignore it. ``None`` when unused.
    """

    arms: Array
    query: Array
    aux: Any = None


@struct.dataclass
class Feedback:
    """The oracle's answer for each duel.

    Attributes:
      preference: ``[B]`` float32, 1.0 if the first arm won, 0.0 otherwise (0.0 where not queried).
      queried: ``[B]`` bool, which pairs were actually sent to the oracle; its sum is the query count.
    """

    preference: Array
    queried: Array


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static shapes of an environment, given to ``agent.init``.

    Attributes:
      batch_size: B, contexts per round.
      num_arms: K, candidate arms per context (tier 1); ``None`` when arms are generated.
      feature_dim: d, dimension of φ(x, a) (tier 1); ``None`` otherwise.
      prompt_length: Lp (tiers 2-3); ``None`` for tier 1.
      response_length: L (tiers 2-3); ``None`` for tier 1.
      vocab_size: V (tiers 2-3); ``None`` for tier 1.
      eval_batch_size: number of held-out contexts used for BAI evaluation.
      eos_id: the token that ends a response (tier 3); ``None`` when responses have a fixed
        length L (tier 2). A response is the tokens up to and including its first EOS; the
        tokens after it are ``pad_id`` and do not belong to it.
      pad_id: the token of left padding in prompts and of right padding after an EOS.
      k_armed: the ``K`` arms are the same fixed arms in every round, with no context
        (:class:`~cdb.environments.KArmedDuel`; its features are one-hot arm indices). Agents that
        keep statistics per arm index (Double Thompson Sampling, RUCB) need it.
    """

    batch_size: int
    num_arms: int | None = None
    feature_dim: int | None = None
    prompt_length: int | None = None
    response_length: int | None = None
    vocab_size: int | None = None
    eval_batch_size: int = 0
    eos_id: int | None = None
    pad_id: int = 0
    k_armed: bool = False

    @property
    def has_features(self) -> bool:
        return self.feature_dim is not None


@runtime_checkable
class Environment(Protocol):
    """A CDB environment, gymnax style: methods are pure functions of explicit keys and state.

    ``pure_jax`` says whether ``reset``/``step``/``evaluate`` can be traced by JAX (tiers 1-2);
    :func:`cdb.run` then compiles the whole experiment, otherwise it runs a host loop.
    """

    pure_jax: bool

    @property
    def spec(self) -> EnvSpec: ...

    @property
    def default_params(self) -> PyTree: ...

    def reset(self, key: PRNGKey, params: PyTree) -> tuple[PyTree, Observation]:
        """Draws a problem instance and the first observation."""

    def step(
        self, key: PRNGKey, state: PyTree, duel: Duel, params: PyTree
    ) -> tuple[PyTree, Observation, Feedback, Info]:
        """Plays ``duel`` and returns the next observation, the feedback and the metrics-only truth.

        What ``info`` holds depends on the tier (entries ``[B]`` unless noted):

        * tiers 1 and 2 (``LinearDuel``, ``NeuralDuel``, ``KArmedDuel``, ``SequenceDuel``) know the
          optimum and report the exact ``regret``, ``weak_regret`` and ``strong_regret`` (with the
          rewards ``reward_first``, ``reward_second``, ``best_reward``); ``SequenceDuel`` with a
          reference policy adds ``online_win_rate`` against a fresh π_ref sample;
        * tier 3 (``LLMDuel``) has no known optimum, hence no regret: it reports
          ``online_win_rate`` (unless switched off), ``oracle_reward`` (oracles that give rewards),
          ``response_length``, and the scalars ``seconds_oracle`` and ``seconds_metrics``.

        ``cdb.run`` records per round the batch sum of each regret and the batch mean of every
        other entry (:func:`cdb.runners.metrics.round_metrics`).
        """

    def eval_observation(self, state: PyTree, params: PyTree) -> Observation:
        """The held-out contexts of this problem instance (fixed at reset), for BAI evaluation."""

    def evaluate(self, key: PRNGKey, state: PyTree, obs: Observation, arms: Array, params: PyTree) -> Info:
        """Metrics of recommended ``arms`` on the held-out ``obs``, each ``[B_eval]``.

        Tiers 1 and 2 report ``bai_regret`` (``SequenceDuel`` also ``reward``, and with a reference
        policy ``win_rate`` and ``gap_closed``); tier 3 (``LLMDuel``) reports ``win_rate`` against
        π_ref's greedy response, ``response_length`` and, with rewards, ``oracle_reward``.
        """


@runtime_checkable
class Agent(Protocol):
    """A CDB agent: four pure functions of explicit keys and an explicit state pytree."""

    def init(self, key: PRNGKey, spec: EnvSpec) -> PyTree: ...

    def select(self, key: PRNGKey, state: PyTree, obs: Observation) -> tuple[Duel, Info]: ...

    def update(
        self, key: PRNGKey, state: PyTree, obs: Observation, duel: Duel, feedback: Feedback
    ) -> tuple[PyTree, Info]:
        """Learns from one round. Scalars in the returned info are recorded per round by ``cdb.run``."""

    def recommend(self, key: PRNGKey, state: PyTree, obs: Observation) -> Array:
        """Greedy best guess per context: ``[B]`` arm indices or ``[B, L]`` tokens."""
