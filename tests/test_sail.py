"""SAIL's self-improving term (Ding et al. 2024) against closed forms and exact gradients.

1. Value and per-input gradients on a hand-made batch, written independently with ``math``.
2. A tiny tabular policy π_θ = softmax(θ) over K = 3 responses: the gradient of the surrogate
   equals the paper's extra term, written in numpy with ∇_θ log π_θ(y) = e_y − π_θ.
3. The same policy: DPO loss + SAIL term (both weighted by the stop-gradient sampling
   probabilities) has the exact gradient of the expected loss −J(θ) = −E_{q_θ}[log σ(βΔ)],
   differentiated through q_θ, for every variant; the DPO loss alone does not.
4. The SAIL-DP agent (``alignment_presets.sail(variant='dp')``) on the tiny SequenceDuel: offline DPO's
   composition, exactly ``budget`` oracle queries, and a policy objective that is offline DPO's
   plus the 'dp' term on the same minibatch (value by hand, gradient against the authors' form).
"""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sequence_fixtures as seq
from sequence_fixtures import tiny_env  # noqa: F401  (a pytest fixture)

from cdb.agents import alignment, alignment_presets
from cdb.losses import SAIL_VARIANTS, DAPLoss, sail_term
from cdb.objectives import PairBatch, SAILTerm
from cdb.sequences import score_responses

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


# ------------------------------------------------------------------- SAIL-DP, the agent (tier 2)

SAIL_DP_BUDGET = 8  # two rounds of seq.B = 4 prompts
SAIL_DP_ROUNDS = 4


@pytest.fixture(scope="module")
def sail_dp_run(tiny_env):  # noqa: F811
    """``sail_dp`` played by hand on the tiny SequenceDuel: (agent, final state, oracle queries per round)."""
    agent = alignment_presets.sail(tiny_env.reference, variant="dp", budget=SAIL_DP_BUDGET, coefficient=COEF)
    params = tiny_env.default_params
    select, update, step = jax.jit(agent.select), jax.jit(agent.update), jax.jit(tiny_env.step)
    key = jax.random.key(0)
    env_state, obs = tiny_env.reset(jax.random.fold_in(key, 0), params)
    state = agent.init(jax.random.fold_in(key, 1), tiny_env.spec)
    queried = []
    for t in range(SAIL_DP_ROUNDS):
        k_select, k_step, k_update = jax.random.split(jax.random.fold_in(key, 10 + t), 3)
        duel, _ = select(k_select, state, obs)
        next_env_state, next_obs, feedback, _ = step(k_step, env_state, duel, params)
        np.testing.assert_array_equal(feedback.queried, duel.query)
        queried.append(int(np.sum(feedback.queried)))
        state, _ = update(k_update, state, obs, duel, feedback)
        env_state, obs = next_env_state, next_obs
    return agent, state, queried


def test_sail_dp_is_offline_dpo_with_the_coefficient(tiny_env):  # noqa: F811
    ref = tiny_env.reference
    agent = alignment_presets.sail(ref, variant="dp", budget=SAIL_DP_BUDGET, coefficient=COEF)
    offline = alignment_presets.offline_dpo(ref, SAIL_DP_BUDGET)
    assert agent.name == "sail_dp" and agent.policy_terms == (SAILTerm(COEF, 0.1),) and offline.policy_terms == ()
    for field in dataclasses.fields(alignment.AlignmentAgent):
        if field.name not in ("name", "policy_terms"):
            assert getattr(agent, field.name) == getattr(offline, field.name), field.name


def test_sail_dp_queries_exactly_its_dataset(sail_dp_run):
    """N = budget oracle queries, all in the first rounds (B per round), none once the dataset is full."""
    _, state, queried = sail_dp_run
    assert queried == [seq.B, seq.B, 0, 0]
    assert int(state.queries) == SAIL_DP_BUDGET == sum(queried)
    assert int(state.dataset.size) == SAIL_DP_BUDGET


def test_sail_dp_loss_is_offline_dpo_plus_the_dp_term(tiny_env, sail_dp_run):  # noqa: F811
    """On the same minibatch of the dataset and the same (trained) π_θ, sail_dp's objective is
    offline DPO's plus ``sail_term(variant='dp')`` — and nothing else (no 'pr' / 'pp' term) — and
    its extra gradient is that of the authors' form ``−½ρ·mean ℓ²``, ``ℓ = log σ(βΔ)``."""
    agent, state, _ = sail_dp_run
    offline = alignment_presets.offline_dpo(tiny_env.reference, SAIL_DP_BUDGET)
    data = state.dataset
    fields = ("prompts", "chosen", "rejected", "ref_chosen", "ref_rejected")
    # a minibatch as update draws it (nothing new is stored: no pair is queried)
    given = PairBatch(
        **{k: getattr(data, k)[: seq.B] for k in fields},
        prompt_mask=None,  # tier 2: no padding
        weight=jnp.zeros(seq.B),
        routes={},
    )
    new_state, batch = agent._offline_batch(jax.random.key(3), state, given, jnp.zeros(seq.B, bool))
    np.testing.assert_array_equal(new_state.dataset.prompts, data.prompts)
    np.testing.assert_array_equal(batch.weight, 1.0)  # the dataset is full
    assert set(batch.routes) == {"dp"}
    params, beta = state.policy_params, agent.policy_loss.beta

    def logps(p):
        prompts2 = jnp.concatenate([batch.prompts, batch.prompts])
        responses = jnp.concatenate([batch.chosen, batch.rejected])
        return jnp.split(score_responses(agent.policy, p, prompts2, responses).logprob, 2)

    def authors_form(p):  # the extra loss of the authors' DDP code, −½ρ·mean ℓ²
        chosen, rejected = logps(p)
        delta = (chosen - batch.ref_chosen) - (rejected - batch.ref_rejected)
        return -0.5 * COEF * jnp.mean(jax.nn.log_sigmoid(beta * delta) ** 2)

    def term(p):
        chosen, rejected = logps(p)
        return sail_term(
            chosen,
            rejected,
            batch.ref_chosen,
            batch.ref_rejected,
            beta=beta,
            coefficient=COEF,
            variant="dp",
            weight=batch.weight,
        )

    layout = state.layout
    (got, got_info), got_grad = jax.value_and_grad(agent.policy_objective, has_aux=True)(params, batch, layout)
    (base, base_info), base_grad = jax.value_and_grad(offline.policy_objective, has_aux=True)(params, batch, layout)
    # π_θ has left π_ref (trained on the dataset for two rounds), so the pairs' margins are not 0
    chosen, rejected = logps(params)
    delta = np.asarray((chosen - batch.ref_chosen) - (rejected - batch.ref_rejected))
    assert np.abs(delta).min() > 1e-4
    ell = np.log(1.0 / (1.0 + np.exp(-beta * delta.astype(np.float64))))
    # the value: the term's surrogate value ρ·mean(−ℓ·ℓ), by hand
    assert float(got - base) == pytest.approx(COEF * np.mean(-(ell**2)), rel=1e-4)
    assert float(got - base) == pytest.approx(float(term(params)), rel=1e-5, abs=1e-7)
    assert float(got_info["dap_loss"]) == float(base_info["dap_loss"])  # the DAP loss proper is untouched
    # the gradient: offline DPO's + the dp term's = offline DPO's + ∇(−½ρ·mean ℓ²)
    extra = jax.tree.map(lambda a, b: a - b, got_grad, base_grad)
    want = jax.grad(authors_form)(params)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want)) > 1e-4
    chex.assert_trees_all_close(extra, want, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(extra, jax.grad(term)(params), rtol=1e-4, atol=1e-6)


def test_sail_constructor_checks_variant_and_budget(tiny_env):  # noqa: F811
    ref = tiny_env.reference
    with pytest.raises(ValueError, match=r"sail\.variant='dd'"):
        alignment_presets.sail(ref, variant="dd")
    with pytest.raises(ValueError, match=r"sail\.budget=None"):
        alignment_presets.sail(ref, variant="dp")
    with pytest.raises(ValueError, match=r"sail\.budget=0"):
        alignment_presets.sail(ref, variant="dp", budget=0)
    for variant in ("pr", "pp"):
        with pytest.raises(ValueError, match=r"sail\.budget=8"):
            alignment_presets.sail(ref, variant=variant, budget=8)


def test_sail_term_on_responses_not_sampled_from_the_policy_is_rejected(tiny_env):  # noqa: F811
    from cdb.proposers import PolicyAndReference, ReferenceSamples

    ref = tiny_env.reference
    for proposer in (ReferenceSamples(2), PolicyAndReference()):
        with pytest.raises(ValueError, match=r"SAILTerm\(coefficient=0\.3\) needs π_θ's own samples"):
            alignment.AlignmentAgent(ref, proposer=proposer, policy_terms=(SAILTerm(0.3),))
    # the three SAIL agents themselves are allowed, and so is any agent without the term
    for variant, budget in (("pr", None), ("pp", None), ("dp", 8)):
        assert alignment_presets.sail(ref, variant=variant, budget=budget).policy_terms == (SAILTerm(0.3, 0.1),)
    alignment.AlignmentAgent(ref, proposer=ReferenceSamples(2))
