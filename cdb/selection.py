"""Pair-selection rules of a contextual dueling bandit (docs/design.md §6).

Every rule acts on the scores of **one** context, ``scores: [E, K]`` (``E`` ensemble members,
``K`` candidates), and returns the duel ``[2]`` int32 ``(a1, a2)`` with ``a1 != a2`` whenever
``K >= 2``. Rules are frozen dataclasses: their hyper-parameters are static under ``jit`` and
checked at construction. The caller vmaps over contexts, rlax style; :func:`select_pairs` does
it for a batch ``[B, E, K]`` with one key per context::

    rule = EETS(max_tries=8)
    a1, a2 = rule(key, scores)                      # scores [E, K]  -> [2]
    duels = select_pairs(rule, key, batch_scores)   # scores [B, E, K] -> [B, 2]

Ties in a deterministic argmax go to the lowest index. ``min_members`` says how many members
a rule needs to mean what it says (Thompson sampling and variance rules need ``E >= 2``);
agents validate ``E`` against it. With fewer members those rules still return a valid pair.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from cdb import rng
from cdb.rng import below, below_except, uniform_below
from cdb.validation import check_choice, check_float, check_int

Array = jax.Array
PRNGKey = jax.Array

VARIANCE_KINDS = ("probability", "logit")
EETS_FALLBACKS = ("second_best", "random")

__all__ = [
    "BAITS",
    "EETS",
    "Boltzmann",
    "EnsembleDoubleTS",
    "GreedyPair",
    "Infomax",
    "Passive",
    "SelectionRule",
    "Uncertainty",
    "first_argmax",
    "members_argmax",
    "pairwise_preference_variance",
    "select_pairs",
]


@runtime_checkable
class SelectionRule(Protocol):
    """What agents rely on: ``rule(key, scores [E, K]) -> [2]`` int32 and ``rule.min_members``."""

    min_members: ClassVar[int]

    def __call__(self, key: PRNGKey, scores: Array) -> Array: ...


def select_pairs(rule: SelectionRule, key: PRNGKey, scores: Array) -> Array:
    """Applies ``rule`` to every context of a batch.

    Args:
      rule: a selection rule (e.g. :class:`EETS`).
      key: one PRNG key; it is split into ``B`` keys, one per context.
      scores: ``[B, E, K]`` scores of ``K`` candidates under ``E`` members for ``B`` contexts.

    Returns:
      ``[B, 2]`` int32 duels, ``duels[b] == rule(jax.random.split(key, B)[b], scores[b])``.
    """
    scores = jnp.asarray(scores)
    if scores.ndim != 3:
        raise ValueError(f"select_pairs: scores has shape {tuple(scores.shape)}; expected [batch, members, candidates]")
    keys = jax.random.split(key, scores.shape[0])
    return jax.vmap(rule)(keys, scores)


def pairwise_preference_variance(scores: Array, kind: str = "probability") -> Array:
    """Epistemic variance of the preference between every two candidates.

    ``V[i, j] = Var_e[σ(r_e(i) − r_e(j))]`` for ``kind='probability'`` (BAI-TS as in SEA, Liu et
    al. 2024; infomax as in Dwaracherla et al. 2024) or ``V[i, j] = Var_e[r_e(i) − r_e(j)]`` for
    ``kind='logit'`` (the variant of Oat). The variance is over members, population form (ddof 0).

    Args:
      scores: ``[E, K]`` scores of one context.
      kind: ``'probability'`` or ``'logit'``.

    Returns:
      ``[K, K]`` symmetric, zero on the diagonal.
    """
    check_choice("pairwise_preference_variance", "kind", kind, VARIANCE_KINDS)
    scores = _as_scores("pairwise_preference_variance", scores)
    diff = scores[:, :, None] - scores[:, None, :]  # [E, K, K]
    return jnp.var(_preference(diff, kind), axis=0)


# ----------------------------------------------------------------------------------------------
# Rules.


@dataclasses.dataclass(frozen=True)
class Passive:
    """Uniformly random pair without replacement: each ordered pair has probability 1/(K(K−1)).

    The passive (random) baseline of online preference learning; ignores the scores except for K.
    """

    min_members: ClassVar[int] = 1

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        scores = _as_scores(self, scores)
        num = scores.shape[1]
        bits = rng.bits(key, (2,))
        a1 = below(bits[0], num)
        return _pair(a1, below_except(bits[1], num, a1))


@dataclasses.dataclass(frozen=True)
class GreedyPair:
    """Pure exploitation: the top two candidates of the member mean r̄(j) = mean_e r_e(j).

    ``a1 = argmax_j r̄(j)``, ``a2 = argmax_{j ≠ a1} r̄(j)``. Deterministic; ``key`` is unused.
    """

    min_members: ClassVar[int] = 1

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        del key
        mean = jnp.mean(_as_scores(self, scores), axis=0)
        a1 = first_argmax(mean)
        return _pair(a1, _argmax_excluding(mean, a1))


@dataclasses.dataclass(frozen=True)
class EETS:
    """Explore-exploit Thompson sampling, E&E-TS (SEA: Liu et al., 2024, "Sample-Efficient Alignment").

    A member ``e`` is drawn uniformly, ``a1 = argmax_j r_e(j)``. Then up to ``max_tries`` further
    members are drawn uniformly (with replacement) among the other ``E − 1``; ``a2`` is the argmax
    of the first whose argmax differs from ``a1``. If none does, ``a2`` is the ``fallback``:
    ``'second_best'`` = ``argmax_{j ≠ a1} r_e(j)``, or ``'random'`` = a uniformly random ``j ≠ a1``.

    Attributes:
      max_tries: number of further members drawn, ``>= 1``.
      fallback: ``'second_best'`` or ``'random'``.
    """

    max_tries: int = 8
    fallback: str = "second_best"
    min_members: ClassVar[int] = 2

    def __post_init__(self):
        check_int(self, "max_tries", self.max_tries, low=1)
        check_choice(self, "fallback", self.fallback, EETS_FALLBACKS)

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        scores = _as_scores(self, scores)
        num_members, num = scores.shape
        # all of this context's randomness in one draw: the member, the tries, the random fallback
        bits = rng.bits(key, (2 + self.max_tries,))
        member = below(bits[0], num_members)
        member_best = members_argmax(scores)  # computed once for the first member and the tries
        a1 = member_best[member]
        if num_members > 1:  # static; a lone member's tries all agree with it
            tries = below_except(bits[1:-1], num_members, member)
        else:
            tries = jnp.zeros((self.max_tries,), jnp.int32)
        if self.fallback == "second_best":
            fallback = _argmax_excluding(scores[member], a1)
        else:
            fallback = below_except(bits[-1], num, a1)
        return _pair(a1, _first_different(member_best[tries], a1, fallback))


@dataclasses.dataclass(frozen=True)
class BAITS:
    """Best-arm-identification Thompson sampling, BAI-TS (SEA: Liu et al., 2024).

    ``a1 = argmax_j r_e(j)`` for a uniformly drawn member ``e`` (as in :class:`EETS`), then the
    most uncertain challenger of ``a1``:
    ``a2 = argmax_{j ≠ a1} Var_e[σ(r_e(a1) − r_e(j))]`` (``variance='probability'``, the paper), or
    ``Var_e[r_e(a1) − r_e(j)]`` (``variance='logit'``, as in Oat). ``a1`` is masked out, so
    ``a2 != a1`` even when every variance is zero.

    Attributes:
      variance: ``'probability'`` or ``'logit'``.
    """

    variance: str = "probability"
    min_members: ClassVar[int] = 2

    def __post_init__(self):
        check_choice(self, "variance", self.variance, VARIANCE_KINDS)

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        scores = _as_scores(self, scores)
        member = uniform_below(key, (), scores.shape[0])
        a1 = first_argmax(scores[member])
        diff = scores[:, a1][:, None] - scores  # [E, K]: r_e(a1) − r_e(j)
        var = jnp.var(_preference(diff, self.variance), axis=0)  # one row of the [K, K] variance
        return _pair(a1, _argmax_excluding(var, a1))


@dataclasses.dataclass(frozen=True)
class Uncertainty:
    """Most uncertain pair in logit space: ``argmax_{i ≠ j} Var_e[r_e(i) − r_e(j)]``.

    Deterministic; ``key`` is unused. Returns ``(i, j)`` with ``i < j`` (the variance is symmetric);
    ties go to the lowest ``(i, j)`` in row-major order.
    """

    min_members: ClassVar[int] = 2

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        del key
        return _max_variance_pair(self, scores, "logit")


@dataclasses.dataclass(frozen=True)
class Infomax:
    """Information-maximising pair (EE4LLM: Dwaracherla et al., 2024, "Efficient Exploration for LLMs").

    ``argmax_{i ≠ j} Var_e[σ(r_e(i) − r_e(j))]``, the variance of the preference probability.
    Deterministic; ``key`` is unused. Returns ``(i, j)`` with ``i < j``; ties go to the lowest
    ``(i, j)`` in row-major order.
    """

    min_members: ClassVar[int] = 2

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        del key
        return _max_variance_pair(self, scores, "probability")


@dataclasses.dataclass(frozen=True)
class EnsembleDoubleTS:
    """Double Thompson sampling over ensemble members (Wu & Liu, 2016; EE4LLM, Dwaracherla et al., 2024).

    The members play the posterior samples (for the K-armed algorithm on a wins matrix see
    :class:`cdb.agents.DoubleThompsonSampling`).

    Two independent uniform members ``e1, e2``; ``a1 = argmax_j r_e1(j)``, ``a2 = argmax_j r_e2(j)``.
    While ``a2 == a1``, ``e2`` is redrawn (independently, among all members), at most
    ``max_resamples`` times; if every draw agrees with ``a1``, ``a2`` is a uniformly random
    ``j ≠ a1``.

    Attributes:
      max_resamples: redraws of the second member, ``>= 0``.
    """

    max_resamples: int = 8
    min_members: ClassVar[int] = 2

    def __post_init__(self):
        check_int(self, "max_resamples", self.max_resamples, low=0)

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        scores = _as_scores(self, scores)
        num_members, num = scores.shape
        bits = rng.bits(key, (3 + self.max_resamples,))  # e1; e2, then redraws; the fallback
        member_best = members_argmax(scores)
        a1 = member_best[below(bits[0], num_members)]
        draws = below(bits[1:-1], num_members)
        fallback = below_except(bits[-1], num, a1)
        return _pair(a1, _first_different(member_best[draws], a1, fallback))


@dataclasses.dataclass(frozen=True)
class Boltzmann:
    """Boltzmann (softmax) exploration on the member mean r̄(j) = mean_e r_e(j).

    The pair is drawn without replacement with probabilities ∝ ``exp(r̄(j) / τ)``:
    ``P(a1 = i) = softmax(r̄/τ)_i`` and ``P(a2 = j | a1) ∝ exp(r̄(j)/τ)`` over ``j ≠ a1``, via the
    Gumbel top-2 trick (Kool et al., 2019).

    Attributes:
      temperature: τ > 0.
    """

    temperature: float = 1.0
    min_members: ClassVar[int] = 1

    def __post_init__(self):
        check_float(self, "temperature", self.temperature, low=0.0, low_inclusive=False)

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        mean = jnp.mean(_as_scores(self, scores), axis=0)
        perturbed = mean / self.temperature + jax.random.gumbel(key, mean.shape, mean.dtype)
        _, top2 = jax.lax.top_k(perturbed, 2)  # distinct indices, even with ties or infinities
        return top2.astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Helpers.


def _as_scores(owner, scores: Array) -> Array:
    """Checks the static shape ``[E, K]`` with ``E >= 1`` and ``K >= 2``; returns floats."""
    scores = jnp.asarray(scores)
    name = owner if isinstance(owner, str) else type(owner).__name__
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 2:
        raise ValueError(
            f"{name}: scores has shape {tuple(scores.shape)}; expected [members, candidates] "
            "with members >= 1 and candidates >= 2 (the caller vmaps over contexts)"
        )
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    return scores


def _preference(diff: Array, kind: str) -> Array:
    return jax.nn.sigmoid(diff) if kind == "probability" else diff


def _pair(a1: Array, a2: Array) -> Array:
    return jnp.stack([a1, a2]).astype(jnp.int32)


def first_argmax(values: Array, axis: int = -1) -> Array:
    """``jnp.argmax``: the first index of the maximum along ``axis``, a NaN counting as the maximum.

    Computed as a max and a min over a masked iota: XLA:CPU lowers ``argmax`` to a variadic
    (value, index) reduction, which is slower than this form when the reduced axis is not the
    minor one, and selection runs every round for every context (``benchmarks/throughput.py``).
    """
    values = jnp.asarray(values)
    axis = axis % values.ndim
    top = jnp.max(values, axis=axis, keepdims=True)
    hit = (values == top) | jnp.isnan(values)  # max() is NaN iff some value is, and then NaNs win
    index = jax.lax.broadcasted_iota(jnp.int32, values.shape, axis)
    return jnp.min(jnp.where(hit, index, values.shape[axis]), axis=axis)


def members_argmax(scores: Array) -> Array:
    """Every member's best candidate, ``[E]``: ``first_argmax(scores[e])`` for each ``e``.

    Reduced over axis 0 of ``scoresᵀ`` (the same values): ensemble scores come out of their
    contraction members-minor, ``[..., K, E]``, and reducing over the candidates there is an
    elementwise max of contiguous member rows, where reducing ``[E, K]`` over its last axis made
    XLA:CPU transpose the whole score tensor first, a cost visible in E&E-TS's throughput
    (``benchmarks/throughput.py``).
    """
    return first_argmax(jnp.swapaxes(scores, -1, -2), axis=-2)


def _argmax_excluding(values: Array, exclude: Array) -> Array:
    """``argmax_{j ≠ exclude} values[j]``; never returns ``exclude`` (NaN counts as the maximum)."""
    masked = jnp.where(jnp.arange(values.shape[0]) == exclude, -jnp.inf, values)
    return first_argmax(masked)


def _first_different(candidates: Array, a1: Array, fallback: Array) -> Array:
    """The first of ``candidates`` that differs from ``a1``, or ``fallback`` if none does."""
    differs = candidates != a1
    return jnp.where(jnp.any(differs), candidates[jnp.argmax(differs)], fallback)


def _max_variance_pair(owner, scores: Array, kind: str) -> Array:
    scores = _as_scores(owner, scores)
    var = pairwise_preference_variance(scores, kind)
    num = var.shape[0]
    upper = jnp.arange(num)[:, None] < jnp.arange(num)[None, :]  # i < j: V is symmetric up to rounding
    var = jnp.where(upper, var, -jnp.inf)
    i, j = jnp.divmod(jnp.argmax(var), num)
    return _pair(i, j)


@dataclasses.dataclass(frozen=True)
class MaxMargin:
    """The pair with the largest member-mean score margin: ``(argmax_j r̄(j), argmin_j r̄(j))``.

    With implicit rewards ``r̄(j) = β·log π_θ(y_j|x)/π_ref(y_j|x)`` this is APL's pair rule
    (Muldrew et al. 2024): ``argmax_{i,j} |r̄(i) − r̄(j)|``. Ties to the lowest index; if every
    score is equal, the first two candidates.
    """

    min_members: ClassVar[int] = 1

    def __call__(self, key: PRNGKey, scores: Array) -> Array:
        mean = jnp.mean(_as_scores(self, scores), axis=0)
        best, worst = jnp.argmax(mean), jnp.argmin(mean)
        worst = jnp.where(worst == best, jnp.where(best == 0, 1, 0), worst)
        return jnp.stack([best, worst]).astype(jnp.int32)
