"""D-optimal experimental design over feature differences, by Frank–Wolfe (pure JAX).

For a duel of arms ``i, j`` the Bradley–Terry model observes ``z = φ_i − φ_j``; the Fisher
information of a design (a distribution ``w`` over candidate differences ``z_1..z_n``) is, up
to the logistic curvature, ``M(w) = Σ_i w_i z_i z_iᵀ``. A **D-optimal** design maximises

    f(w) = log det(M(w) + εI)        over the simplex  w ≥ 0, Σ w_i = 1,

which shrinks the volume of the confidence ellipsoid of the MLE (Scheid et al. 2024, "Optimal
Design for Reward Modeling in RLHF", use it to choose the pairs to label; Kiefer & Wolfowitz
1960). ``ε`` (``reg``) keeps ``f`` finite when the ``z_i`` do not span ``R^d``.

Its gradient is the leverage ``∂f/∂w_i = z_iᵀ V(w)⁻¹ z_i`` with ``V(w) = M(w) + εI``. The
**Kiefer–Wolfowitz equivalence theorem** (``ε = 0``, spanning ``z``): ``w*`` is optimal iff
``max_i z_iᵀ M(w*)⁻¹ z_i = d``, with equality on the support of ``w*``.

Frank–Wolfe (:func:`d_optimal_design`), ``k = 0, 1, ...``:

* toward step: ``i⁺ = argmax_i g_i``, ``w ← (1 − γ) w + γ e_{i⁺}``, ``γ ∈ [0, 1]``;
* away step (Wolfe 1970; for D-optimal design Atwood 1973, the Wolfe–Atwood algorithm):
  ``i⁻ = argmin_{w_i > 0} g_i``, ``w ← (1 + γ) w − γ e_{i⁻}``, ``γ ∈ [0, w_{i⁻}/(1 − w_{i⁻})]``;
  taken when ``ḡ − g_{i⁻} > g_{i⁺} − ḡ`` with ``ḡ = Σ w_i g_i``. Away steps remove support
  points that the toward steps added too early, and make the convergence linear instead of
  ``O(1/k)`` (Ahipaşaoğlu, Sun & Todd 2008).
* step size ``'line_search'`` (default): the exact maximiser of the concave
  ``γ ↦ log det(V + γ D)`` along the step's direction ``D``, by bisection on its derivative
  ``tr((V + γ D)⁻¹ D)`` (``line_search_iters`` halvings); ``'open_loop'``: the classical
  ``γ_k = 2/(k + 2)``, toward steps only (no away steps).

Query sets. A design is a distribution; a budget of ``T`` queries needs integers:

* :func:`round_design` — counts ``n_i`` summing to ``T`` by the efficient rounding of
  Pukelsheim & Rieder (1992), for an oracle that can be asked the same pair again with a fresh
  label;
* :func:`grouped_d_optimal_design` / :func:`round_grouped_design` — the same criterion when the
  candidates come in groups (one group = the ``P`` pairs of one context) and at most **one**
  pair per group may be queried, ``T`` groups in all. Frank–Wolfe then runs on the relaxation
  ``{w ≥ 0, Σ w = 1, Σ_{p} w_{g,p} ≤ 1/T}``, whose vertices are exactly the feasible query
  sets (``T`` groups, one pair each, weight ``1/T``); its linear oracle takes each group's best
  pair and the ``T`` groups whose best pairs have the largest leverage. This is what a
  streaming oracle allows (:mod:`cdb.agents.optimal_design`).

Shapes: ``n`` candidates, ``d`` features; ``G`` groups of ``P`` candidates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cdb.validation import check_choice, check_float, check_int

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
STEP_SIZES = ("line_search", "open_loop")

__all__ = [
    "STEP_SIZES",
    "d_optimal_design",
    "grouped_d_optimal_design",
    "information_matrix",
    "leverages",
    "log_det",
    "round_design",
    "round_grouped_design",
]


def information_matrix(differences: Array, weights: Array, reg: float = 0.0) -> Array:
    """``V(w) = Σ_i w_i z_i z_iᵀ + reg·I`` → ``[d, d]``; ``differences [..., d]``, ``weights [...]``."""
    d = differences.shape[-1]
    z = jnp.reshape(differences, (-1, d)).astype(jnp.float32)
    w = jnp.reshape(weights, (-1,)).astype(jnp.float32)
    return jnp.einsum("n,ni,nj->ij", w, z, z, precision=_HI) + reg * jnp.eye(d, dtype=jnp.float32)


def log_det(differences: Array, weights: Array, reg: float = 0.0) -> Array:
    """``log det V(w)`` (the D-criterion), a float32 scalar; ``-inf`` when singular."""
    sign, value = jnp.linalg.slogdet(information_matrix(differences, weights, reg))
    return jnp.where(sign > 0, value, -jnp.inf)


def leverages(differences: Array, weights: Array, reg: float = 0.0) -> Array:
    """``g_i = z_iᵀ V(w)⁻¹ z_i`` per candidate (the gradient of :func:`log_det`), shaped like ``weights``."""
    d = differences.shape[-1]
    z = jnp.reshape(differences, (-1, d)).astype(jnp.float32)
    v = information_matrix(differences, weights, reg)
    solved = jnp.linalg.solve(v, z.T)  # [d, n]
    return jnp.reshape(jnp.einsum("ni,in->n", z, solved, precision=_HI), jnp.shape(weights))


def _check_design_args(owner: str, steps, reg, step_size, line_search_iters) -> None:
    check_int(owner, "steps", steps, low=1)
    check_float(owner, "reg", reg, low=0.0)
    check_choice(owner, "step_size", step_size, STEP_SIZES)
    check_int(owner, "line_search_iters", line_search_iters, low=1)


def _line_search(v: Array, direction: Array, gamma_max: Array, iters: int) -> Array:
    """Maximiser over ``[0, gamma_max]`` of the concave ``γ ↦ log det(v + γ·direction)``.

    Bisection on the decreasing derivative ``tr((v + γ D)⁻¹ D)``; ``v`` must be positive definite
    and ``v + γ D`` too on the interval.
    """

    def slope(gamma):
        return jnp.trace(jnp.linalg.solve(v + gamma * direction, direction))

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = slope(mid) > 0
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    # The end point itself is never evaluated: with ε = 0 it may be singular (a full step onto a
    # vertex, or an away step that empties the support). After ``iters`` halvings a slope that
    # stays positive leaves γ within ``γ_max·2^-iters`` of the end, which counts as a full step.
    lo, hi = jax.lax.fori_loop(0, iters, halve, (jnp.zeros_like(gamma_max), gamma_max))
    return jnp.where(slope(jnp.zeros_like(gamma_max)) <= 0, 0.0, 0.5 * (lo + hi))


@functools.partial(jax.jit, static_argnames=("steps", "step_size", "away_steps", "line_search_iters"))
def _frank_wolfe_simplex(z, w0, reg, steps, step_size, away_steps, line_search_iters):
    n, d = z.shape
    eye = jnp.eye(d, dtype=jnp.float32)
    outer = jnp.einsum("ni,nj->nij", z, z, precision=_HI)  # [n, d, d]

    def body(k, w):
        m = jnp.einsum("n,nij->ij", w, outer, precision=_HI)
        v = m + reg * eye
        g = jnp.einsum("ni,in->n", z, jnp.linalg.solve(v, z.T), precision=_HI)
        mean = jnp.sum(w * g)
        toward = jnp.argmax(g)
        active = w > 0
        away = jnp.argmin(jnp.where(active, g, jnp.inf))
        if step_size == "open_loop":
            gamma = 2.0 / (k + 2.0)
            return (1.0 - gamma) * w + gamma * jax.nn.one_hot(toward, n, dtype=w.dtype)
        use_away = away_steps & (mean - g[away] > g[toward] - mean)
        w_away = w[away]
        direction = jnp.where(use_away, m - outer[away], outer[toward] - m)
        gamma_max = jnp.where(use_away, w_away / jnp.maximum(1.0 - w_away, 1e-12), 1.0)
        gamma_max = jnp.minimum(gamma_max, 1e6)
        gamma = _line_search(v, direction, gamma_max, line_search_iters)
        w_toward = (1.0 - gamma) * w + gamma * jax.nn.one_hot(toward, n, dtype=w.dtype)
        w_drop = (1.0 + gamma) * w - gamma * jax.nn.one_hot(away, n, dtype=w.dtype)
        # A full away step removes the point exactly (no rounding residue left in the support).
        w_drop = jnp.where((jnp.arange(n) == away) & (gamma >= gamma_max * (1 - 1e-6)), 0.0, w_drop)
        w_toward = jnp.where(gamma >= 1 - 1e-6, jax.nn.one_hot(toward, n, dtype=w.dtype), w_toward)
        w_new = jnp.maximum(jnp.where(use_away, w_drop, w_toward), 0.0)
        return w_new / jnp.sum(w_new)

    return jax.lax.fori_loop(0, steps, body, w0)


def d_optimal_design(
    differences: Array,
    steps: int = 500,
    *,
    reg: float = 1e-6,
    step_size: str = "line_search",
    away_steps: bool = True,
    line_search_iters: int = 40,
    init: Array | None = None,
) -> Array:
    """D-optimal design weights over candidate differences, by Frank–Wolfe (module docstring).

    Args:
      differences: ``[n, d]`` candidate vectors ``z_i`` (e.g. ``φ_i − φ_j`` of every pair).
      steps: Frank–Wolfe iterations (static).
      reg: ``ε >= 0`` in ``log det(Σ w_i z_i z_iᵀ + εI)``; must be ``> 0`` unless the ``z_i`` span ``R^d``.
      step_size: ``'line_search'`` (exact; away steps if ``away_steps``) or ``'open_loop'`` (``2/(k+2)``).
      away_steps: use Wolfe's away steps (only with ``'line_search'``).
      line_search_iters: bisection halvings of the line search.
      init: starting weights ``[n]`` on the simplex (default uniform).

    Returns:
      ``[n]`` float32 weights, non-negative, summing to one.
    """
    _check_design_args("d_optimal_design", steps, reg, step_size, line_search_iters)
    z = jnp.asarray(differences, jnp.float32)
    if z.ndim != 2:
        raise ValueError(f"d_optimal_design: differences has shape {z.shape}; expected [n, d]")
    n = z.shape[0]
    w0 = jnp.full((n,), 1.0 / n, jnp.float32) if init is None else jnp.asarray(init, jnp.float32)
    return _frank_wolfe_simplex(z, w0, jnp.float32(reg), steps, step_size, bool(away_steps), line_search_iters)


@functools.partial(jax.jit, static_argnames=("steps", "step_size", "line_search_iters"))
def _frank_wolfe_grouped(z, budget, reg, steps, step_size, line_search_iters):
    groups, pairs, d = z.shape
    eye = jnp.eye(d, dtype=jnp.float32)
    cap = 1.0 / budget.astype(jnp.float32)
    flat = z.reshape(groups * pairs, d)
    outer = jnp.einsum("ni,nj->nij", flat, flat, precision=_HI).reshape(groups, pairs, d, d)

    def vertex(g):
        """Linear oracle: each group's best pair; the ``budget`` groups with the largest best values."""
        best_pair = jnp.argmax(g, axis=1)
        best = jnp.max(g, axis=1)
        rank = jnp.argsort(jnp.argsort(-best))
        chosen = rank < budget
        return jnp.where(chosen[:, None], jax.nn.one_hot(best_pair, pairs, dtype=jnp.float32), 0.0) * cap

    def body(k, w):
        m = jnp.einsum("gp,gpij->ij", w, outer, precision=_HI)
        v = m + reg * eye
        g = jnp.einsum("ni,in->n", flat, jnp.linalg.solve(v, flat.T), precision=_HI).reshape(groups, pairs)
        s = vertex(g)
        if step_size == "open_loop":
            gamma = 2.0 / (k + 2.0)
        else:
            direction = jnp.einsum("gp,gpij->ij", s, outer, precision=_HI) - m
            gamma = _line_search(v, direction, jnp.float32(1.0), line_search_iters)
        return (1.0 - gamma) * w + gamma * s

    w0 = jnp.full((groups, pairs), 1.0 / (groups * pairs), jnp.float32)
    return jax.lax.fori_loop(0, steps, body, w0)


def grouped_d_optimal_design(
    differences: Array,
    budget: int | Array,
    steps: int = 300,
    *,
    reg: float = 1e-6,
    step_size: str = "line_search",
    line_search_iters: int = 40,
) -> Array:
    """D-optimal design when at most one candidate per group may be chosen, ``budget`` groups in all.

    Frank–Wolfe on ``{w ≥ 0, Σ w = 1, Σ_p w_{g,p} ≤ 1/budget}`` (module docstring); no away
    steps. Round the result with :func:`round_grouped_design`.

    Args:
      differences: ``[G, P, d]``, the ``P`` candidate differences of each of ``G`` groups.
      budget: ``T``, ``1 <= T <= G`` (an int, or a traced int32 scalar: one compilation serves every budget).
      steps, reg, step_size, line_search_iters: as in :func:`d_optimal_design`.

    Returns:
      ``[G, P]`` float32 weights summing to one, each group's sum at most ``1/budget``.
    """
    _check_design_args("grouped_d_optimal_design", steps, reg, step_size, line_search_iters)
    z = jnp.asarray(differences, jnp.float32)
    if z.ndim != 3:
        raise ValueError(f"grouped_d_optimal_design: differences has shape {z.shape}; expected [G, P, d]")
    _check_budget("grouped_d_optimal_design", budget, z.shape[0])
    budget = jnp.asarray(budget, jnp.int32)
    return _frank_wolfe_grouped(z, budget, jnp.float32(reg), steps, step_size, line_search_iters)


def _check_budget(owner: str, budget, high: int | None) -> None:
    """Validates a concrete budget (an int or an integer scalar array); traced budgets pass."""
    if isinstance(budget, jax.core.Tracer):
        return
    if isinstance(budget, np.ndarray | np.integer | jax.Array) and np.ndim(budget) == 0:
        if np.issubdtype(np.asarray(budget).dtype, np.integer):
            budget = int(budget)
    check_int(owner, "budget", budget, low=1, high=high)


def round_grouped_design(weights: Array, budget: int | Array) -> tuple[Array, Array]:
    """Rounds a grouped design to a query set: the ``budget`` heaviest groups, each with its heaviest pair.

    Args:
      weights: ``[G, P]`` from :func:`grouped_d_optimal_design`.
      budget: ``T``, ``1 <= T <= G``.

    Returns:
      ``(chosen [G] bool with exactly T True, pair [G] int32)``; ties go to the lower group index.
    """
    weights = jnp.asarray(weights, jnp.float32)
    _check_budget("round_grouped_design", budget, weights.shape[0])
    mass = jnp.sum(weights, axis=1)
    rank = jnp.argsort(jnp.argsort(-mass, stable=True), stable=True)
    return rank < budget, jnp.argmax(weights, axis=1).astype(jnp.int32)


@jax.jit
def _efficient_rounding(weights, budget, tol):
    support = weights > tol
    p = jnp.sum(support)
    counts = jnp.where(support, jnp.ceil((budget - 0.5 * p) * weights), 0.0)
    counts = jnp.maximum(counts, 0.0).astype(jnp.int32)
    safe_w = jnp.where(support, weights, 1.0)

    def fix(counts):
        total = jnp.sum(counts)
        up = jnp.argmin(jnp.where(support, counts / safe_w, jnp.inf))
        down = jnp.argmax(jnp.where(support & (counts >= 1), (counts - 1) / safe_w, -jnp.inf))
        return jnp.where(
            total < budget,
            counts.at[up].add(1),
            counts.at[down].add(-1),
        )

    return jax.lax.while_loop(lambda c: jnp.sum(c) != budget, fix, counts)


def round_design(weights: Array, budget: int | Array, *, tol: float = 1e-4) -> Array:
    """Integer query counts ``n_i`` with ``Σ n_i = budget`` by efficient rounding (Pukelsheim & Rieder 1992).

    With support ``S = {i : w_i > tol}`` of size ``p``: ``n_i = ⌈(T − p/2) w_i⌉`` on ``S`` (0 elsewhere),
    then, while ``Σ n < T``, increment an ``i ∈ argmin_S n_i / w_i``; while ``Σ n > T``,
    decrement an ``i ∈ argmax_S (n_i − 1) / w_i``. Ties go to the lowest index.

    Args:
      weights: ``[n]`` design weights on the simplex.
      budget: ``T >= 1``.
      tol: weights at or below it are outside the support.

    Returns:
      ``[n]`` int32 counts summing to ``budget``.
    """
    _check_budget("round_design", budget, None)
    check_float("round_design", "tol", tol, low=0.0)
    weights = jnp.asarray(weights, jnp.float32)
    return _efficient_rounding(weights, jnp.asarray(budget, jnp.int32), jnp.float32(tol))
