"""Contextual dueling bandits with arm features: ``LinearDuel`` and ``NeuralDuel`` (tier 1).

Each round, for each of the ``B`` contexts, the environment shows the features of ``K`` arms,
``φ(x, a) ~ N(0, I/d)`` drawn independently per context and arm (so ``E‖φ‖² = 1``); the
context is implicit in its arm features. The latent reward is ``r*(x, a) = f(φ(x, a))``:

* ``LinearDuel``  ``f(φ) = ⟨θ*, φ⟩`` with ``θ*`` uniform on the unit sphere, so ``r* ~ N(0, 1/d)``;
* ``NeuralDuel``  ``f(φ) = ⟨w₂, tanh(W₁ᵀφ + b₁)⟩``, a random one-hidden-layer MLP with
  ``W₁ ~ N(0, 1)`` (``[d, H]``), ``b₁ ~ N(0, 1)``, ``w₂`` uniform on the unit sphere of ``R^H``.

The oracle answers ``z ~ Bernoulli(F(scale · (r*(a1) − r*(a2))))`` for the link ``F`` of
:mod:`cdb.environments.links`. Both share :class:`FeatureDuel`; only the reward differs.

``reset(key)`` draws the problem instance (the reward function), ``eval_batch_size`` held-out
contexts for BAI evaluation (fixed for the instance) and the first observation, so vmapping
``reset`` over keys gives different problems. The truth lives in ``FeatureDuelState``:
``state.reward_params`` (``LinearReward.theta`` ``[d]`` or ``MLPReward``), ``state.rewards``
(``[B, K]``, the latent rewards of the arms the agent sees this round, in ``obs.features``) and
``state.eval_features`` (``[B_eval, K, d]``).
:meth:`FeatureDuel.reward` evaluates ``r*`` on any features.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cdb import rng
from cdb.types import Duel, EnvSpec, Feedback, Info, Observation
from cdb.validation import check_choice, check_float, check_int

from .duel_model import DuelParams, check_duel, check_params, duel_info
from .feedback import preference_feedback
from .links import LINKS, preference_probability

Array = jax.Array
_EXACT = jax.lax.Precision.HIGHEST  # full float32 matmuls: regrets are exact on any accelerator


@struct.dataclass
class LinearReward:
    """``r*(φ) = ⟨theta, φ⟩``; ``theta`` ``[d]`` is on the unit sphere."""

    theta: Array


@struct.dataclass
class MLPReward:
    """``r*(φ) = ⟨w2, tanh(φ w1 + b1)⟩``; ``w1`` ``[d, H]``, ``b1`` ``[H]``, ``w2`` ``[H]``."""

    w1: Array
    b1: Array
    w2: Array


@struct.dataclass
class FeatureDuelState:
    """One problem instance and the current round.

    Attributes:
      reward_params: the latent reward function (metrics-only truth).
      rewards: ``[B, K]`` latent rewards of the current round's arms, computed when their features
        are drawn. The features themselves live only in the observation: keeping a second
        ``[B, K, d]`` copy in the state made XLA copy it every round inside the compiled loop
        (two 8 MB copies per round at 1024 seeds in the throughput benchmark).
      eval_features: ``[B_eval, K, d]`` held-out contexts for BAI evaluation, fixed at reset.
    """

    reward_params: Any
    rewards: Array
    eval_features: Array


@functools.lru_cache(maxsize=8)
def make_context_pool(size: int, num_arms: int, feature_dim: int, seed: int) -> np.ndarray:
    """A fixed pool of contexts ``[P, K, d]`` with features ``N(0, I/d)`` (a host constant)."""
    generator = np.random.default_rng(seed)
    return (generator.standard_normal((size, num_arms, feature_dim)) / np.sqrt(feature_dim)).astype(np.float32)


def _unit_sphere(key: Array, dim: int) -> Array:
    v = jax.random.normal(key, (dim,), jnp.float32)
    return v / jnp.linalg.norm(v)


@dataclasses.dataclass(frozen=True)
class FeatureDuel:
    """Base of the feature-based environments; subclasses define the latent reward only.

    Attributes:
      num_arms: K >= 2 arms per context.
      feature_dim: d >= 1.
      batch_size: B >= 1 contexts per round.
      eval_batch_size: held-out contexts for BAI evaluation, >= 1.
      link: ``'bradley_terry'``, ``'probit'`` or ``'deterministic'`` (see :mod:`~cdb.environments.links`).
      scale: default inverse temperature of the link (``default_params.scale``), finite and >= 0.
      context_pool: ``None`` (default) draws fresh features every round. An integer P makes each
        round's contexts B uniform draws from a fixed pool of P contexts ``[P, K, d]`` (same
        distribution, drawn once from ``pool_seed`` and shared by all seeds, so a round costs B
        random indices instead of B·K·d normals — docs/design.md §2; used by the throughput benchmark).
        Held-out contexts are always fresh draws, so BAI regret measures generalisation.
      pool_seed: seed of the context pool.
    """

    num_arms: int = 10
    feature_dim: int = 8
    batch_size: int = 1
    eval_batch_size: int = 64
    link: str = "bradley_terry"
    scale: float = 1.0
    context_pool: int | None = None
    pool_seed: int = 0

    pure_jax = True

    def __post_init__(self):
        check_int(self, "num_arms", self.num_arms, low=2)
        check_int(self, "feature_dim", self.feature_dim, low=1)
        check_int(self, "batch_size", self.batch_size, low=1)
        check_int(self, "eval_batch_size", self.eval_batch_size, low=1)
        check_choice(self, "link", self.link, LINKS)
        check_float(self, "scale", self.scale, low=0.0)
        if self.context_pool is not None:
            check_int(self, "context_pool", self.context_pool, low=1)
        check_int(self, "pool_seed", self.pool_seed, low=0)

    # --- the latent reward: the only thing subclasses define -------------------------------

    def init_reward(self, key: Array) -> Any:
        """Draws the reward function of a problem instance (a pytree)."""
        raise NotImplementedError

    def apply_reward(self, reward_params: Any, features: Array) -> Array:
        """``r*`` of ``features`` ``[..., d]`` → ``[...]`` float32."""
        raise NotImplementedError

    # --- the API ----------------------------------------------------------------------------

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            batch_size=self.batch_size,
            num_arms=self.num_arms,
            feature_dim=self.feature_dim,
            eval_batch_size=self.eval_batch_size,
        )

    @property
    def default_params(self) -> DuelParams:
        return DuelParams(scale=jnp.float32(self.scale))

    def reward(self, state: FeatureDuelState, features: Array) -> Array:
        """Latent rewards ``[..., K]`` of ``features`` ``[..., K, d]`` (truth, not for agents)."""
        return self.apply_reward(state.reward_params, features)

    def _fresh_features(self, key: Array, batch: int) -> Array:
        shape = (batch, self.num_arms, self.feature_dim)
        return rng.normal(key, shape) / jnp.sqrt(jnp.float32(self.feature_dim))

    def _features(self, key: Array, batch: int) -> Array:
        """A round's contexts ``[batch, K, d]``: fresh draws, or uniform draws from the pool."""
        if self.context_pool is None:
            return self._fresh_features(key, batch)
        pool = make_context_pool(self.context_pool, self.num_arms, self.feature_dim, self.pool_seed)
        rows = jnp.asarray(pool).reshape(self.context_pool, self.num_arms * self.feature_dim)
        # A context is one contiguous row, and the indices are in range by construction, so XLA
        # need not clamp them (×1.1 on the whole round of benchmarks/throughput.py, side by side).
        picked = rows.at[rng.uniform_below(key, (batch,), self.context_pool)].get(mode="promise_in_bounds")
        return picked.reshape(batch, self.num_arms, self.feature_dim)

    def _next_round(self, key: Array, reward_params: Any) -> tuple[Array, Array]:
        """A round's contexts ``[B, K, d]`` and their latent rewards ``[B, K]``."""
        features = self._features(key, self.batch_size)
        return features, self.apply_reward(reward_params, features)

    def reset(self, key: Array, params: DuelParams) -> tuple[FeatureDuelState, Observation]:
        """Draws an instance: reward function, held-out contexts and the first round's features."""
        check_params(self, params)
        k_reward, k_eval, k_feat = jax.random.split(key, 3)
        reward_params = self.init_reward(k_reward)
        features, rewards = self._next_round(k_feat, reward_params)
        state = FeatureDuelState(
            reward_params=reward_params,
            rewards=rewards,
            eval_features=self._fresh_features(k_eval, self.eval_batch_size),
        )
        return state, Observation(features=features)

    def step(
        self, key: Array, state: FeatureDuelState, duel: Duel, params: DuelParams
    ) -> tuple[FeatureDuelState, Observation, Feedback, Info]:
        """Plays ``duel`` on the current features, then draws the next round's features.

        ``P(a1 ≻ a2) = F(scale · (r*(a1) − r*(a2)))``, exactly ½ when ``a1 == a2``.
        """
        check_duel(self, duel.arms, duel.query, self.batch_size)
        k_pref, k_feat = jax.random.split(key)
        rewards = state.rewards  # [B, K]
        pair = jnp.take_along_axis(rewards, duel.arms, axis=1)  # [B, 2]
        r1, r2 = pair[:, 0], pair[:, 1]
        prob = preference_probability(self.link, params.scale, r1, r2)
        prob = jnp.where(duel.arms[:, 0] == duel.arms[:, 1], 0.5, prob)
        feedback = preference_feedback(k_pref, prob, duel.query)
        info = duel_info(r1, r2, jnp.max(rewards, axis=1))
        features, next_rewards = self._next_round(k_feat, state.reward_params)
        return state.replace(rewards=next_rewards), Observation(features=features), feedback, info

    def eval_observation(self, state: FeatureDuelState, params: DuelParams) -> Observation:
        return Observation(features=state.eval_features)

    def evaluate(self, key: Array, state: FeatureDuelState, obs: Observation, arms: Array, params: DuelParams) -> Info:
        """``bai_regret`` ``[B_eval]`` = ``max_a r*(x, a) − r*(x, arms)`` on the contexts of ``obs``."""
        rewards = self.reward(state, obs.features)  # [B_eval, K]
        if tuple(arms.shape) != rewards.shape[:1]:
            raise ValueError(
                f"{type(self).__name__}.evaluate: arms has shape {arms.shape}; expected {rewards.shape[:1]}"
            )
        chosen = jnp.take_along_axis(rewards, arms[:, None], axis=1)[:, 0]
        return {"bai_regret": (jnp.max(rewards, axis=1) - chosen).astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class LinearDuel(FeatureDuel):
    """Linear CDB: ``r*(x, a) = ⟨θ*, φ(x, a)⟩``, ``θ*`` uniform on the unit sphere (drawn at reset).

    ``state.reward_params.theta`` holds ``θ*`` ``[d]``. See :class:`FeatureDuel` for the fields.
    """

    def init_reward(self, key: Array) -> LinearReward:
        return LinearReward(theta=_unit_sphere(key, self.feature_dim))

    def apply_reward(self, reward_params: LinearReward, features: Array) -> Array:
        return jnp.einsum("...d,d->...", features, reward_params.theta, precision=_EXACT)


@dataclasses.dataclass(frozen=True)
class NeuralDuel(FeatureDuel):
    """Neural CDB: ``r*(x, a) = ⟨w₂, tanh(W₁ᵀφ(x, a) + b₁)⟩``, a random MLP drawn at reset.

    ``W₁ ~ N(0, 1)`` ``[d, H]``, ``b₁ ~ N(0, 1)`` ``[H]``, ``w₂`` uniform on the unit sphere ``[H]``;
    ``state.reward_params`` is an :class:`MLPReward`.

    Attributes:
      hidden_dim: H >= 1, width of the hidden layer (default 32). Other fields: :class:`FeatureDuel`.
    """

    hidden_dim: int = 32

    def __post_init__(self):
        super().__post_init__()
        check_int(self, "hidden_dim", self.hidden_dim, low=1)

    def init_reward(self, key: Array) -> MLPReward:
        k1, kb, k2 = jax.random.split(key, 3)
        return MLPReward(
            w1=jax.random.normal(k1, (self.feature_dim, self.hidden_dim), jnp.float32),
            b1=jax.random.normal(kb, (self.hidden_dim,), jnp.float32),
            w2=_unit_sphere(k2, self.hidden_dim),
        )

    def apply_reward(self, reward_params: MLPReward, features: Array) -> Array:
        pre = jnp.einsum("...d,dh->...h", features, reward_params.w1, precision=_EXACT)
        hidden = jnp.tanh(pre + reward_params.b1)
        return jnp.einsum("...h,h->...", hidden, reward_params.w2, precision=_EXACT)
