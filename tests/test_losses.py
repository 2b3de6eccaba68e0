"""Preference losses against closed forms written independently in plain Python ``math``.

Hand-made batch: four prompts whose log-ratio margins are Δ = (−2, 0, 0.5, 3).
Every loss is checked with and without ``jax.jit``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.losses import (
    DAP_KINDS,
    DAPLoss,
    bradley_terry_nll,
    dap_objective,
    implicit_reward,
    multi_response_logratio,
    weighted_mean,
    xpo_term,
)

# log π_θ(y_w) − log π_ref(y_w) = (0.5, 0.5, 0.5, 1.5);  log π_θ(y_l) − log π_ref(y_l) = (2.5, 0.5, 0, −1.5)
POLICY_CHOSEN = [-1.0, -2.0, -3.0, -0.5]
REF_CHOSEN = [-1.5, -2.5, -3.5, -2.0]
POLICY_REJECTED = [-1.0, -4.0, -2.0, -5.0]
REF_REJECTED = [-3.5, -4.5, -2.0, -3.5]
CHOSEN_RATIO = [0.5, 0.5, 0.5, 1.5]
REJECTED_RATIO = [2.5, 0.5, 0.0, -1.5]
DELTAS = [-2.0, 0.0, 0.5, 3.0]
BETAS = [0.1, 1.0]
JIT = pytest.mark.parametrize("jit", [False, True], ids=["nojit", "jit"])


def _batch():
    return tuple(jnp.array(v) for v in (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED))


def _maybe_jit(fn, jit):
    return jax.jit(fn) if jit else fn


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _closed_form(kind, d, beta, eps=0.0, margin=0.0):
    """f(βΔ) of each kind, written out from the papers' equations."""
    x = beta * d
    if kind == "dpo":
        return -(1 - eps) * math.log(_sigmoid(x)) - eps * math.log(_sigmoid(-x))
    if kind == "simpo":
        return -(1 - eps) * math.log(_sigmoid(x - margin)) - eps * math.log(_sigmoid(margin - x))
    if kind == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    if kind == "slic":
        return max(0.0, 1 - x)
    if kind == "exponential":
        return math.exp(-x)
    if kind == "truncated_quadratic":
        return max(0.0, 1 - x) ** 2
    if kind == "savage":
        return 1 / (1 + math.exp(x)) ** 2
    raise AssertionError(kind)


REF_KINDS = [k for k in DAP_KINDS if k != "simpo"]


def test_batch_has_the_intended_margins():
    np.testing.assert_allclose(np.array(CHOSEN_RATIO) - np.array(REJECTED_RATIO), DELTAS)
    np.testing.assert_allclose(np.subtract(POLICY_CHOSEN, REF_CHOSEN), CHOSEN_RATIO)
    np.testing.assert_allclose(np.subtract(POLICY_REJECTED, REF_REJECTED), REJECTED_RATIO)


# ------------------------------------------------------------------------------ elementwise f


@JIT
@pytest.mark.parametrize("kind", DAP_KINDS)
def test_dap_objective_matches_closed_form(kind, jit):
    f = _maybe_jit(lambda d, b: dap_objective(kind, d, b), jit)
    for beta in BETAS:
        got = f(jnp.array(DELTAS), beta)
        want = [_closed_form(kind, d, beta) for d in DELTAS]
        assert got.shape == (4,)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_dap_objective_values_spot_checked():
    # numbers worked by hand, independent of _closed_form
    assert float(dap_objective("dpo", jnp.array(0.0), 1.0)) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(dap_objective("ipo", jnp.array(0.0), 0.1)) == pytest.approx(25.0, rel=1e-6)  # (0 − 5)²
    assert float(dap_objective("slic", jnp.array(3.0), 1.0)) == 0.0
    assert float(dap_objective("slic", jnp.array(-2.0), 0.1)) == pytest.approx(1.2, rel=1e-6)
    assert float(dap_objective("truncated_quadratic", jnp.array(-2.0), 1.0)) == pytest.approx(9.0, rel=1e-6)
    assert float(dap_objective("savage", jnp.array(0.0), 1.0)) == pytest.approx(0.25, rel=1e-6)
    assert float(dap_objective("exponential", jnp.array(0.5), 1.0)) == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_dap_objective_is_stable_at_extreme_margins():
    d = jnp.array([-1e3, 1e3])
    for kind in ("dpo", "savage", "slic", "truncated_quadratic", "simpo"):
        assert np.all(np.isfinite(dap_objective(kind, d, 1.0))), kind
    np.testing.assert_allclose(dap_objective("dpo", d, 1.0), [1e3, 0.0], atol=1e-3)
    np.testing.assert_allclose(dap_objective("savage", d, 1.0), [1.0, 0.0], atol=1e-6)


def test_dap_objective_unknown_kind():
    with pytest.raises(ValueError, match="kind='kto'"):
        dap_objective("kto", jnp.zeros(2), 1.0)


# ------------------------------------------------------------------------------ DAPLoss


@JIT
@pytest.mark.parametrize("kind", REF_KINDS)
def test_loss_is_the_mean_of_the_closed_form(kind, jit):
    for beta in BETAS:
        loss_fn = _maybe_jit(DAPLoss(kind, beta=beta, length_normalization=False).__call__, jit)
        loss, info = loss_fn(*_batch())
        want = sum(_closed_form(kind, d, beta) for d in DELTAS) / 4
        assert loss.shape == ()
        assert float(loss) == pytest.approx(want, rel=1e-5)
        assert float(info["dap_loss"]) == pytest.approx(want, rel=1e-5)
        assert float(info["implicit_reward_margin"]) == pytest.approx(beta * sum(DELTAS) / 4, rel=1e-5)
        assert float(info["chosen_reward"]) == pytest.approx(beta * sum(CHOSEN_RATIO) / 4, rel=1e-5)
        assert float(info["rejected_reward"]) == pytest.approx(beta * sum(REJECTED_RATIO) / 4, rel=1e-5)
        assert float(info["preference_accuracy"]) == pytest.approx(0.5)  # Δ = 0.5 and 3 are > 0; Δ = 0 is not


@JIT
def test_label_smoothing_is_conservative_dpo(jit):
    eps = 0.2
    for beta in BETAS:
        loss, _ = _maybe_jit(DAPLoss("dpo", beta=beta, label_smoothing=eps).__call__, jit)(*_batch())
        want = sum(-(1 - eps) * math.log(_sigmoid(beta * d)) - eps * math.log(_sigmoid(-beta * d)) for d in DELTAS) / 4
        plain, _ = DAPLoss("dpo", beta=beta)(*_batch())
        assert float(loss) == pytest.approx(want, rel=1e-5)
        assert abs(float(loss) - float(plain)) > 1e-3


def test_implicit_reward():
    got = implicit_reward(jnp.array([-1.0, -3.0]), jnp.array([-2.0, -1.0]), 0.5)
    np.testing.assert_allclose(got, [0.5, -1.0])


# ------------------------------------------------------------------------------ SimPO

SIMPO_CHOSEN = [-4.0, -6.0]
SIMPO_CHOSEN_LEN = [2.0, 3.0]  # per-token (−2, −2)
SIMPO_REJECTED = [-9.0, -2.0]
SIMPO_REJECTED_LEN = [3.0, 1.0]  # per-token (−3, −2)  ->  Δ = (1, 0)


@JIT
def test_simpo_length_normalisation_and_margin(jit):
    beta, margin = 2.0, 0.5
    loss_fn = _maybe_jit(
        lambda pc, pr, lc, lr: DAPLoss("simpo", beta=beta, simpo_margin=margin)(
            pc, pr, None, None, chosen_length=lc, rejected_length=lr
        ),
        jit,
    )
    loss, info = loss_fn(*(jnp.array(v) for v in (SIMPO_CHOSEN, SIMPO_REJECTED, SIMPO_CHOSEN_LEN, SIMPO_REJECTED_LEN)))
    want = (-math.log(_sigmoid(2.0 * 1.0 - 0.5)) - math.log(_sigmoid(2.0 * 0.0 - 0.5))) / 2
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(info["implicit_reward_margin"]) == pytest.approx(2.0 * 0.5, rel=1e-5)  # β · mean Δ
    assert float(info["preference_accuracy"]) == pytest.approx(0.5)
    # un-normalised sums would give Δ = (5, −4): a different loss
    unnormalised = (-math.log(_sigmoid(2.0 * 5.0 - 0.5)) - math.log(_sigmoid(2.0 * -4.0 - 0.5))) / 2
    assert abs(float(loss) - unnormalised) > 1.0


def test_simpo_ignores_the_reference_and_margin_raises_the_loss():
    args = [jnp.array(v) for v in (SIMPO_CHOSEN, SIMPO_REJECTED)]
    lengths = dict(chosen_length=jnp.array(SIMPO_CHOSEN_LEN), rejected_length=jnp.array(SIMPO_REJECTED_LEN))
    a, _ = DAPLoss("simpo", beta=2.0)(*args, None, None, **lengths)
    b, _ = DAPLoss("simpo", beta=2.0)(*args, jnp.array([9.0, -9.0]), jnp.array([3.0, 7.0]), **lengths)
    c, _ = DAPLoss("simpo", beta=2.0, simpo_margin=1.0)(*args, **lengths)
    assert float(a) == float(b)
    assert float(c) > float(a) + 0.1


def test_simpo_needs_lengths():
    with pytest.raises(ValueError, match="chosen_length"):
        DAPLoss("simpo")(jnp.array(SIMPO_CHOSEN), jnp.array(SIMPO_REJECTED))


# ------------------------------------------------------------------------------ mDPO / mIPO

# two prompts, k = 3 chosen and k = 3 rejected responses each
M_POLICY_CHOSEN = [[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]]
M_REF_CHOSEN = [[-1.5, -1.5, -1.5], [-2.0, -1.0, -3.0]]  # ratios (0.5, −0.5, −1.5) -> −0.5;  (1, 0, 2) -> 1
M_POLICY_REJECTED = [[-2.0, -2.0, -5.0], [-4.0, -2.0, -3.0]]
M_REF_REJECTED = [[-3.0, -1.0, -2.0], [-1.0, -2.0, -3.0]]  # ratios (1, −1, −3) -> −1;  (−3, 0, 0) -> −1
M_DELTAS = [0.5, 2.0]  # (−0.5 − (−1),  1 − (−1))


def _multi_batch():
    return tuple(jnp.array(v) for v in (M_POLICY_CHOSEN, M_POLICY_REJECTED, M_REF_CHOSEN, M_REF_REJECTED))


def test_multi_response_logratio_is_the_mean_log_ratio():
    np.testing.assert_allclose(
        multi_response_logratio(jnp.array(M_POLICY_CHOSEN), jnp.array(M_REF_CHOSEN)), [-0.5, 1.0]
    )
    np.testing.assert_allclose(multi_response_logratio(jnp.array(M_POLICY_CHOSEN)), [-2.0, -1.0])
    np.testing.assert_allclose(multi_response_logratio(jnp.array([1.0, 2.0]), jnp.array([0.5, 0.5])), [0.5, 1.5])


@JIT
def test_mdpo_and_mipo(jit):
    mdpo, _ = _maybe_jit(DAPLoss("dpo", beta=1.0).__call__, jit)(*_multi_batch())
    mipo, info = _maybe_jit(DAPLoss("ipo", beta=0.5, length_normalization=False).__call__, jit)(*_multi_batch())
    assert float(mdpo) == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-2.0))) / 2, rel=1e-5)
    assert float(mipo) == pytest.approx(((0.5 - 1.0) ** 2 + (2.0 - 1.0) ** 2) / 2, rel=1e-5)  # 1/(2β) = 1
    assert float(info["implicit_reward_margin"]) == pytest.approx(0.5 * sum(M_DELTAS) / 2, rel=1e-5)
    assert float(info["preference_accuracy"]) == 1.0


def test_mdpo_with_k_equal_one_is_dpo():
    pc, pr, rc, rr = _batch()
    a, _ = DAPLoss("dpo", beta=0.7)(pc, pr, rc, rr)
    b, _ = DAPLoss("dpo", beta=0.7)(pc[:, None], pr[:, None], rc[:, None], rr[:, None])
    assert float(a) == pytest.approx(float(b), rel=1e-6)


# ------------------------------------------------------------------------------ length normalisation

# The hand-made batch with response lengths: per-token log-ratios
#   chosen   (0.5/1, 0.5/2, 0.5/5, 1.5/3) = (0.5, 0.25, 0.1, 0.5)
#   rejected (2.5/5, 0.5/1, 0/2, −1.5/3)  = (0.5, 0.5, 0, −0.5)
CHOSEN_LEN = [1.0, 2.0, 5.0, 3.0]
REJECTED_LEN = [5.0, 1.0, 2.0, 3.0]
NORMALISED_DELTAS = [0.0, -0.25, 0.1, 1.0]


def _lengths():
    return dict(chosen_length=jnp.array(CHOSEN_LEN), rejected_length=jnp.array(REJECTED_LEN))


def test_normalised_batch_has_the_intended_margins():
    got = np.divide(CHOSEN_RATIO, CHOSEN_LEN) - np.divide(REJECTED_RATIO, REJECTED_LEN)
    np.testing.assert_allclose(got, NORMALISED_DELTAS, atol=1e-12)


@JIT
def test_ipo_divides_each_log_ratio_by_its_length_by_default(jit):
    """IPO's default is TRL's / Oat's: ((r_w/|y_w| − r_l/|y_l|) − 1/(2β))², here at β = 0.5 (target 1)."""
    beta = 0.5
    loss_fn = _maybe_jit(lambda *a, **k: DAPLoss("ipo", beta=beta)(*a, **k), jit)
    loss, info = loss_fn(*_batch(), **_lengths())
    # (0 − 1)², (−0.25 − 1)², (0.1 − 1)², (1 − 1)²
    want = (1.0 + 1.5625 + 0.81 + 0.0) / 4
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(info["implicit_reward_margin"]) == pytest.approx(beta * sum(NORMALISED_DELTAS) / 4, rel=1e-5)
    assert float(info["chosen_reward"]) == pytest.approx(beta * (0.5 + 0.25 + 0.1 + 0.5) / 4, rel=1e-5)
    assert float(info["preference_accuracy"]) == pytest.approx(0.5)  # Δ = 0.1 and 1 are > 0
    assert DAPLoss("ipo").normalizes_length and DAPLoss("simpo").normalizes_length
    # the sequence-sum form is an explicit option, and differs: Δ = (−2, 0, 0.5, 3)
    summed, _ = DAPLoss("ipo", beta=beta, length_normalization=False)(*_batch(), **_lengths())
    assert float(summed) == pytest.approx((9.0 + 1.0 + 0.25 + 4.0) / 4, rel=1e-5)


@pytest.mark.parametrize("kind", ["dpo", "slic"])
def test_normalisation_is_an_option_of_every_kind(kind):
    beta = 1.0
    assert not DAPLoss(kind).normalizes_length  # the DPO family's default: sequence sums
    plain, _ = DAPLoss(kind, beta=beta)(*_batch(), **_lengths())
    assert float(plain) == pytest.approx(sum(_closed_form(kind, d, beta) for d in DELTAS) / 4, rel=1e-5)
    normed, _ = DAPLoss(kind, beta=beta, length_normalization=True)(*_batch(), **_lengths())
    want = sum(_closed_form(kind, d, beta) for d in NORMALISED_DELTAS) / 4
    assert float(normed) == pytest.approx(want, rel=1e-5)


def test_normalised_multi_response_divides_each_response_by_its_own_length():
    pc, pr, rc, rr = _multi_batch()
    lc = jnp.array([[1.0, 1.0, 3.0], [2.0, 1.0, 4.0]])
    lr = jnp.array([[1.0, 2.0, 3.0], [3.0, 1.0, 1.0]])
    loss, info = DAPLoss("ipo", beta=0.5)(pc, pr, rc, rr, chosen_length=lc, rejected_length=lr)
    chosen = [(0.5 - 0.5 - 0.5) / 3, (0.5 + 0.0 + 0.5) / 3]  # (0.5/1, −0.5/1, −1.5/3), (1/2, 0/1, 2/4)
    rejected = [(1.0 - 0.5 - 1.0) / 3, (-1.0 + 0.0 + 0.0) / 3]  # (1/1, −1/2, −3/3), (−3/3, 0/1, 0/1)
    deltas = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert float(loss) == pytest.approx(sum((d - 1.0) ** 2 for d in deltas) / 2, rel=1e-5)


def test_normalisation_needs_lengths():
    with pytest.raises(ValueError, match="length_normalization=False"):
        DAPLoss("ipo")(*_batch())
    with pytest.raises(ValueError, match="chosen_length"):
        DAPLoss("dpo", length_normalization=True)(*_batch(), chosen_length=jnp.ones(4))
    with pytest.raises(ValueError, match="DAPLoss.length_normalization=False"):
        DAPLoss("simpo", length_normalization=False)
    with pytest.raises(ValueError, match="DAPLoss.length_normalization='yes'"):
        DAPLoss("dpo", length_normalization="yes")


# ------------------------------------------------------------------------------ SFT term


@JIT
def test_sft_term_sequence_sum_and_per_token_mean(jit):
    beta, lam = 1.0, 0.5
    dpo = sum(_closed_form("dpo", d, beta) for d in DELTAS) / 4
    loss_fn = _maybe_jit(DAPLoss("dpo", beta=beta, sft_weight=lam).__call__, jit)
    loss, info = loss_fn(*_batch())
    nll_sum = -sum(POLICY_CHOSEN) / 4  # 1.625
    assert float(info["sft_loss"]) == pytest.approx(nll_sum, rel=1e-6)
    assert float(loss) == pytest.approx(dpo + lam * nll_sum, rel=1e-5)

    lengths = [2.0, 4.0, 3.0, 1.0]
    loss, info = loss_fn(*_batch(), chosen_length=jnp.array(lengths))
    nll_mean = sum(-p / n for p, n in zip(POLICY_CHOSEN, lengths, strict=True)) / 4  # (0.5 + 0.5 + 1 + 0.5) / 4
    assert float(info["sft_loss"]) == pytest.approx(nll_mean, rel=1e-6)
    assert float(loss) == pytest.approx(dpo + lam * nll_mean, rel=1e-5)


def test_sft_term_pushes_chosen_likelihood_up():
    pc, pr, rc, rr = _batch()
    g0 = jax.grad(lambda p: DAPLoss("dpo", beta=1.0)(p, pr, rc, rr)[0])(pc)
    g1 = jax.grad(lambda p: DAPLoss("dpo", beta=1.0, sft_weight=2.0)(p, pr, rc, rr)[0])(pc)
    np.testing.assert_allclose(g1 - g0, -2.0 / 4 * np.ones(4), rtol=1e-5)


# ------------------------------------------------------------------------------ weights


@JIT
@pytest.mark.parametrize("kind", REF_KINDS)
def test_weights_mask_and_average(kind, jit):
    beta = 1.0
    loss_fn = _maybe_jit(DAPLoss(kind, beta=beta, length_normalization=False).__call__, jit)
    loss, info = loss_fn(*_batch(), weight=jnp.array([1.0, 0.0, 1.0, 0.0]))
    want = (_closed_form(kind, DELTAS[0], beta) + _closed_form(kind, DELTAS[2], beta)) / 2
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(info["preference_accuracy"]) == pytest.approx(0.5)  # Δ = −2 (no) and 0.5 (yes)

    soft = [0.5, 1.0, 0.0, 2.0]
    loss, _ = loss_fn(*_batch(), weight=jnp.array(soft))
    want = sum(w * _closed_form(kind, d, beta) for w, d in zip(soft, DELTAS, strict=True)) / sum(soft)
    assert float(loss) == pytest.approx(want, rel=1e-5)


@JIT
def test_all_zero_weights_give_zero_loss_and_finite_gradient(jit):
    pc, pr, rc, rr = _batch()
    loss_fn = DAPLoss("dpo", beta=1.0, sft_weight=1.0)

    def f(p):
        return loss_fn(p, pr, rc, rr, weight=jnp.zeros(4))

    (loss, info), grad = _maybe_jit(jax.value_and_grad(f, has_aux=True), jit)(pc)
    assert float(loss) == 0.0
    assert all(float(v) == 0.0 for v in info.values())
    assert np.all(np.isfinite(grad)) and np.all(grad == 0.0)


def test_weighted_mean():
    assert float(weighted_mean(jnp.array([1.0, 3.0]))) == 2.0
    assert float(weighted_mean(jnp.array([1.0, 3.0]), jnp.array([3.0, 1.0]))) == 1.5
    assert float(weighted_mean(jnp.array([1.0, 3.0]), jnp.zeros(2))) == 0.0


def test_weight_shape_is_checked():
    with pytest.raises(ValueError, match="weight"):
        DAPLoss()(*_batch(), weight=jnp.ones(3))


# ------------------------------------------------------------------------------ gradients


@JIT
def test_dpo_gradient_closed_form_and_sign(jit):
    beta = 1.0
    pc, pr, rc, rr = _batch()
    grads = _maybe_jit(
        jax.grad(lambda a, b, c, d: DAPLoss("dpo", beta=beta)(a, b, c, d)[0], argnums=(0, 1, 2, 3)), jit
    )(pc, pr, rc, rr)
    # ∂/∂ log π(y_w) of −log σ(βΔ) is −β σ(−βΔ), averaged over N = 4
    want = [-beta * _sigmoid(-beta * d) / 4 for d in DELTAS]
    np.testing.assert_allclose(grads[0], want, rtol=1e-5)
    np.testing.assert_allclose(grads[1], [-w for w in want], rtol=1e-5)
    assert np.all(grads[0] < 0) and np.all(grads[1] > 0)
    assert np.all(grads[2] == 0) and np.all(grads[3] == 0)  # the reference is a constant


@pytest.mark.parametrize("kind", DAP_KINDS)
def test_gradients_finite_and_push_chosen_up(kind):
    pc, pr, rc, rr = _batch()
    kwargs = dict(chosen_length=jnp.full(4, 2.0), rejected_length=jnp.full(4, 2.0))
    loss_fn = DAPLoss(kind, beta=0.1)
    g_chosen, g_rejected = jax.grad(lambda a, b: loss_fn(a, b, rc, rr, **kwargs)[0], argnums=(0, 1))(pc, pr)
    assert np.all(np.isfinite(g_chosen)) and np.all(np.isfinite(g_rejected))
    # at Δ = −2 the pair is mis-ranked: every kind raises log π(y_w) and lowers log π(y_l)
    assert g_chosen[0] < 0 and g_rejected[0] > 0
    np.testing.assert_allclose(g_chosen, -g_rejected, rtol=1e-6)


# ------------------------------------------------------------------------------ XPO


@JIT
def test_xpo_term_value_weight_and_sign(jit):
    logp = jnp.array([-2.0, -4.0, -6.0])
    f = _maybe_jit(xpo_term, jit)
    assert float(f(logp, 0.1)) == pytest.approx(0.1 * -4.0, rel=1e-6)
    assert float(f(logp, 0.1, weight=jnp.array([1.0, 1.0, 0.0]))) == pytest.approx(0.1 * -3.0, rel=1e-6)
    assert float(f(logp, 0.1, weight=jnp.zeros(3))) == 0.0
    # minimising +α log π(ỹ_ref) pushes probability off the reference samples
    grad = jax.grad(lambda x: f(x, 0.1))(logp)
    np.testing.assert_allclose(grad, [0.1 / 3] * 3, rtol=1e-6)


# ------------------------------------------------------------------------------ Bradley–Terry


@JIT
def test_bradley_terry_nll_closed_form(jit):
    first, second, label = [1.0, -0.5, 0.0, 30.0], [0.0, 0.5, 2.0, -30.0], [1.0, 0.0, 0.3, 0.0]
    got = _maybe_jit(bradley_terry_nll, jit)(jnp.array(first), jnp.array(second), jnp.array(label))
    want = []
    for a, b, z in zip(first, second, label, strict=True):
        d = a - b
        # log σ(d) = −log(1 + e^{−d}), log σ(−d) = −log(1 + e^{d}); log1p keeps d = 60 exact
        want.append(z * math.log1p(math.exp(-d)) + (1 - z) * (d + math.log1p(math.exp(-d))))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(got[0]) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(beta=0.0), "DAPLoss.beta"),
        (dict(beta=-1.0), "DAPLoss.beta"),
        (dict(beta=float("nan")), "DAPLoss.beta"),
        (dict(label_smoothing=0.5), "DAPLoss.label_smoothing"),
        (dict(label_smoothing=-0.1), "DAPLoss.label_smoothing"),
        (dict(kind="ipo", label_smoothing=0.1), "DAPLoss.label_smoothing"),
        (dict(sft_weight=-0.1), "DAPLoss.sft_weight"),
        (dict(kind="kto"), "DAPLoss.kind"),
        (dict(simpo_margin=float("inf")), "DAPLoss.simpo_margin"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DAPLoss(**kwargs)


def test_valid_config_is_hashable_and_static():
    cfg = DAPLoss("simpo", beta=2.0, label_smoothing=0.1, simpo_margin=0.5, sft_weight=0.0)
    assert hash(cfg) == hash(DAPLoss("simpo", beta=2.0, label_smoothing=0.1, simpo_margin=0.5))
    f = jax.jit(
        lambda c, pc, pr: c(pc, pr, chosen_length=jnp.ones(2), rejected_length=jnp.ones(2))[0],
        static_argnums=0,
    )
    assert np.isfinite(float(f(cfg, jnp.array([-1.0, -2.0]), jnp.array([-2.0, -1.0]))))


def test_call_errors():
    pc, pr, rc, rr = _batch()
    with pytest.raises(ValueError, match="ref_chosen"):
        DAPLoss("dpo")(pc, pr)
    with pytest.raises(ValueError, match="policy_chosen"):
        DAPLoss("dpo")(jnp.zeros((2, 2, 2)), pr, rc, rr)
