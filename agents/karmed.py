"""K-armed dueling bandits: Double Thompson Sampling and RUCB (docs/design.md §6, "Classical CDB").

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

Speed (``benchmarks/karmed_throughput.py``): drawing DTS's ``K²`` Beta samples with
``jax.random.beta`` (a per-element gamma rejection loop, vmapped over seeds) cost hundreds of times
the rest of a round. DTS therefore draws only what its rule reads: the signs ``[θ¹_ij > ½]`` from
``P(θ¹_ij > ½)``, which the state keeps exact by a binomial recurrence (:func:`beats_half_update`),
and the ``K`` values of ``θ²`` by batched Marsaglia–Tsang gammas (:func:`beta_integer`); the
law of every duel is unchanged. Cheap draws come from :mod:`cdb.rng`.

``recommend`` returns, for every context of ``obs``, the arm with the highest Copeland score
``#{j ≠ i : P̂_ij > ½}`` of the empirical matrix ``P̂ = W/N`` (``P̂ = ½`` for unplayed pairs),
ties to the lowest index.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cdb import rng
from cdb.types import Duel, EnvSpec, Feedback, Observation
from cdb.validation import check_float

Array = jax.Array

__all__ = [
    "RUCB",
    "DoubleThompsonSampling",
    "WinsState",
    "confidence_bounds",
    "copeland_winner",
    "beats_half",
    "beats_half_update",
    "beta_integer",
    "dts_pair",
    "empirical_preferences",
    "gamma_marsaglia_tsang",
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
    return jnp.argmax(jnp.where(mask, rng.uniform(key, mask.shape), -1.0)).astype(jnp.int32)


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


# --------------------------------------------------------------------------------------------
# Double Thompson Sampling: Beta draws without gamma rejection loops where only a sign is used.
# --------------------------------------------------------------------------------------------


def beats_half(wins: Array) -> Array:
    """``q_ij = P(θ_ij > ½)`` for ``θ_ij ~ Beta(W_ij + 1, W_ji + 1)``, ``[K, K]`` float32, from scratch.

    For integer ``a, b``, ``P(Beta(a, b) ≤ x) = P(Bin(a + b − 1, x) ≥ a)``, so
    ``q = P(Bin(n, ½) ≤ a − 1)`` with ``n = a + b − 1`` — the regularized incomplete beta
    function ``I_{½}(b, a)`` (``jax.scipy.special.betainc``). The agent keeps ``q`` up to date
    by :func:`beats_half_update` instead; this is the reference it must match.
    """
    wins = jnp.asarray(wins, jnp.float32)
    return jax.scipy.special.betainc(wins.T + 1.0, wins + 1.0, 0.5)


def beats_half_update(q: Array, log_mass: Array, a: Array, b: Array, a_won: Array) -> tuple[Array, Array]:
    """One more duel of a pair: ``q = P(S_n ≤ a − 1)`` and ``m = P(S_n = a − 1)`` for ``S_n ~ Bin(n, ½)``.

    ``(a, b) = (W_ij + 1, W_ji + 1)`` before the duel, ``n = a + b − 1``. Since
    ``S_{n+1} = S_n + (a fair coin)``:

    * ``i`` won (``a → a + 1``): ``q ← q + ½ P(S_n = a) = q + ½ m b/a``,  ``m ← m (a + b)/(2a)``;
    * ``j`` won (``b → b + 1``): ``q ← q − ½ m``,                        ``m ← m (a + b)/(2(b + 1))``.

    ``m`` is kept as ``log m`` (it underflows float32 for lopsided pairs). Start: ``a = b = 1``,
    ``q = m = ½``. Each step rounds once, so after ``N`` duels of a pair ``q`` is within about
    ``N`` float32 ulps of :func:`beats_half` (checked in the tests).

    Args:
      q, log_mass: scalars (or arrays) of the pair before the duel.
      a, b: float32 ``W_ij + 1`` and ``W_ji + 1`` before the duel.
      a_won: bool, ``i`` won.
    """
    m = jnp.exp(log_mass)
    q_new = jnp.where(a_won, q + 0.5 * m * b / a, q - 0.5 * m)
    log_mass = log_mass + jnp.log((a + b) / jnp.where(a_won, 2.0 * a, 2.0 * (b + 1.0)))
    return jnp.clip(q_new, 0.0, 1.0), log_mass


def gamma_marsaglia_tsang(key: Array, shape_param: Array, proposals: int = 3) -> Array:
    """Exact ``Gamma(α, 1)`` draws for ``α ≥ 1`` (Marsaglia & Tsang 2000), shaped like ``shape_param``.

    ``d = α − ⅓``, ``c = 1/√(9d)``; propose ``x ~ N(0, 1)``, ``v = (1 + cx)³``, ``u ~ U(0, 1)``;
    accept ``dv`` if ``v > 0`` and ``log u < x²/2 + d − dv + d log v`` (acceptance ≥ 0.95 for
    ``α ≥ 1``). The first ``proposals`` proposals of every entry are drawn at once with
    :mod:`cdb.rng` (one hash per two words); entries that reject them all, rarely, draw further
    rounds in a ``while_loop`` until accepted, so the draw is exact rejection sampling.
    """
    alpha = jnp.asarray(shape_param, jnp.float32)
    d = alpha - 1.0 / 3.0
    c = jax.lax.rsqrt(9.0 * d)

    def propose(k, n):
        k_x, k_u = jax.random.split(k)
        x = rng.normal(k_x, (n, *alpha.shape))
        u = rng.uniform(k_u, (n, *alpha.shape))
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v + d * jnp.log(jnp.where(v > 0, v, 1.0)))
        first = jnp.argmax(ok, axis=0)
        value = jnp.take_along_axis(d * v, first[None], axis=0)[0]
        return jnp.any(ok, axis=0), value

    k_first, k_more = jax.random.split(key)
    done, value = propose(k_first, proposals)

    def more(carry):
        i, done, value = carry
        ok, new = propose(jax.random.fold_in(k_more, i), 1)
        return i + 1, done | ok, jnp.where(done, value, new)

    _, _, value = jax.lax.while_loop(lambda c: ~jnp.all(c[1]), more, (jnp.int32(0), done, value))
    return value


def beta_integer(key: Array, a: Array, b: Array) -> Array:
    """``Beta(a, b)`` draws for ``a, b ≥ 1``: ``X / (X + Y)``, ``X ~ Gamma(a)``, ``Y ~ Gamma(b)``.

    The gammas are :func:`gamma_marsaglia_tsang` draws; ``a`` and ``b`` have one shape.
    """
    g = gamma_marsaglia_tsang(key, jnp.stack([a, b]))
    return g[0] / (g[0] + g[1])


def dts_pair(key: Array, wins: Array, t: Array | int, alpha: float, q: Array | None = None) -> Array:
    """Double Thompson Sampling's duel (Wu & Liu 2016, Algorithm 1): ``[2]`` int32 ``(a1, a2)``.

    First candidate: the upper Copeland scores ``ζ_i = #{j ≠ i : U_ij > ½}`` give
    ``C = argmax_i ζ_i``; sample ``θ¹_ij ~ Beta(W_ij + 1, W_ji + 1)`` for ``i < j``,
    ``θ¹_ji = 1 − θ¹_ij``; ``a1 = argmax_{i ∈ C} #{j ≠ i : θ¹_ij > ½}``, ties at random.
    Second candidate: ``θ²_i ~ Beta(W_{i,a1} + 1, W_{a1,i} + 1)`` for ``i ≠ a1``, ``θ²_{a1} = ½``;
    ``a2 = argmax_{i : L_{i,a1} ≤ ½} θ²_i`` (``a1`` itself is always eligible, ``L_{a1,a1} = ½``).

    The first sample enters only through the signs ``[θ¹_ij > ½]``, so those are drawn directly:
    ``[θ¹_ij > ½] = [u_ij < q_ij]`` with ``u_ij ~ U(0, 1)`` and ``q_ij = P(θ¹_ij > ½)``
    (:func:`beats_half`) — the same law as drawing ``θ¹`` and comparing, for one uniform per pair
    instead of two gamma rejection loops. The second sample's values matter, so ``θ²`` is drawn
    (:func:`beta_integer`).

    Args:
      key: PRNG key.
      wins: ``[K, K]`` wins matrix.
      t: the current time step (``>= 1``).
      alpha: ``α`` of the confidence bounds.
      q: ``[K, K]`` :func:`beats_half` of ``wins`` when the caller keeps it (the agent does);
        ``None`` computes it.
    """
    k_first, k_tie, k_second = jax.random.split(key, 3)
    wins = jnp.asarray(wins, jnp.float32)
    k = wins.shape[0]
    q = beats_half(wins) if q is None else q
    eye = jnp.eye(k, dtype=bool)
    upper, _ = confidence_bounds(wins, t, alpha)
    upper_copeland = jnp.sum((upper > 0.5) & ~eye, axis=1)
    in_c = upper_copeland == jnp.max(upper_copeland)
    row, col = np.triu_indices(k, 1)
    index = np.zeros((k, k), np.int32)
    index[row, col] = index[col, row] = np.arange(row.size)
    u = rng.uniform(k_first, (row.size,))[index]  # one uniform per pair i < j, shared with (j, i)
    upper_half = jnp.asarray(np.triu(np.ones((k, k), bool), 1))
    first_wins = u < q  # [θ¹_ij > ½] on i < j
    theta1_above = jnp.where(upper_half, first_wins, jnp.where(upper_half.T, ~first_wins.T, False))
    copeland = jnp.sum(theta1_above, axis=1)
    a1 = _argmax_random_ties(k_tie, copeland, in_c)
    theta2 = beta_integer(k_second, wins[:, a1] + 1.0, wins[a1, :] + 1.0)
    theta2 = jnp.where(jnp.arange(k) == a1, 0.5, theta2)
    n_col = wins[:, a1] + wins[a1, :]
    lower_col = _ratio(wins[:, a1], n_col) - jnp.sqrt(
        _ratio(alpha * jnp.log(jnp.asarray(t, jnp.float32)) * jnp.ones_like(n_col), n_col)
    )
    eligible = jnp.where(jnp.arange(k) == a1, True, lower_col <= 0.5)
    a2 = jnp.argmax(jnp.where(eligible, theta2, -jnp.inf)).astype(jnp.int32)
    return jnp.stack([a1, a2])


@struct.dataclass
class WinsState:
    """State of a K-armed dueling agent.

    Attributes:
      wins: ``[K, K]`` float32, ``W[i, j]`` = queried duels ``i`` won against ``j``.
      t: int32 scalar, queried duels so far (self-duels included).
      beats_half: ``[K, K]`` float32 ``q_ij = P(Beta(W_ij + 1, W_ji + 1) > ½)`` (Double Thompson
        Sampling keeps it, :func:`beats_half_update`; ``None`` for RUCB).
      log_mass: ``[K, K]`` float32 ``log P(Bin(W_ij + W_ji + 1, ½) = W_ij)``, its companion.
    """

    wins: Array
    t: Array
    beats_half: Array | None = None
    log_mass: Array | None = None


@dataclasses.dataclass(frozen=True)
class _WinsAgent:
    alpha: float = 0.51

    def __post_init__(self):
        check_float(self, "alpha", self.alpha, low=0.0)

    def pair(self, key: Array, wins: Array, t: Array) -> Array:
        raise NotImplementedError

    def init(self, key: Array, spec: EnvSpec) -> WinsState:
        if not spec.k_armed:
            raise ValueError(
                f"{type(self).__name__} needs a K-armed environment (EnvSpec.k_armed=True, e.g. KArmedDuel); got "
                f"k_armed={spec.k_armed} (num_arms={spec.num_arms}, feature_dim={spec.feature_dim}): its arms change "
                "with the context, so a wins matrix over arm indices means nothing there"
            )
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
        counted = feedback.queried & (a1 != a2)
        t = state.t + jnp.sum(feedback.queried).astype(jnp.int32)
        if state.beats_half is None:
            wins = state.wins.at[winner, loser].add(counted.astype(jnp.float32))
            return state.replace(wins=wins, t=t), {}

        def add(carry, row):  # one duel at a time: a pair may recur within the batch
            wins, q, log_m = carry
            w, lo, keep = row
            a, b = wins[w, lo] + 1.0, wins[lo, w] + 1.0
            # the winner's entry gains a win (a → a + 1), the loser's entry a loss (its b → b + 1)
            q_w, m_w = beats_half_update(q[w, lo], log_m[w, lo], a, b, True)
            q_l, m_l = beats_half_update(q[lo, w], log_m[lo, w], b, a, False)
            idx = (jnp.stack([w, lo]), jnp.stack([lo, w]))
            q = jnp.where(keep, q.at[idx].set(jnp.stack([q_w, q_l])), q)
            log_m = jnp.where(keep, log_m.at[idx].set(jnp.stack([m_w, m_l])), log_m)
            return (wins.at[w, lo].add(keep.astype(jnp.float32)), q, log_m), None

        (wins, q, log_m), _ = jax.lax.scan(
            add, (state.wins, state.beats_half, state.log_mass), (winner, loser, counted)
        )
        return state.replace(wins=wins, t=t, beats_half=q, log_mass=log_m), {}

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

    def init(self, key: Array, spec: EnvSpec) -> WinsState:
        """No duel yet: ``W = 0``, ``q = P(Beta(1, 1) > ½) = ½`` and ``P(Bin(1, ½) = 0) = ½`` everywhere."""
        state = super().init(key, spec)
        half = jnp.full(state.wins.shape, 0.5, jnp.float32)
        return state.replace(beats_half=half, log_mass=jnp.log(half))

    def select(self, key: Array, state: WinsState, obs: Observation) -> tuple[Duel, dict[str, Array]]:
        """``B`` independent draws of :func:`dts_pair` from the same state, at time ``t = state.t + 1``."""
        batch = obs.batch_size
        keys = jax.random.split(key, batch)
        arms = jax.vmap(dts_pair, in_axes=(0, None, None, None, None))(
            keys, state.wins, state.t + 1, self.alpha, state.beats_half
        )
        return Duel(arms=arms.astype(jnp.int32), query=jnp.ones((batch,), bool)), {}

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
