"""K-armed dueling bandit (no context): ``KArmedDuel`` (tier 1).

The oracle answers ``z ~ Bernoulli(P[a1, a2])`` for a ``K × K`` preference matrix ``P`` with
``P + Pᵀ = 1`` and a Condorcet winner ``a*`` (``P[a*, j] > ½`` for every ``j ≠ a*``):

* ``preference_matrix=None`` — each ``reset`` draws utilities ``u ~ N(0, I_K)`` and sets
  ``P[i, j] = F(scale · (u_i − u_j))`` for the link ``F`` (Bradley–Terry by default), with
  ``scale = params.scale`` at reset time; ``a* = argmax u``.
* an explicit matrix — used as given for every seed (``params.scale`` is then unused).

Regret is preference based (Yue et al. 2012): with ``ε(i, j) = P[i, j] − ½``,
``regret = (ε(a*, a1) + ε(a*, a2)) / 2``, ``weak_regret = min``, ``strong_regret = max`` of the two.
To share the reward-based ``info`` of the other environments, ``reward_first`` /
``reward_second`` are ``−ε(a*, a)`` and ``best_reward`` is ``0``.

Observations are one-hot identity features ``[B, K, K]`` (``φ(a) = e_a``), so feature-based
agents run unchanged; they carry no information beyond the arm index.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cdb.types import Duel, EnvSpec, Feedback, Info, Observation
from cdb.validation import check_choice, check_float, check_int

from .duel_model import DuelParams, check_duel, check_params, duel_info
from .feedback import preference_feedback
from .links import LINKS, preference_probability

Array = jax.Array


@struct.dataclass
class KArmedState:
    """One problem instance (all metrics-only truth; a K-armed problem has no per-round state).

    Attributes:
      preference_matrix: ``[K, K]`` float32, ``P[i, j] = P(i ≻ j)``.
      best_arm: int32 scalar, the Condorcet winner ``a*``.
      utilities: ``[K]`` float32 latent utilities when drawn, ``None`` for an explicit matrix.
    """

    preference_matrix: Array
    best_arm: Array
    utilities: Array | None = None


def _validate_matrix(owner: Any, matrix: Any, num_arms: int) -> tuple[tuple[float, ...], ...]:
    """Checks an explicit preference matrix; returns it as a hashable tuple of rows."""
    where = f"{type(owner).__name__}.preference_matrix"
    try:
        p = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}={matrix!r} is not a numeric matrix; expected a {num_arms}x{num_arms} array"
        ) from None
    if p.shape != (num_arms, num_arms):
        raise ValueError(f"{where} has shape {p.shape}; expected ({num_arms}, {num_arms}) to match num_arms")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{where} has non-finite entries; expected probabilities in [0, 1]")
    if np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"{where} has entries outside [0, 1] (min {p.min()}, max {p.max()}); expected probabilities")
    if not np.allclose(np.diag(p), 0.5, atol=1e-6):
        raise ValueError(f"{where} has diagonal {np.diag(p).tolist()}; expected every P[i, i] = 0.5")
    if not np.allclose(p + p.T, 1.0, atol=1e-6):
        raise ValueError(f"{where} is not consistent; expected P + P.T = 1 (P[i, j] = 1 - P[j, i])")
    beats = (p > 0.5) | np.eye(num_arms, dtype=bool)
    if not np.any(np.all(beats, axis=1)):
        raise ValueError(f"{where} has no Condorcet winner; expected an arm i with P[i, j] > 0.5 for all j != i")
    return tuple(tuple(float(x) for x in row) for row in p)


@dataclasses.dataclass(frozen=True)
class KArmedDuel:
    """K-armed dueling bandit with preference-based regret.

    Attributes:
      num_arms: K >= 2.
      batch_size: B >= 1 duels per round.
      preference_matrix: ``None`` (draw utilities per seed) or a ``K × K`` matrix with entries in
        ``[0, 1]``, ``P + Pᵀ = 1``, diagonal ½ and a Condorcet winner; stored as a tuple of rows.
      eval_batch_size: copies of the (context-free) problem used for BAI evaluation, >= 1.
      link: link of the drawn matrix: ``'bradley_terry'``, ``'probit'`` or ``'deterministic'``.
      scale: default inverse temperature of the drawn matrix (``default_params.scale``), finite, >= 0.
    """

    num_arms: int = 10
    batch_size: int = 1
    preference_matrix: Any = None
    eval_batch_size: int = 64
    link: str = "bradley_terry"
    scale: float = 1.0

    pure_jax = True

    def __post_init__(self):
        check_int(self, "num_arms", self.num_arms, low=2)
        check_int(self, "batch_size", self.batch_size, low=1)
        check_int(self, "eval_batch_size", self.eval_batch_size, low=1)
        check_choice(self, "link", self.link, LINKS)
        check_float(self, "scale", self.scale, low=0.0)
        if self.preference_matrix is not None:
            rows = _validate_matrix(self, self.preference_matrix, self.num_arms)
            object.__setattr__(self, "preference_matrix", rows)

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            batch_size=self.batch_size,
            num_arms=self.num_arms,
            feature_dim=self.num_arms,
            eval_batch_size=self.eval_batch_size,
            k_armed=True,
        )

    @property
    def default_params(self) -> DuelParams:
        return DuelParams(scale=jnp.float32(self.scale))

    def _observation(self, batch: int) -> Observation:
        eye = jnp.eye(self.num_arms, dtype=jnp.float32)
        return Observation(features=jnp.broadcast_to(eye, (batch, self.num_arms, self.num_arms)))

    def reset(self, key: Array, params: DuelParams) -> tuple[KArmedState, Observation]:
        """Draws the instance (utilities, unless the matrix is given) and the first observation."""
        check_params(self, params)
        if self.preference_matrix is None:
            u = jax.random.normal(key, (self.num_arms,), jnp.float32)
            p = preference_probability(self.link, params.scale, u[:, None], u[None, :])
            state = KArmedState(preference_matrix=p, best_arm=jnp.argmax(u).astype(jnp.int32), utilities=u)
        else:
            p = np.asarray(self.preference_matrix, np.float64)
            winner = int(np.argmax(np.all((p > 0.5) | np.eye(self.num_arms, dtype=bool), axis=1)))
            state = KArmedState(preference_matrix=jnp.asarray(p, jnp.float32), best_arm=jnp.int32(winner))
        return state, self._observation(self.batch_size)

    def reward(self, state: KArmedState, arms: Array) -> Array:
        """``−ε(a*, arms) = ½ − P[a*, arms]``, so the best arm scores 0 (truth, not for agents)."""
        return 0.5 - state.preference_matrix[state.best_arm, arms]

    def step(
        self, key: Array, state: KArmedState, duel: Duel, params: DuelParams
    ) -> tuple[KArmedState, Observation, Feedback, Info]:
        """Plays ``duel``: ``z ~ Bernoulli(P[a1, a2])`` on queried rows (``P[a, a] = ½``)."""
        check_duel(self, duel.arms, duel.query, self.batch_size)
        a1, a2 = duel.arms[:, 0], duel.arms[:, 1]
        prob = jnp.where(a1 == a2, 0.5, state.preference_matrix[a1, a2])
        feedback = preference_feedback(key, prob, duel.query)
        info = duel_info(self.reward(state, a1), self.reward(state, a2), jnp.zeros(a1.shape, jnp.float32))
        return state, self._observation(self.batch_size), feedback, info

    def eval_observation(self, state: KArmedState, params: DuelParams) -> Observation:
        return self._observation(self.eval_batch_size)

    def evaluate(self, key: Array, state: KArmedState, obs: Observation, arms: Array, params: DuelParams) -> Info:
        """``bai_regret`` ``[B_eval]`` = ``ε(a*, arms) = P[a*, arms] − ½``."""
        batch = obs.features.shape[0]
        if tuple(arms.shape) != (batch,):
            raise ValueError(f"KArmedDuel.evaluate: arms has shape {arms.shape}; expected ({batch},)")
        return {"bai_regret": (state.preference_matrix[state.best_arm, arms] - 0.5).astype(jnp.float32)}
