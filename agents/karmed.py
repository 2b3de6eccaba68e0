"""K-armed dueling bandits: Double Thompson Sampling and RUCB (DESIGN §5, "Classical CDB").

No context: the agents read ``K`` from ``spec.num_arms`` and ignore ``obs.features`` (the
one-hot features of :class:`~cdb.environments.KArmedDuel`). Their state is the **wins matrix**
``W[i, j]`` = number of queried duels in which ``i`` beat ``j``, and the time ``t`` = number of
queried duels so far. Only queried rows of a batch are counted; a self-duel ``(a, a)`` advances
``t`` but is not recorded in ``W`` (its outcome, a fair coin, says nothing about ``a``).

Confidence bounds (Zoghi et al. 2014; Wu & Liu 2016), with ``N = W + Wᵀ`` and ``x/0 := 1``::

    U = W/N + sqrt(α ln t / N),     L = W/N − sqrt(α ln t / N),     U_ii = L_ii = ½,

so an unplayed pair has ``U = 2`` and ``L = 0`` (:func:`confidence_bounds`). The agents use
``t = (queried duels so far) + 1``, the index of the current step.

Self-duels: both algorithms may play ``a1 == a2``, as in the papers (RUCB when the candidate is
its own strongest challenger, DTS when no other arm is a plausible winner against the first
candidate) — that is how they exploit; the environment answers ½ for it.

Batches: the ``B`` duels of a round are ``B`` independent draws from the same state (one key
each); the wins of all ``B`` are added afterwards.

``recommend`` returns, for every context of ``obs``, the arm with the highest Copeland score
``#{j ≠ i : P̂_ij > ½}`` of the empirical matrix ``P̂ = W/N`` (``P̂ = ½`` for unplayed pairs),
ties to the lowest index.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from cdb.types import Duel, EnvSpec, Feedback, Observation
from cdb.validation import check_float

Array = jax.Array

__all__ = [
    "RUCB",
    "DoubleThompsonSampling",
    "WinsState",
    "confidence_bounds",
    "copeland_winner",
    "dts_pair",
    "empirical_preferences",
    "rucb_pair",
]


def _ratio(x: Array, n: Array) -> Array:
    """``x / n`` with ``x/0 := 1``."""
    return jnp.where(n > 0, x / jnp.where(n > 0, n, 1.0), 1.0)


def confidence_bounds(wins: Array, t: Array | int, alpha: float) -> tuple[Array, Array]:
    """RUCB / DTS bounds ``(U, L)`` of the preference matrix (module docstring), each ``[K, K]``.

    Args:
      wins: ``[K, K]`` wins matrix.
      t: the current time step (``>= 1``; ``ln t`` is taken).
      alpha: exploration parameter ``α >= 0``.
    """
    wins = jnp.asarray(wins, jnp.float32)
    n = wins + wins.T
    mean = _ratio(wins, n)
    radius = jnp.sqrt(_ratio(alpha * jnp.log(jnp.asarray(t, jnp.float32)) * jnp.ones_like(n), n))
    eye = jnp.eye(wins.shape[0], dtype=bool)
    return jnp.where(eye, 0.5, mean + radius), jnp.where(eye, 0.5, mean - radius)


def empirical_preferences(wins: Array) -> Array:
    """``P̂ = W / (W + Wᵀ)``, ½ where a pair was never compared (and on the diagonal)."""
    wins = jnp.asarray(wins, jnp.float32)
    n = wins + wins.T
    return jnp.where(n > 0, wins / jnp.where(n > 0, n, 1.0), 0.5)


def copeland_winner(wins: Array) -> Array:
    """Arm with the most ``j ≠ i`` such that ``P̂_ij > ½``; ties to the lowest index. int32 scalar."""
    scores = jnp.sum(empirical_preferences(wins) > 0.5, axis=1)
    return jnp.argmax(scores).astype(jnp.int32)


def _uniform_among(key: Array, mask: Array) -> Array:
    """A uniformly random index among ``mask`` True (``mask`` must have one True)."""
    return jnp.argmax(jnp.where(mask, jax.random.uniform(key, mask.shape), -1.0)).astype(jnp.int32)


def _argmax_random_ties(key: Array, values: Array, mask: Array) -> Array:
    """``argmax`` of ``values`` over ``mask``, ties broken uniformly at random."""
    best = jnp.max(jnp.where(mask, values, -jnp.inf))
    return _uniform_among(key, mask & (values >= best))


def rucb_pair(key: Array, wins: Array, t: Array | int, alpha: float) -> Array:
    """RUCB's duel (Zoghi et al. 2014): ``[2]`` int32 ``(c, d)``.

    ``c`` uniformly from ``C = {c : U_cj ≥ ½ for all j}`` (uniformly from all arms when ``C`` is
    empty); ``d = argmax_j U_jc``, ties broken at random (``d = c`` is possible: ``U_cc = ½``).
    """
    k_c, k_d = jax.random.split(key)
    upper, _ = confidence_bounds(wins, t, alpha)
    candidates = jnp.all(upper >= 0.5, axis=1)
    c = _uniform_among(k_c, jnp.where(jnp.any(candidates), candidates, True))
    d = _argmax_random_ties(k_d, upper[:, c], jnp.ones_like(candidates))
    return jnp.stack([c, d])


def dts_pair(key: Array, wins: Array, t: Array | int, alpha: float) -> Array:
    """Double Thompson Sampling's duel (Wu & Liu 2016, Algorithm 1): ``[2]`` int32 ``(a1, a2)``.

    First candidate: the upper Copeland scores ``ζ_i = #{j ≠ i : U_ij > ½}`` give
    ``C = argmax_i ζ_i``; sample ``θ¹_ij ~ Beta(W_ij + 1, W_ji + 1)`` for ``i < j``,
    ``θ¹_ji = 1 − θ¹_ij``; ``a1 = argmax_{i ∈ C} #{j ≠ i : θ¹_ij > ½}``, ties at random.
    Second candidate: ``θ²_i ~ Beta(W_{i,a1} + 1, W_{a1,i} + 1)`` for ``i ≠ a1``, ``θ²_{a1} = ½``;
    ``a2 = argmax_{i : L_{i,a1} ≤ ½} θ²_i`` (``a1`` itself is always eligible, ``L_{a1,a1} = ½``).
    """
    k_first, k_tie, k_second = jax.random.split(key, 3)
    wins = jnp.asarray(wins, jnp.float32)
    k = wins.shape[0]
    eye = jnp.eye(k, dtype=bool)
    upper, lower = confidence_bounds(wins, t, alpha)
    upper_copeland = jnp.sum((upper > 0.5) & ~eye, axis=1)
    in_c = upper_copeland == jnp.max(upper_copeland)
    sample = jax.random.beta(k_first, wins + 1.0, wins.T + 1.0)
    row, col = jnp.arange(k)[:, None], jnp.arange(k)[None, :]
    theta1 = jnp.where(row < col, sample, jnp.where(row > col, 1.0 - sample.T, 0.5))
    copeland = jnp.sum((theta1 > 0.5) & ~eye, axis=1)
    a1 = _argmax_random_ties(k_tie, copeland, in_c)
    theta2 = jax.random.beta(k_second, wins[:, a1] + 1.0, wins[a1, :] + 1.0)
    theta2 = jnp.where(jnp.arange(k) == a1, 0.5, theta2)
    eligible = lower[:, a1] <= 0.5
    a2 = jnp.argmax(jnp.where(eligible, theta2, -jnp.inf)).astype(jnp.int32)
    return jnp.stack([a1, a2])


@struct.dataclass
class WinsState:
    """State of a K-armed dueling agent.

    Attributes:
      wins: ``[K, K]`` float32, ``W[i, j]`` = queried duels ``i`` won against ``j``.
      t: int32 scalar, queried duels so far (self-duels included).
    """

    wins: Array
    t: Array


@dataclasses.dataclass(frozen=True)
class _WinsAgent:
    alpha: float = 0.51

    def __post_init__(self):
        check_float(self, "alpha", self.alpha, low=0.0)

    def pair(self, key: Array, wins: Array, t: Array) -> Array:
        raise NotImplementedError

    def init(self, key: Array, spec: EnvSpec) -> WinsState:
        if spec.num_arms is None or spec.num_arms < 2:
            raise ValueError(f"{type(self).__name__} needs EnvSpec.num_arms >= 2; got num_arms={spec.num_arms}")
        k = spec.num_arms
        return WinsState(wins=jnp.zeros((k, k), jnp.float32), t=jnp.zeros((), jnp.int32))

    def select(self, key: Array, state: WinsState, obs: Observation) -> tuple[Duel, dict[str, Array]]:
        """``B`` independent draws of the rule from the same state, at time ``t = state.t + 1``."""
        batch = obs.batch_size
        keys = jax.random.split(key, batch)
        arms = jax.vmap(self.pair, in_axes=(0, None, None))(keys, state.wins, state.t + 1)
        return Duel(arms=arms.astype(jnp.int32), query=jnp.ones((batch,), bool)), {}

    def update(
        self, key: Array, state: WinsState, obs: Observation, duel: Duel, feedback: Feedback
    ) -> tuple[WinsState, dict[str, Array]]:
        """Adds each queried, non-self duel's outcome to ``W``; ``t`` advances by the queried count."""
        a1, a2 = duel.arms[:, 0], duel.arms[:, 1]
        first_won = feedback.preference > 0.5
        winner, loser = jnp.where(first_won, a1, a2), jnp.where(first_won, a2, a1)
        count = (feedback.queried & (a1 != a2)).astype(jnp.float32)
        wins = state.wins.at[winner, loser].add(count)
        return WinsState(wins=wins, t=state.t + jnp.sum(feedback.queried).astype(jnp.int32)), {}

    def recommend(self, key: Array, state: WinsState, obs: Observation) -> Array:
        """The empirical Copeland winner, for every context of ``obs``: ``[B]`` int32."""
        return jnp.full((obs.batch_size,), copeland_winner(state.wins), jnp.int32)


@dataclasses.dataclass(frozen=True)
class DoubleThompsonSampling(_WinsAgent):
    """Double Thompson Sampling (Wu & Liu 2016, "Double Thompson Sampling for Dueling Bandits", NeurIPS).

    Rule: :func:`dts_pair` — a first candidate by Thompson sampling restricted to the arms of
    maximal upper Copeland score, a second by Thompson sampling against it among the arms not
    confidently beaten by it (``L_{i,a1} ≤ ½``). May play ``a1 == a2`` (module docstring).

    Attributes:
      alpha: ``α >= 0`` of the confidence bounds (the paper uses ``α > ½``, default 0.51).
    """

    def pair(self, key, wins, t):
        return dts_pair(key, wins, t, self.alpha)


@dataclasses.dataclass(frozen=True)
class RUCB(_WinsAgent):
    """Relative Upper Confidence Bound (Zoghi, Whiteson, Munos & de Rijke 2014, ICML).

    Rule: :func:`rucb_pair` — a candidate ``c`` uniformly among the arms whose upper bounds
    against every arm are ``≥ ½`` (any arm if none), then its strongest optimistic challenger
    ``d = argmax_j U_jc``. May play ``c == d`` (module docstring).

    Attributes:
      alpha: ``α >= 0`` of the confidence bounds (the paper's analysis needs ``α > ½``; default 0.51).
    """

    def pair(self, key, wins, t):
        return rucb_pair(key, wins, t, self.alpha)
