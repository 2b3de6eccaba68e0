"""cdb.linalg: each function against an independent computation (numpy inverses, a float64 Newton)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb import linalg


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


@pytest.mark.parametrize("symmetric", [True, False])
def test_sherman_morrison_is_the_inverse_of_the_rank_one_update(symmetric):
    rng = np.random.default_rng(0)
    a = _spd(rng, 4)
    u = rng.normal(size=4)
    v = u if symmetric else rng.normal(size=4)
    got = linalg.sherman_morrison(jnp.asarray(np.linalg.inv(a), jnp.float32), jnp.asarray(u), None if symmetric else v)
    np.testing.assert_allclose(got, np.linalg.inv(a + np.outer(u, v)), rtol=1e-4, atol=1e-6)


def test_sherman_morrison_rows_skips_masked_rows():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3)).astype(np.float32)
    mask = np.array([True, False, True, True, False])
    v = 2.0 * np.eye(3) + z[mask].T @ z[mask]
    got = np.asarray(linalg.sherman_morrison_rows(jnp.eye(3) / 2.0, jnp.asarray(z), jnp.asarray(mask)))
    np.testing.assert_allclose(got, np.linalg.inv(v), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got, got.T)
    # One row: the same matrix as the general rank-one formula with v = u.
    one = linalg.sherman_morrison_rows(jnp.eye(3) / 2.0, jnp.asarray(z[:1]), jnp.ones(1, bool))
    np.testing.assert_allclose(one, linalg.sherman_morrison(jnp.eye(3) / 2.0, jnp.asarray(z[0])), rtol=1e-6, atol=1e-7)


def test_rls_rows_is_the_ridge_solution():
    rng = np.random.default_rng(2)
    d, members, n, lam = 3, 4, 7, 0.5
    theta0 = rng.normal(size=(members, d))
    x = rng.normal(size=(n, d))
    x[3] = 0.0  # a zero row is skipped
    y = rng.normal(size=(n, members))
    p, theta = linalg.rls_rows(
        jnp.eye(d, dtype=jnp.float32) / lam,
        jnp.asarray(theta0, jnp.float32),
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.float32),
    )
    gram = lam * np.eye(d) + x.T @ x
    np.testing.assert_allclose(p, np.linalg.inv(gram), rtol=1e-4, atol=1e-6)
    # θ_e = argmin Σ (y_{e,s} − θᵀx_s)² + λ‖θ − θ_e⁰‖², solved directly.
    expected = np.linalg.solve(gram, (lam * theta0 + y.T @ x).T).T
    np.testing.assert_allclose(theta, expected, rtol=1e-4, atol=1e-5)
    # x = 0 is exactly the identity.
    p1, t1 = linalg.rls_update(p, theta, jnp.zeros(d), jnp.ones(members))
    np.testing.assert_array_equal(p1, p)
    np.testing.assert_array_equal(t1, theta)


def test_pair_widths_against_the_definition():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(5, 3))
    v_inv = np.linalg.inv(_spd(rng, 3))
    diff = features[:, None] - features[None]
    expected = np.sqrt(np.einsum("ijd,de,ije->ij", diff, v_inv, diff))
    got = linalg.pair_widths(jnp.asarray(features, jnp.float32), jnp.asarray(v_inv, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.diag(np.asarray(got)) == 0.0)


def test_logistic_nll_by_hand():
    z = np.array([[1.0, 2.0], [-0.5, 0.0], [3.0, -1.0]], np.float32)
    theta = np.array([0.3, -0.2], np.float32)
    label = np.array([1.0, 0.0, 1.0], np.float32)
    weight = np.array([1.0, 2.0, 0.0], np.float32)
    s = z @ theta
    expected = np.sum(weight * (np.log1p(np.exp(s)) - label * s))
    got = linalg.logistic_nll(*(jnp.asarray(a) for a in (theta, z, label, weight)))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def _newton_float64(z, y, w, l2, iters=50):
    """Plain Newton on the ridge logistic MLE in float64 (a tiny, well-conditioned problem)."""
    theta = np.zeros(z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-z @ theta))
        grad = (w * (p - y)) @ z + l2 * theta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + l2 * np.eye(z.shape[1])
        theta = theta - np.linalg.solve(hess, grad)
    return theta


def test_fit_logistic_matches_a_float64_newton_on_a_tiny_problem():
    z = np.array([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.7], [-1.1, -0.4], [0.2, 0.9]])
    y = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    w = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    expected = _newton_float64(z, y, w, 0.3)
    theta, nll = linalg.fit_logistic(jnp.zeros(2), *(jnp.asarray(a, jnp.float32) for a in (z, y, w)), 0.3, 10)
    np.testing.assert_allclose(theta, expected, rtol=1e-4, atol=1e-5)
    s = z @ expected
    np.testing.assert_allclose(float(nll), np.sum(w * (np.logaddexp(0, s) - y * s)) / 4, rtol=1e-5)


def test_fit_logistic_reaches_the_regularised_optimum():
    rng = np.random.default_rng(1)
    theta_star = np.array([1.5, -1.0, 0.5], np.float32)
    z = rng.normal(size=(400, 3)).astype(np.float32)
    y = (rng.random(400) < 1 / (1 + np.exp(-z @ theta_star))).astype(np.float32)
    weight = np.ones(400, np.float32)
    weight[-50:] = 0.0  # empty slots must not count
    theta, nll = linalg.fit_logistic(jnp.zeros(3), jnp.asarray(z), jnp.asarray(y), jnp.asarray(weight), 1.0, 8)
    theta = np.asarray(theta, np.float64)
    p = 1 / (1 + np.exp(-z @ theta))
    grad = (weight * (p - y)) @ z + theta
    assert np.abs(grad).max() < 1e-3, grad
    assert np.dot(theta, theta_star) / np.linalg.norm(theta) / np.linalg.norm(theta_star) > 0.95
    ref = np.sum(weight * (np.logaddexp(0, z @ theta) - y * (z @ theta))) / weight.sum()
    np.testing.assert_allclose(float(nll), ref, rtol=1e-4)


def test_fit_logistic_never_increases_the_objective_from_a_bad_start():
    # Separable data and a far-off warm start: plain Newton would overshoot; the safeguard keeps descent.
    z = jnp.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 2.0]])
    y = jnp.array([1.0, 0.0, 1.0])
    w = jnp.ones(3)

    def objective(th):
        s = z @ th
        return float(jnp.sum(jax.nn.softplus(s) - y * s) + 0.005 * jnp.sum(th * th))

    theta = jnp.array([-20.0, 15.0])
    values = [objective(theta)]
    for _ in range(6):
        theta, _ = linalg.fit_logistic(theta, z, y, w, 0.01, 1)
        values.append(objective(theta))
    assert all(b <= a + 1e-4 for a, b in zip(values[:-1], values[1:], strict=True)), values
    assert values[-1] < 0.1 * values[0]
