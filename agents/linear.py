"""Classical linear contextual dueling bandits: MaxInP and CoLSTIM (docs/design.md §6, "Classical CDB").

Both assume a linear Bradley–Terry model ``P(a ≻ b | x) = σ(θ*ᵀ(φ(x, a) − φ(x, b)))`` and share
one learner (:class:`LinearDuelingAgent`):

* the **design matrix** of the queried differences ``z = φ_{a1} − φ_{a2}``,
  ``V_t = λI + Σ_s z_s z_sᵀ``, and its inverse kept by Sherman–Morrison rank-one updates
  (:func:`cdb.linalg.sherman_morrison_rows`), so ``V_t⁻¹`` costs ``O(d²)`` per duel;
* the **logistic MLE** ``θ̂ = argmin_θ Σ_s [log(1 + e^{θᵀz_s}) − y_s θᵀz_s] + (λ/2)‖θ‖²`` on a
  fixed-size ring buffer (:mod:`cdb.replay`) of the last ``buffer_capacity`` queried pairs,
  by ``mle_steps`` safeguarded Newton steps per round, warm-started at the previous ``θ̂``
  (:func:`cdb.linalg.fit_logistic`). Shapes never change, so a whole run is one ``lax.scan``. ``V_t``
  counts every queried pair ever seen, the MLE only the buffer's (the same set until the
  buffer wraps).
* **recommend** = ``argmax_a θ̂ᵀφ(x, a)`` per context.

Only the pair-selection rule differs; both always play two different arms.

Batches: the ``B`` contexts of a round are chosen independently from the same state (one key
each); the update then adds all ``B`` queried pairs. Self-duels (never played here) and
unqueried rows are not learned from.

Confidence widths: ``w_ij = ‖φ_i − φ_j‖_{V⁻¹} = sqrt((φ_i − φ_j)ᵀ V⁻¹ (φ_i − φ_j))``
(:func:`cdb.linalg.pair_widths`). The papers' theoretical radii (``β_t ∝ sqrt(d log T)/κ``) are far too
conservative for small problems; here the multiplier is a hyper-parameter.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from cdb import replay
from cdb.agents.reward_model_agent import (
    check_feature_spec,
    check_observation,
    duel_pair_features,
    take_pair_features,
)
from cdb.linalg import fit_logistic, pair_widths, sherman_morrison_rows
from cdb.types import Duel, EnvSpec, Feedback, Observation
from cdb.validation import check_choice, check_float, check_int

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
PERTURBATIONS = ("gumbel", "normal")

__all__ = [
    "PERTURBATIONS",
    "CoLSTIM",
    "LinearDuelingAgent",
    "LinearState",
    "MaxInP",
    "colstim_first_arm",
    "colstim_second_arm",
    "learn_pairs",
    "maxinp_candidates",
    "maxinp_pair",
    "random_distinct_pair",
]


# --------------------------------------------------------------------------------------------
# Pure pieces (the linear algebra lives in cdb.linalg).
# --------------------------------------------------------------------------------------------


def random_distinct_pair(key: Array, num_arms: int) -> Array:
    """A uniformly random ordered pair of two different arms, ``[2]`` int32."""
    k1, k2 = jax.random.split(key)
    a1 = jax.random.randint(k1, (), 0, num_arms)
    a2 = (a1 + jax.random.randint(k2, (), 1, num_arms)) % num_arms
    return jnp.stack([a1, a2]).astype(jnp.int32)


# --------------------------------------------------------------------------------------------
# MaxInP (Saha 2021).
# --------------------------------------------------------------------------------------------


def maxinp_candidates(features: Array, theta: Array, v_inv: Array, alpha: float) -> tuple[Array, Array]:
    """MaxInP's candidate set ``C_t`` for one context.

    ``margin_i = min_{j ≠ i} [θ̂ᵀ(φ_i − φ_j) + α‖φ_i − φ_j‖_{V⁻¹}]`` and
    ``C_t = {i : margin_i ≥ 0}``: the arms that no other arm beats with confidence. ``C_t``
    always holds ``argmax_i θ̂ᵀφ_i``.

    Args:
      features: ``[K, d]``; theta: ``[d]``; v_inv: ``[d, d]``; alpha: width multiplier ``α >= 0``.

    Returns:
      ``(in_set [K] bool, margin [K] float32)``.
    """
    scores = jnp.matmul(features, theta, precision=_HI)
    optimistic = scores[:, None] - scores[None, :] + alpha * pair_widths(features, v_inv)
    k = features.shape[0]
    margin = jnp.min(jnp.where(jnp.eye(k, dtype=bool), jnp.inf, optimistic), axis=1)
    return margin >= 0, margin


def maxinp_pair(features: Array, theta: Array, v_inv: Array, alpha: float) -> tuple[Array, Array]:
    """MaxInP's duel for one context: the most informative pair of candidates.

    ``(a1, a2) = argmax_{i, j ∈ C_t, i ≠ j} ‖φ_i − φ_j‖_{V⁻¹}`` (first such pair in row-major
    order on ties). When ``C_t`` is a single arm ``c`` (the paper would then duel ``c`` with
    itself), the second arm is the least dominated other arm, ``argmax_{j ≠ c} margin_j``, so
    the duel still carries information.

    Returns:
      ``(arms [2] int32, |C_t| int32)``.
    """
    in_set, margin = maxinp_candidates(features, theta, v_inv, alpha)
    k = features.shape[0]
    valid = in_set[:, None] & in_set[None, :] & ~jnp.eye(k, dtype=bool)
    flat = jnp.argmax(jnp.where(valid, pair_widths(features, v_inv), -jnp.inf).reshape(-1))
    best_pair = jnp.stack([flat // k, flat % k])
    lone = jnp.argmax(margin)
    runner_up = jnp.argmax(jnp.where(jnp.arange(k) == lone, -jnp.inf, margin))
    arms = jnp.where(jnp.any(valid), best_pair, jnp.stack([lone, runner_up]))
    return arms.astype(jnp.int32), jnp.sum(in_set).astype(jnp.int32)


# --------------------------------------------------------------------------------------------
# CoLSTIM (Bengs, Saha & Hüllermeier 2022).
# --------------------------------------------------------------------------------------------


def colstim_first_arm(
    key: Array, features: Array, theta: Array, v_inv: Array, clip: float, perturbation: str = "gumbel"
) -> Array:
    """CoLSTIM's first arm: ``argmax_i θ̂ᵀφ_i + ε̃_i ‖φ_i‖_{V⁻¹}``.

    ``ε̃_i = min(max(ε_i, −clip), clip)`` with ``ε_i`` i.i.d. from the perturbation distribution
    of the stochastic-transitivity model (standard Gumbel for Bradley–Terry, whose utility
    noises are Gumbel; standard normal for Thurstone / probit).

    Returns: int32 scalar.
    """
    k = features.shape[0]
    if perturbation == "gumbel":
        eps = jax.random.gumbel(key, (k,), jnp.float32)
    else:
        eps = jax.random.normal(key, (k,), jnp.float32)
    eps = jnp.clip(eps, -clip, clip)
    scores = jnp.matmul(features, theta, precision=_HI)
    width = jnp.sqrt(jnp.maximum(jnp.einsum("kd,de,ke->k", features, v_inv, features, precision=_HI), 0.0))
    return jnp.argmax(scores + eps * width).astype(jnp.int32)


def colstim_second_arm(features: Array, theta: Array, v_inv: Array, first: Array, confidence: float) -> Array:
    """CoLSTIM's second arm: ``argmax_{j ≠ a1} θ̂ᵀ(φ_j − φ_{a1}) + c‖φ_j − φ_{a1}‖_{V⁻¹}``.

    The optimistic challenger of the first arm. The paper's argmax runs over all arms; here
    ``j = a1`` is excluded so that the duel is never a self-duel. Returns: int32 scalar.
    """
    k = features.shape[0]
    scores = jnp.matmul(features, theta, precision=_HI)
    bonus = confidence * pair_widths(features, v_inv)[first]
    value = scores - scores[first] + bonus
    return jnp.argmax(jnp.where(jnp.arange(k) == first, -jnp.inf, value)).astype(jnp.int32)


# --------------------------------------------------------------------------------------------
# The shared learner and the agents.
# --------------------------------------------------------------------------------------------


@struct.dataclass
class LinearState:
    """State of a linear dueling agent.

    Attributes:
      theta: ``[d]`` the logistic MLE ``θ̂``.
      v: ``[d, d]`` design matrix ``λI + Σ z zᵀ`` of the queried differences.
      v_inv: ``[d, d]`` its inverse (Sherman–Morrison).
      buffer: ring buffer of the queried pairs (:class:`cdb.replay.ReplayBuffer`).
      t: int32 scalar, rounds learned from so far.
    """

    theta: Array
    v: Array
    v_inv: Array
    buffer: replay.ReplayBuffer
    t: Array


@dataclasses.dataclass(frozen=True)
class LinearDuelingAgent:
    """Logistic-MLE learner shared by the linear dueling agents; subclasses define :meth:`select_one`.

    Attributes:
      lam: ``λ > 0``, ridge of the MLE and prior of the design matrix ``V_0 = λI``.
      mle_steps: Newton steps per round (``>= 1``).
      buffer_capacity: pairs kept for the MLE (``>= 1``).
      explore_rounds: rounds of uniformly random pairs before the rule takes over (the papers'
        initial exploration phase; ``0`` by default since the ridge makes the MLE well defined).
    """

    lam: float = 1.0
    mle_steps: int = 2
    buffer_capacity: int = 1024
    explore_rounds: int = 0

    def __post_init__(self):
        check_float(self, "lam", self.lam, low=0.0, low_inclusive=False)
        check_int(self, "mle_steps", self.mle_steps, low=1)
        check_int(self, "buffer_capacity", self.buffer_capacity, low=1)
        check_int(self, "explore_rounds", self.explore_rounds, low=0)

    @property
    def name(self) -> str:
        return type(self).__name__

    # --- the four functions -------------------------------------------------------------------

    def init(self, key: Array, spec: EnvSpec) -> LinearState:
        check_feature_spec(self.name, spec)
        d = spec.feature_dim
        eye = jnp.eye(d, dtype=jnp.float32)
        return LinearState(
            theta=jnp.zeros((d,), jnp.float32),
            v=self.lam * eye,
            v_inv=eye / self.lam,
            buffer=replay.init_buffer(self.buffer_capacity, d),
            t=jnp.zeros((), jnp.int32),
        )

    def select_one(self, key: Array, state: LinearState, features: Array) -> tuple[Array, dict[str, Array]]:
        """The rule for one context: ``features [K, d]`` → ``(arms [2] int32, scalar info)``."""
        raise NotImplementedError

    def select(self, key: Array, state: LinearState, obs: Observation) -> tuple[Duel, dict[str, Array]]:
        """One duel per context, each drawn independently from the same state (one key per context)."""
        check_observation(self.name, obs, state.theta.shape[-1])
        batch, k = obs.features.shape[:2]
        keys = jax.random.split(key, batch)
        arms, info = jax.vmap(self._select_or_explore, in_axes=(0, None, 0))(keys, state, obs.features)
        # the pair's features travel to ``update`` in ``aux``, as in RewardModelAgent.select
        duel = Duel(arms=arms, query=jnp.ones((batch,), bool), aux=take_pair_features(obs.features, arms))
        return duel, jax.tree.map(jnp.mean, info)

    def _select_or_explore(self, key, state, features):
        k_rule, k_explore = jax.random.split(key)
        arms, info = self.select_one(k_rule, state, features)
        explore = state.t < self.explore_rounds
        return jnp.where(explore, random_distinct_pair(k_explore, features.shape[0]), arms), info

    def update(
        self, key: Array, state: LinearState, obs: Observation, duel: Duel, feedback: Feedback
    ) -> tuple[LinearState, dict[str, Array]]:
        """Adds the queried pairs to ``V``, ``V⁻¹`` and the buffer, then refits ``θ̂``. Info: ``mle_loss``."""
        check_observation(self.name, obs, state.theta.shape[-1])
        first, second = duel_pair_features(obs, duel)
        mask = feedback.queried & (duel.arms[:, 0] != duel.arms[:, 1])
        state = learn_pairs(state, first, second, mask, feedback.preference)
        theta, nll = self.fit(state)
        return state.replace(theta=theta, t=state.t + 1), {"mle_loss": nll}

    def fit(self, state: LinearState) -> tuple[Array, Array]:
        """``mle_steps`` Newton steps on the buffer from ``state.theta``: ``(θ̂, mean NLL)``."""
        buf = state.buffer
        valid = (jnp.arange(buf.capacity) < buf.size).astype(jnp.float32)
        return fit_logistic(state.theta, buf.first - buf.second, buf.label, valid, self.lam, self.mle_steps)

    def recommend(self, key: Array, state: LinearState, obs: Observation) -> Array:
        """``argmax_a θ̂ᵀφ(x, a)`` per context, ``[B]`` int32."""
        check_observation(self.name, obs, state.theta.shape[-1])
        scores = jnp.einsum("bkd,d->bk", obs.features, state.theta, precision=_HI)
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def learn_pairs(state: LinearState, first: Array, second: Array, mask: Array, label: Array) -> LinearState:
    """Adds the rows with ``mask`` of a batch of duels to ``V``, ``V⁻¹`` and the buffer (``θ̂`` unchanged).

    Args:
      first, second: ``[B, d]`` features of each duel's two arms; mask: ``[B]`` bool; label: ``[B]``
        1.0 if the first arm won.
    """
    z = first - second
    w = mask.astype(jnp.float32)
    return state.replace(
        v=state.v + jnp.einsum("b,bi,bj->ij", w, z, z, precision=_HI),
        v_inv=sherman_morrison_rows(state.v_inv, z, mask),
        buffer=replay.add(state.buffer, first, second, label, mask),
    )


@dataclasses.dataclass(frozen=True)
class MaxInP(LinearDuelingAgent):
    """MaxInP — "Maximum-Informative-Pair" (Saha 2021, "Optimal Algorithms for Stochastic Contextual
    Preference Bandits", NeurIPS).

    Per context, with the logistic MLE ``θ̂`` and ``V = λI + Σ zzᵀ`` of the shared learner:

    * ``C_t = {i : θ̂ᵀ(φ_i − φ_j) + α‖φ_i − φ_j‖_{V⁻¹} ≥ 0 for all j ≠ i}`` — arms not dominated
      with confidence (:func:`maxinp_candidates`);
    * play ``(a1, a2) = argmax_{i ≠ j ∈ C_t} ‖φ_i − φ_j‖_{V⁻¹}`` — the pair of candidates whose
      comparison is most uncertain (:func:`maxinp_pair`); if ``|C_t| = 1`` the lone candidate
      duels the least dominated other arm (a documented deviation: the paper's argmax would be a
      self-duel, which this library does not play for feature agents).

    Select info: ``candidate_set_size`` (mean ``|C_t|`` over the batch).

    Attributes:
      alpha: ``α >= 0``, the confidence-width multiplier (the paper's ``β_t``). Other fields:
        :class:`LinearDuelingAgent`.
    """

    alpha: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_float(self, "alpha", self.alpha, low=0.0)

    def select_one(self, key, state, features):
        arms, size = maxinp_pair(features, state.theta, state.v_inv, self.alpha)
        return arms, {"candidate_set_size": size.astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class CoLSTIM(LinearDuelingAgent):
    """CoLSTIM (Bengs, Saha & Hüllermeier 2022, "Stochastic Contextual Dueling Bandits under Linear
    Stochastic Transitivity Models", ICML).

    Per context, imitating the feedback process with perturbed utilities:

    * first arm ``a1 = argmax_i θ̂ᵀφ_i + ε̃_i ‖φ_i‖_{V⁻¹}``, ``ε̃_i = clip(ε_i, ±clip)`` with
      ``ε_i`` i.i.d. from the model's perturbation distribution (Gumbel for Bradley–Terry);
    * second arm ``a2 = argmax_{j ≠ a1} θ̂ᵀ(φ_j − φ_{a1}) + c‖φ_j − φ_{a1}‖_{V⁻¹}``, the
      optimistic challenger of ``a1`` (``j = a1`` excluded, a documented deviation so that the
      duel is never a self-duel).

    The paper sets the trimming threshold and ``c`` to ``sqrt(d log T)`` for horizon ``T``; the
    agent does not know ``T``, so both are hyper-parameters here.

    Attributes:
      confidence: ``c >= 0``, multiplier of the second arm's width.
      perturbation_clip: trimming threshold ``>= 0`` of the perturbations (0 makes the first arm greedy).
      perturbation: ``'gumbel'`` (Bradley–Terry) or ``'normal'`` (Thurstone).
      Other fields: :class:`LinearDuelingAgent`.
    """

    confidence: float = 1.0
    perturbation_clip: float = 3.0
    perturbation: str = "gumbel"

    def __post_init__(self):
        super().__post_init__()
        check_float(self, "confidence", self.confidence, low=0.0)
        check_float(self, "perturbation_clip", self.perturbation_clip, low=0.0)
        check_choice(self, "perturbation", self.perturbation, PERTURBATIONS)

    def select_one(self, key, state, features):
        first = colstim_first_arm(key, features, state.theta, state.v_inv, self.perturbation_clip, self.perturbation)
        second = colstim_second_arm(features, state.theta, state.v_inv, first, self.confidence)
        return jnp.stack([first, second]), {}
