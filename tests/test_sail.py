"""SAIL's self-improving term (Ding et al. 2024) against closed forms and exact gradients.

1. Value and per-input gradients on a hand-made batch, written independently with ``math``.
2. A tiny tabular policy π_θ = softmax(θ) over K = 3 responses: the gradient of the surrogate
   equals the paper's extra term, written in numpy with ∇_θ log π_θ(y) = e_y − π_θ.
3. The same policy: DPO loss + SAIL term (both weighted by the stop-gradient sampling
   probabilities) has the exact gradient of the expected loss −J(θ) = −E_{q_θ}[log σ(βΔ)],
   differentiated through q_θ, for every variant; the DPO loss alone does not.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.losses import SAIL_VARIANTS, DAPLoss, sail_term

BETA = 0.5
COEF = 0.7
# log-ratio margins Δ = (0.5 − 2.5, 0.5 − 0.5, 1.5 − (−1.5)) = (−2, 0, 3)
POLICY_CHOSEN = [-1.0, -2.0, -0.5]
REF_CHOSEN = [-1.5, -2.5, -2.0]
POLICY_REJECTED = [-1.0, -4.0, -5.0]
REF_REJECTED = [-3.5, -4.5, -3.5]
DELTA = [-2.0, 0.0, 3.0]
WEIGHT = [1.0, 0.0, 3.0]


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _closed_form(variant, weight=None):
    """Value and d/d(policy_chosen), d/d(policy_rejected), by hand."""
    resp, pref = {"pr": (1, 0), "pp": (1, 1), "dp": (0, 1)}[variant]
    weight = [1.0] * 3 if weight is None else weight
    total = sum(weight)
    value, d_chosen, d_rejected = 0.0, [], []
    for pc, pr, d, w in zip(POLICY_CHOSEN, POLICY_REJECTED, DELTA, weight, strict=True):
        ell = _log_sigmoid(BETA * d)
        value += w * (-ell * (resp * (pc + pr) + pref * ell))
        dell = BETA * _sigmoid(-BETA * d)  # dℓ/dΔ
        d_chosen.append(COEF * w / total * (-ell) * (resp + pref * dell))
        d_rejected.append(COEF * w / total * (-ell) * (resp - pref * dell))
    return COEF * value / total, d_chosen, d_rejected


def _call(variant, weight=None, jit=False):
    def f(pc, pr, rc, rr):
        return sail_term(pc, pr, rc, rr, beta=BETA, coefficient=COEF, variant=variant, weight=weight)

    f = jax.jit(f) if jit else f
    args = [jnp.array(a) for a in (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)]
    value = f(*args)
    grads = jax.grad(f, argnums=(0, 1, 2, 3))(*args)
    return value, grads


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("variant", sorted(SAIL_VARIANTS))
def test_value_and_gradients_match_closed_form(variant, weighted, jit):
    weight = jnp.array(WEIGHT) if weighted else None
    value, (g_pc, g_pr, g_rc, g_rr) = _call(variant, weight, jit)
    want_value, want_pc, want_pr = _closed_form(variant, WEIGHT if weighted else None)
    assert float(value) == pytest.approx(want_value, rel=1e-5)
    np.testing.assert_allclose(np.asarray(g_pc), want_pc, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_pr), want_pr, rtol=1e-5, atol=1e-7)
    # the reference log-probs are constants
    np.testing.assert_array_equal(np.asarray(g_rc), 0.0)
    np.testing.assert_array_equal(np.asarray(g_rr), 0.0)


def test_response_term_lowers_the_likelihood_of_poorly_fit_pairs():
    # ℓ < 0, so the minimised surrogate has gradient −ℓ > 0 on both log-likelihoods: descent
    # lowers the probability of sampled pairs, most of all those with the worst DPO fit.
    _, (g_pc, g_pr, _, _) = _call("pr")
    assert np.all(np.asarray(g_pc) > 0) and np.all(np.asarray(g_pr) > 0)
    assert float(g_pc[0]) > float(g_pc[1]) > float(g_pc[2])  # Δ = −2, 0, 3


def test_zero_weight_zero_coefficient_and_errors():
    args = [jnp.array(a) for a in (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)]
    assert float(sail_term(*args, beta=BETA, coefficient=COEF, weight=jnp.zeros(3))) == 0.0
    grad = jax.grad(lambda pc: sail_term(pc, *args[1:], beta=BETA, coefficient=0.0, variant="pp"))(args[0])
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    with pytest.raises(ValueError, match="variant='xx'"):
        sail_term(*args, beta=BETA, coefficient=COEF, variant="xx")
    with pytest.raises(ValueError, match=r"expected \[N\]"):
        sail_term(args[0][:, None], *args[1:], beta=BETA, coefficient=COEF)


# ----------------------------------------------------------- tabular policy over K responses

K = 3
THETA = np.array([0.3, -0.4, 0.8])
REF_LOGITS = np.array([0.1, 0.2, -0.5])
ORACLE_REWARD = np.array([1.0, -0.5, 0.2])
DATASET_PAIRS = np.array([[0.05, 0.20, 0.10], [0.15, 0.02, 0.18], [0.12, 0.08, 0.10]])  # μ(y1, y2), sums to 1
# every (y1, y2, z): z = 0 "y1 wins", z = 1 "y2 wins"
Y1, Y2, Z = (a.ravel() for a in np.meshgrid(np.arange(K), np.arange(K), np.arange(2), indexing="ij"))
WIN = np.where(Z == 0, Y1, Y2)
LOSE = np.where(Z == 0, Y2, Y1)


def _pairs(theta):
    logp = jax.nn.log_softmax(theta)
    ref = jax.nn.log_softmax(jnp.asarray(REF_LOGITS))
    return logp[WIN], logp[LOSE], ref[WIN], ref[LOSE]


def _sampling_probability(theta, variant):
    """q_θ(y1, y2, z): responses from π_θ (PR, PP) or the dataset μ (DP); labels from the oracle
    (PR) or from π_θ's implicit Bradley–Terry model σ(βΔ) (PP, DP)."""
    pc, pr, rc, rr = _pairs(theta)
    pi = jax.nn.softmax(theta)
    responses = DATASET_PAIRS[Y1, Y2] if variant == "dp" else pi[Y1] * pi[Y2]
    if variant == "pr":
        label = jax.nn.sigmoid(jnp.asarray(ORACLE_REWARD[WIN] - ORACLE_REWARD[LOSE]))
    else:
        label = jax.nn.sigmoid(BETA * ((pc - rc) - (pr - rr)))
    return responses * label


def _exact_loss(theta, variant):
    """−J(θ) = −Σ q_θ log σ(βΔ): the expected DPO loss, differentiated through q_θ too."""
    pc, pr, rc, rr = _pairs(theta)
    q = _sampling_probability(theta, variant)
    return -jnp.sum(q * jax.nn.log_sigmoid(BETA * ((pc - rc) - (pr - rr))))


def _surrogate_loss(theta, variant, coefficient=1.0):
    pc, pr, rc, rr = _pairs(theta)
    q = jax.lax.stop_gradient(_sampling_probability(theta, variant))
    dpo, _ = DAPLoss("dpo", beta=BETA)(pc, pr, rc, rr, weight=q)
    extra = sail_term(pc, pr, rc, rr, beta=BETA, coefficient=coefficient, variant=variant, weight=q)
    return dpo + extra


def _paper_extra_gradient_numpy(variant):
    """The paper's extra term for the loss −J, by hand: Σ q · (−ℓ) · ∇ log q_θ, with
    ∇ log π_θ(y) = e_y − π_θ, ∇ log σ(βΔ) = β σ(−βΔ) (∇ log π_θ(y_w) − ∇ log π_θ(y_l))."""
    pi = np.exp(THETA - THETA.max())
    pi /= pi.sum()
    log_pi = np.log(pi)
    ref = REF_LOGITS - REF_LOGITS.max()
    log_ref = ref - np.log(np.exp(ref).sum())
    q = np.asarray(_sampling_probability(jnp.asarray(THETA), variant), dtype=np.float64)
    total = np.zeros(K)
    for n in range(len(WIN)):
        win, lose = WIN[n], LOSE[n]
        delta = (log_pi[win] - log_ref[win]) - (log_pi[lose] - log_ref[lose])
        ell = -np.log1p(np.exp(-BETA * delta))
        score_w, score_l = np.eye(K)[win] - pi, np.eye(K)[lose] - pi
        grad_log_q = np.zeros(K)
        if variant in ("pr", "pp"):
            grad_log_q += score_w + score_l
        if variant in ("pp", "dp"):
            grad_log_q += BETA / (1.0 + np.exp(BETA * delta)) * (score_w - score_l)
        total += q[n] * (-ell) * grad_log_q
    return total


@pytest.mark.parametrize("variant", sorted(SAIL_VARIANTS))
def test_surrogate_gradient_is_the_papers_extra_term(variant):
    def extra(theta):
        pc, pr, rc, rr = _pairs(theta)
        q = jax.lax.stop_gradient(_sampling_probability(theta, variant))
        return sail_term(pc, pr, rc, rr, beta=BETA, coefficient=COEF, variant=variant, weight=q)

    got = np.asarray(jax.grad(extra)(jnp.asarray(THETA)))
    want = COEF * _paper_extra_gradient_numpy(variant)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(SAIL_VARIANTS))
def test_dpo_plus_sail_term_has_the_exact_online_gradient(variant):
    theta = jnp.asarray(THETA)
    exact = np.asarray(jax.grad(_exact_loss)(theta, variant))
    with_sail = np.asarray(jax.grad(_surrogate_loss)(theta, variant))
    dpo_only = np.asarray(jax.grad(_surrogate_loss)(theta, variant, 0.0))
    np.testing.assert_allclose(with_sail, exact, rtol=1e-4, atol=1e-6)
    assert np.abs(dpo_only - exact).max() > 1e-3  # the term is what closes the gap
