"""Double Thompson Sampling and RUCB (cdb.agents.karmed): bounds by hand, rules, Condorcet winner."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdb
from cdb.agents.karmed import (
    RUCB,
    DoubleThompsonSampling,
    beats_half,
    beats_half_update,
    beta_integer,
    confidence_bounds,
    copeland_winner,
    dts_pair,
    empirical_preferences,
    gamma_marsaglia_tsang,
    rucb_pair,
)
from cdb.environments import KArmedDuel, LinearDuel

# W[i, j] = times i beat j. Pair (1, 2) never played.
WINS = np.array([[0.0, 3.0, 1.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], np.float32)


def test_rucb_bounds_by_hand():
    t, alpha = 5, 0.5
    upper, lower = (np.asarray(a) for a in confidence_bounds(jnp.asarray(WINS), t, alpha))
    r = lambda n: math.sqrt(alpha * math.log(t) / n)  # noqa: E731
    expected_u = np.array(
        [
            [0.5, 3 / 4 + r(4), 1 / 3 + r(3)],
            [1 / 4 + r(4), 0.5, 1 + 1],  # unplayed: x/0 := 1 for both terms
            [2 / 3 + r(3), 1 + 1, 0.5],
        ]
    )
    expected_l = np.array(
        [
            [0.5, 3 / 4 - r(4), 1 / 3 - r(3)],
            [1 / 4 - r(4), 0.5, 0.0],
            [2 / 3 - r(3), 0.0, 0.5],
        ]
    )
    np.testing.assert_allclose(upper, expected_u, rtol=1e-6)
    np.testing.assert_allclose(lower, expected_l, rtol=1e-6, atol=1e-7)
    # At t = 1 the radius vanishes (ln 1 = 0) on played pairs.
    upper1, _ = confidence_bounds(jnp.asarray(WINS), 1, alpha)
    np.testing.assert_allclose(upper1[0, 1], 0.75, rtol=1e-6)


def test_empirical_preferences_and_copeland():
    p = np.asarray(empirical_preferences(jnp.asarray(WINS)))
    np.testing.assert_allclose(p, [[0.5, 0.75, 1 / 3], [0.25, 0.5, 0.5], [2 / 3, 0.5, 0.5]], rtol=1e-6)
    # Copeland scores: arm 0 beats 1; arm 2 beats 0; arm 1 beats none -> tie 0/2, lowest index.
    assert int(copeland_winner(jnp.asarray(WINS))) == 0
    assert int(copeland_winner(jnp.asarray(WINS).at[2, 1].set(1.0))) == 2


def _draws(fn, wins, t, alpha, n=400):
    keys = jax.random.split(jax.random.key(0), n)
    draw = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))
    return np.asarray(draw(keys, jnp.asarray(wins), jnp.int32(t), jnp.float32(alpha)))


def test_rucb_rule():
    # Arm 1 lost 0 of 30 and arm 2 lost 28 of 30 to arm 0: U_10 and U_20 < ½, so C = {0}.
    wins = np.zeros((3, 3), np.float32)
    wins[0, 1], wins[0, 2], wins[2, 0] = 30.0, 28.0, 2.0
    wins[1, 2], wins[2, 1] = 5.0, 5.0
    t, alpha = 71, 0.51
    upper, _ = confidence_bounds(jnp.asarray(wins), t, alpha)
    assert float(upper[1, 0]) < 0.5 and float(upper[2, 0]) < 0.5
    pairs = _draws(rucb_pair, wins, t, alpha)
    assert np.all(pairs[:, 0] == 0)
    # d = argmax_j U_j0: U_00 = ½ beats both challengers, so RUCB exploits with a self-duel.
    assert np.all(pairs[:, 1] == 0)
    # Nothing played yet: every arm is a candidate, and every U_jc = 2 > ½ ties -> random, never c.
    pairs = _draws(rucb_pair, np.zeros((3, 3), np.float32), 1, alpha)
    assert set(pairs[:, 0].tolist()) == {0, 1, 2}
    assert np.all(pairs[:, 0] != pairs[:, 1])
    # No candidate at all (each arm confidently beaten by another): c is uniform over all arms.
    cyclic = np.zeros((3, 3), np.float32)
    cyclic[0, 1] = cyclic[1, 2] = cyclic[2, 0] = 100.0
    pairs = _draws(rucb_pair, cyclic, 301, alpha)
    assert set(pairs[:, 0].tolist()) == {0, 1, 2}


def test_dts_rule():
    # Arm 0 dominates: its upper Copeland score is the unique maximum, so a1 = 0 always;
    # a2 ranges over {i : L_i0 <= ½}, which holds every arm here (none beats arm 0).
    wins = np.zeros((4, 4), np.float32)
    wins[0, 1:] = 40.0
    wins[1:, 0] = 1.0
    wins[1, 2] = wins[2, 1] = wins[1, 3] = wins[3, 1] = wins[2, 3] = wins[3, 2] = 3.0
    pairs = _draws(dts_pair, wins, 200, 0.51)
    assert np.all(pairs[:, 0] == 0)
    assert np.mean(pairs[:, 1] == 0) > 0.9  # θ²_{i0} ~ Beta(2, 41) < ½ = θ²_{00} almost surely
    # Restriction of the second candidate: an arm that confidently beats a1 is never chosen.
    # Confident results 2 ≻ 0, 1 ≻ 2, 0 ≻ 1, 0 ≻ 3 (60 : 0), the rest 2 : 2. Every arm then has
    # upper Copeland score 2, arm 0 is often a1, and against it θ²_2 ~ Beta(61, 1) would win the
    # argmax if arm 2 (L_20 > ½) were eligible; the eligible 1 and 3 draw Beta(1, 61) < ½ = θ²_0.
    wins2 = np.full((4, 4), 2.0, np.float32) * (1 - np.eye(4, dtype=np.float32))
    for i, j in [(2, 0), (1, 2), (0, 1), (0, 3)]:
        wins2[i, j], wins2[j, i] = 60.0, 0.0
    _, lower = confidence_bounds(jnp.asarray(wins2), 200, 0.51)
    assert float(lower[2, 0]) > 0.5
    pairs = _draws(dts_pair, wins2, 200, 0.51)
    first_is_0 = pairs[:, 0] == 0
    assert first_is_0.mean() > 0.2
    assert np.all(pairs[first_is_0, 1] == 0)


def test_update_counts_only_queried_non_self_duels():
    agent = RUCB()
    state = agent.init(jax.random.key(0), KArmedDuel(num_arms=3).spec)
    duel = cdb.Duel(arms=jnp.array([[0, 1], [1, 2], [2, 2], [2, 0]], jnp.int32), query=jnp.ones(4, bool))
    fb = cdb.Feedback(preference=jnp.array([1.0, 0.0, 1.0, 0.0]), queried=jnp.array([True, True, True, False]))
    obs = cdb.Observation(features=jnp.zeros((4, 3, 3)))
    state, _ = agent.update(jax.random.key(1), state, obs, duel, fb)
    expected = np.zeros((3, 3))
    expected[0, 1] = 1.0  # 0 beat 1
    expected[2, 1] = 1.0  # 2 beat 1 (preference 0: the second arm won)
    np.testing.assert_array_equal(state.wins, expected)
    assert int(state.t) == 3  # the self-duel advances time; the unqueried row does not


# Condorcet winner = arm 2 (not arm 0, so that an untrained recommend cannot be right by default).
PREFS = np.array(
    [
        [0.50, 0.60, 0.30, 0.65],
        [0.40, 0.50, 0.35, 0.55],
        [0.70, 0.65, 0.50, 0.60],
        [0.35, 0.45, 0.40, 0.50],
    ]
)
KENV = KArmedDuel(num_arms=4, batch_size=2, preference_matrix=PREFS, eval_batch_size=3)


@pytest.mark.parametrize("agent", [DoubleThompsonSampling(), RUCB()])
def test_finds_the_condorcet_winner(agent):
    res = cdb.run(agent, KENV, rounds=300, seeds=3, eval_every=150, key=0, progress=False)
    bai = res.eval_metrics["bai_regret"]
    assert np.all(bai[:, 0] > 0)  # the untrained recommendation (arm 0) is wrong
    np.testing.assert_array_equal(bai[:, -1], 0.0)  # the final one is the Condorcet winner
    state = jax.jit(agent.init, static_argnums=1)(jax.random.key(0), KENV.spec)
    obs = KENV.eval_observation(None, KENV.default_params)
    assert agent.recommend(jax.random.key(0), state, obs).shape == (3,)
    if isinstance(agent, DoubleThompsonSampling):
        # DTS also exploits within this horizon: the last 100 rounds cost much less than the first 100
        # (RUCB, whose α ln t radius shrinks slowly, needs a longer horizon for that).
        regret = res.metrics["regret"]
        assert np.all(regret[:, -100:].sum(1) < 0.6 * regret[:, :100].sum(1))


@pytest.mark.parametrize("cls", [DoubleThompsonSampling, RUCB])
def test_bad_hyper_parameters(cls):
    with pytest.raises(ValueError, match=f"{cls.__name__}.alpha=-0.1"):
        cls(alpha=-0.1)
    with pytest.raises(ValueError, match="K-armed"):
        cls().init(jax.random.key(0), cdb.EnvSpec(batch_size=1, prompt_length=3))
    with pytest.raises(ValueError, match="num_arms"):
        cls().init(jax.random.key(0), cdb.EnvSpec(batch_size=1, num_arms=1, feature_dim=1, k_armed=True))


@pytest.mark.parametrize("cls", [DoubleThompsonSampling, RUCB])
def test_refuses_an_environment_that_is_not_k_armed(cls):
    # LinearDuel's arms are new feature vectors every round: a wins matrix over their indices is
    # meaningless, even when its shapes (K arms, d = K) look like KArmedDuel's.
    env = LinearDuel(num_arms=4, feature_dim=4, batch_size=2)
    with pytest.raises(ValueError, match=r"DoubleThompsonSampling|RUCB") as err:
        cls().init(jax.random.key(0), env.spec)
    assert "k_armed=False" in str(err.value) and "KArmedDuel" in str(err.value)
    with pytest.raises(ValueError, match="K-armed environment"):
        cdb.run(cls(), env, rounds=2, progress=False)
    assert KArmedDuel(num_arms=4).spec.k_armed


def _exact_beats_half(a, b):
    """P(Beta(a, b) > ½) = P(Bin(a + b − 1, ½) ≤ a − 1) for integers, exactly."""
    n = a + b - 1
    return sum(math.comb(n, i) for i in range(a)) / 2**n


def test_beats_half_is_the_beta_tail():
    q = np.asarray(beats_half(jnp.asarray(WINS)))
    for i in range(3):
        for j in range(3):
            expected = _exact_beats_half(int(WINS[i, j]) + 1, int(WINS[j, i]) + 1)
            assert abs(q[i, j] - expected) < 1e-6, (i, j, q[i, j], expected)


def test_beats_half_recurrence_tracks_the_exact_value_over_many_duels():
    # three pairs with win rates 0.5, 0.6 and 0.9, 1500 duels each, every step checked exactly
    rng = np.random.default_rng(0)
    update = jax.jit(beats_half_update)
    for rate in (0.5, 0.6, 0.9):
        q, log_m, a, b = jnp.float32(0.5), jnp.float32(math.log(0.5)), 1, 1
        worst = 0.0
        for step in range(1500):
            won = bool(rng.random() < rate)
            q, log_m = update(q, log_m, jnp.float32(a), jnp.float32(b), won)
            a, b = (a + 1, b) if won else (a, b + 1)
            if step % 50 == 0 or step == 1499:
                worst = max(worst, abs(float(q) - _exact_beats_half(a, b)))
                assert abs(float(log_m) - math.log(math.comb(a + b - 1, a - 1) / 2 ** (a + b - 1))) < 1e-3 * max(
                    1.0, abs(float(log_m))
                )
        assert worst < 2e-5, (rate, worst)


def test_dts_agent_keeps_beats_half_of_its_wins():
    agent = DoubleThompsonSampling()
    state = agent.init(jax.random.key(0), KENV.spec)
    update = jax.jit(agent.update)
    obs = cdb.Observation(features=jnp.zeros((3, 4, 4)))
    rng = np.random.default_rng(1)
    for step in range(40):  # a pair may recur within a batch; self-duels and unqueried rows are skipped
        arms = jnp.asarray(rng.integers(0, 3, size=(3, 2)), jnp.int32)
        fb = cdb.Feedback(
            preference=jnp.asarray(rng.random(3) < 0.7, jnp.float32), queried=jnp.asarray(rng.random(3) < 0.8)
        )
        state, _ = update(jax.random.key(step), state, obs, cdb.Duel(arms=arms, query=jnp.ones(3, bool)), fb)
    wins = np.asarray(state.wins)
    assert wins.sum() > 40
    expected = [[_exact_beats_half(int(wins[i, j]) + 1, int(wins[j, i]) + 1) for j in range(4)] for i in range(4)]
    np.testing.assert_allclose(state.beats_half, expected, atol=2e-6)


@pytest.mark.parametrize("alpha", [1.0, 2.5, 60.0])
def test_marsaglia_tsang_gamma_moments(alpha):
    keys = jax.random.split(jax.random.key(3), 2)
    for proposals, key in zip((3, 1), keys, strict=True):  # 1 proposal: the while loop draws the rejects
        g = np.asarray(gamma_marsaglia_tsang(key, jnp.full((20000,), alpha), proposals))
        assert np.all(g > 0)
        se = math.sqrt(alpha / 20000)
        assert abs(g.mean() - alpha) < 4 * se, (proposals, g.mean())
        assert abs(g.var() / alpha - 1) < 0.06, (proposals, g.var())
    # P(G <= median-ish point) for alpha = 1 (exponential): 1 − e^{-1}
    if alpha == 1.0:
        assert abs(np.mean(g <= 1.0) - (1 - math.exp(-1))) < 0.015


def test_beta_integer_moments():
    draw = jax.vmap(lambda k: beta_integer(k, jnp.array([3.0, 1.0, 40.0]), jnp.array([5.0, 1.0, 2.0])))
    x = np.asarray(draw(jax.random.split(jax.random.key(4), 20000)))
    a, b = np.array([3.0, 1.0, 40.0]), np.array([5.0, 1.0, 2.0])
    np.testing.assert_allclose(x.mean(0), a / (a + b), atol=4e-3)
    np.testing.assert_allclose(x.var(0), a * b / ((a + b) ** 2 * (a + b + 1)), rtol=0.06)


def test_dts_first_candidate_has_the_law_of_beta_sampling():
    # Small counts, t = 1 (no radius): every arm is in C and the first candidate is decided by the
    # signs of θ¹. Its law under cdb's sign draws must match drawing θ¹ ~ Beta and comparing.
    wins = np.array([[0.0, 3.0, 2.0], [2.0, 0.0, 4.0], [3.0, 1.0, 0.0]], np.float32)
    first = _draws(dts_pair, wins, 1, 0.51, n=4000)[:, 0]
    freq = np.bincount(first, minlength=3) / len(first)
    rng = np.random.default_rng(5)
    n = 200_000
    theta = {(i, j): rng.beta(wins[i, j] + 1, wins[j, i] + 1, size=n) for i, j in ((0, 1), (0, 2), (1, 2))}
    above = np.zeros((n, 3, 3), bool)
    for (i, j), th in theta.items():
        above[:, i, j], above[:, j, i] = th > 0.5, th <= 0.5
    score = above.sum(axis=2) + rng.random((n, 3)) * 0.5  # random ties
    reference = np.bincount(score.argmax(axis=1), minlength=3) / n
    np.testing.assert_allclose(freq, reference, atol=0.03)
