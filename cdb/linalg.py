"""Shared linear algebra of the linear dueling agents (docs/design.md §6, "Classical CDB").

One home for the small pieces that MaxInP, CoLSTIM, the optimal-design agents
(:mod:`cdb.agents.linear`, :mod:`cdb.agents.optimal_design`) and the linear ensemble
(:class:`cdb.ensemble.LinearEnsemble`) share. Every function is pure and unbatched (``vmap``
it for seeds or contexts); shapes use ``d`` for the feature dimension and ``n`` for rows.

* **Sherman–Morrison** (Sherman & Morrison 1950): for invertible ``A`` and ``1 + vᵀA⁻¹u ≠ 0``,

      (A + uvᵀ)⁻¹ = A⁻¹ − A⁻¹u vᵀA⁻¹ / (1 + vᵀA⁻¹u),

  ``O(d²)`` instead of the ``O(d³)`` of a fresh inverse (:func:`sherman_morrison`). The design
  matrix ``V = λI + Σ_s z_s z_sᵀ`` of the linear agents grows by symmetric rank-one terms
  ``u = v = z``; :func:`sherman_morrison_rows` applies them for the masked rows of a batch.
* **Recursive least squares** (the same identity in gain form): with ``P = V⁻¹``, adding a row
  ``x`` with targets ``y`` (one per member) to the ridge problem ``θ = P(λθ⁰ + Σ y_s x_s)`` is

      g = P x / (1 + xᵀP x)   (= P_new x),   P ← P − (P x) gᵀ,   θ ← θ + (y − θ x) gᵀ

  (:func:`rls_update`, :func:`rls_rows`; Plackett 1950).
* **Mahalanobis pair widths** ``w_ij = ‖φ_i − φ_j‖_{V⁻¹}`` (:func:`pair_widths`).
* **Logistic (Bradley–Terry) MLE** by safeguarded Newton steps (:func:`logistic_nll`,
  :func:`fit_logistic`).

Matrix products of the linear agents' pieces run at ``Precision.HIGHEST`` (exact float32 on
every backend); the RLS pieces at the default precision, as the linear ensemble always has.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
_BACKTRACK = 0.5 ** jnp.arange(8, dtype=jnp.float32)  # Newton step sizes tried, largest first

__all__ = [
    "fit_logistic",
    "logistic_nll",
    "pair_widths",
    "rls_rows",
    "rls_update",
    "sherman_morrison",
    "sherman_morrison_rows",
]


# --------------------------------------------------------------------------------------------
# Sherman–Morrison and recursive least squares.
# --------------------------------------------------------------------------------------------


def sherman_morrison(a_inv: Array, u: Array, v: Array | None = None) -> Array:
    """``(A + uvᵀ)⁻¹ = A⁻¹ − A⁻¹u vᵀA⁻¹ / (1 + vᵀA⁻¹u)`` from ``A⁻¹`` (module docstring).

    Args:
      a_inv: ``[d, d]`` the inverse of an invertible ``A``.
      u: ``[d]``.
      v: ``[d]``; ``None`` means ``v = u`` (a symmetric rank-one term ``uuᵀ``).

    Returns:
      ``[d, d]``; the caller must keep ``1 + vᵀA⁻¹u`` away from zero (for symmetric positive
      definite ``A`` and ``v = u`` it is ``≥ 1``).
    """
    v = u if v is None else v
    left = jnp.matmul(a_inv, u, precision=_HI)  # A⁻¹u
    right = jnp.matmul(v, a_inv, precision=_HI)  # vᵀA⁻¹
    return a_inv - jnp.outer(left, right) / (1.0 + jnp.dot(v, left, precision=_HI))


def sherman_morrison_rows(v_inv: Array, z: Array, mask: Array) -> Array:
    """``(V + Σ_{b: mask_b} z_b z_bᵀ)⁻¹`` from ``V⁻¹`` by successive symmetric Sherman–Morrison updates.

    For each row with ``mask`` True, in order: ``u = V⁻¹z``, ``V⁻¹ ← V⁻¹ − uuᵀ / (1 + zᵀu)``;
    rows with False are skipped. The result is symmetrised, ``½(V⁻¹ + V⁻ᵀ)``. This is how the
    linear dueling agents keep the inverse of their design matrix ``V_t = λI + Σ_s z_s z_sᵀ``.

    Args:
      v_inv: ``[d, d]`` symmetric positive definite.
      z: ``[n, d]`` rows to add.
      mask: ``[n]`` bool.

    Returns:
      ``[d, d]``.
    """

    def add(inv, row):
        zi, keep = row
        u = jnp.matmul(inv, zi, precision=_HI)
        update = jnp.outer(u, u) / (1.0 + jnp.dot(zi, u, precision=_HI))
        return inv - jnp.where(keep, update, 0.0), None

    inv, _ = jax.lax.scan(add, v_inv, (z.astype(v_inv.dtype), jnp.asarray(mask, bool)))
    return 0.5 * (inv + inv.T)


def rls_update(p: Array, theta: Array, x: Array, y: Array) -> tuple[Array, Array]:
    """One recursive-least-squares step: absorbs the row ``x`` with one target per member.

    With ``P = (λI + Σ_s x_s x_sᵀ)⁻¹`` and ``θ_e = P(λθ_e⁰ + Σ_s y_{e,s} x_s)`` (ridge regression
    towards ``θ_e⁰``), adding ``(x, y)``::

        g = P x / (1 + xᵀP x),   P ← P − (P x) gᵀ,   θ_e ← θ_e + (y_e − θ_eᵀx) g

    — Sherman–Morrison on ``P`` in gain form (``g = P_new x``). ``x = 0`` leaves both unchanged
    exactly, which is how a masked row is skipped.

    Args:
      p: ``[d, d]`` symmetric positive definite.
      theta: ``[E, d]`` one solution per member.
      x: ``[d]``.
      y: ``[E]`` targets.

    Returns:
      ``(P [d, d], θ [E, d])``.
    """
    px = p @ x
    gain = px / (1.0 + x @ px)
    return p - jnp.outer(px, gain), theta + jnp.outer(y - theta @ x, gain)


def rls_rows(p: Array, theta: Array, x: Array, y: Array) -> tuple[Array, Array]:
    """:func:`rls_update` for the rows of ``x [n, d]`` and targets ``y [n, E]``, in order (a ``lax.scan``).

    A row of zeros is a no-op (:func:`rls_update`). Returns ``(P [d, d], θ [E, d])``.
    """

    def absorb(carry, row):
        return rls_update(*carry, *row), None

    (p, theta), _ = jax.lax.scan(absorb, (p, theta), (x, y))
    return p, theta


# --------------------------------------------------------------------------------------------
# Confidence widths.
# --------------------------------------------------------------------------------------------


def pair_widths(features: Array, v_inv: Array) -> Array:
    """``w_ij = ‖φ_i − φ_j‖_{V⁻¹} = sqrt((φ_i − φ_j)ᵀ V⁻¹ (φ_i − φ_j))`` for every pair of arms.

    Computed from ``A = Φ V⁻¹ Φᵀ`` as ``sqrt(max(A_ii + A_jj − 2 A_ij, 0))``.

    Args:
      features: ``[K, d]`` the arms' features ``Φ``.
      v_inv: ``[d, d]`` symmetric positive semi-definite.

    Returns:
      ``[K, K]``, symmetric with a zero diagonal.
    """
    a = jnp.matmul(jnp.matmul(features, v_inv, precision=_HI), features.T, precision=_HI)
    diag = jnp.diagonal(a)
    sq = diag[:, None] + diag[None, :] - 2.0 * a
    k = features.shape[0]
    return jnp.where(jnp.eye(k, dtype=bool), 0.0, jnp.sqrt(jnp.maximum(sq, 0.0)))


# --------------------------------------------------------------------------------------------
# Logistic (Bradley–Terry) maximum likelihood.
# --------------------------------------------------------------------------------------------


def logistic_nll(theta: Array, z: Array, label: Array, weight: Array) -> Array:
    """``Σ_s weight_s [log(1 + e^{θᵀz_s}) − label_s θᵀz_s]``, the Bradley–Terry negative log-likelihood.

    ``z [n, d]`` are differences ``φ_first − φ_second``, ``label [n]`` is 1.0 where the first arm
    won, ``weight [n]``; returns a scalar.
    """
    s = jnp.matmul(z, theta, precision=_HI)
    return jnp.sum(weight * (jax.nn.softplus(s) - label * s))


def fit_logistic(theta: Array, z: Array, label: Array, weight: Array, l2: float, steps: int) -> tuple[Array, Array]:
    """``steps`` safeguarded Newton steps on the ridge-regularised logistic MLE.

    Objective ``L(θ) = logistic_nll(θ) + (l2/2)‖θ‖²`` (strictly convex for ``l2 > 0``), with
    gradient and Hessian

        ∇L = Σ_s w_s (σ(θᵀz_s) − y_s) z_s + l2·θ,     H = Σ_s w_s σ'(θᵀz_s) z_s z_sᵀ + l2·I.

    Each step tries the damped Newton steps ``θ − η H⁻¹∇L`` for ``η = 1, ½, …, 2⁻⁷`` and takes
    the largest that does not increase ``L``; if none does, the bound-optimisation step
    ``θ − (¼ Σ w zzᵀ + l2·I)⁻¹∇L`` (Böhning 1992; ``σ' ≤ ¼``), which never increases ``L``. Near
    the optimum the full Newton step is taken (quadratic convergence).

    Args:
      theta: ``[d]`` starting point (warm start).
      z: ``[n, d]`` differences ``φ_first − φ_second``.
      label: ``[n]`` 1.0 where the first arm won.
      weight: ``[n]`` 1.0 for valid rows, 0.0 for empty buffer slots.
      l2: ridge ``λ > 0``.
      steps: number of steps (static).

    Returns:
      ``(θ̂ [d], mean NLL per valid row)`` (0.0 when there is none).
    """
    d = z.shape[-1]
    eye = jnp.eye(d, dtype=jnp.float32)
    z = z.astype(jnp.float32)
    bound_h = 0.25 * jnp.einsum("n,ni,nj->ij", weight, z, z, precision=_HI) + l2 * eye

    def objective(th):
        return logistic_nll(th, z, label, weight) + 0.5 * l2 * jnp.sum(th * th)

    def step(_, th):
        s = jnp.matmul(z, th, precision=_HI)
        p = jax.nn.sigmoid(s)
        grad = jnp.matmul(weight * (p - label), z, precision=_HI) + l2 * th
        hess = jnp.einsum("n,ni,nj->ij", weight * p * (1.0 - p), z, z, precision=_HI) + l2 * eye
        trials = th[None] - _BACKTRACK[:, None] * jnp.linalg.solve(hess, grad)[None]  # [8, d]
        values = jax.vmap(objective)(trials)
        ok = jnp.isfinite(values) & (values <= objective(th))
        safe = th - jnp.linalg.solve(bound_h, grad)
        return jnp.where(jnp.any(ok), trials[jnp.argmax(ok)], safe)

    theta = jax.lax.fori_loop(0, steps, step, theta.astype(jnp.float32))
    count = jnp.sum(weight)
    return theta, logistic_nll(theta, z, label, weight) / jnp.maximum(count, 1.0)
