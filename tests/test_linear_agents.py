"""MaxInP and CoLSTIM (cdb.agents.linear): the pure pieces by hand, then the agents in cdb.run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdb
from cdb.agents.linear import (
    CoLSTIM,
    MaxInP,
    colstim_first_arm,
    colstim_second_arm,
    maxinp_candidates,
    maxinp_pair,
)
from cdb.environments import KArmedDuel, LinearDuel
from cdb.linalg import pair_widths

# Hand-made 2-D example: three arms on a line and one off it, V = diag(1, 4), θ̂ = (1, 0).
FEATURES = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
V_INV = jnp.diag(jnp.array([1.0, 0.25]))
THETA = jnp.array([1.0, 0.0])
# ‖φ0 − φ1‖² = 1 + 1/4, ‖φ0 − φ2‖² = 4, ‖φ1 − φ2‖² = 1 + 1/4.
W01, W02, W12 = math.sqrt(1.25), 2.0, math.sqrt(1.25)


def test_pair_widths_by_hand():
    expected = np.array([[0, W01, W02], [W01, 0, W12], [W02, W12, 0]])
    np.testing.assert_allclose(pair_widths(FEATURES, V_INV), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "alpha, members",
    [
        # margin_1 = −1 + α·W01 and margin_2 = min(−2 + 2α, −1 + α·W12).
        (0.5, [0]),  # 1 and 2 are dominated by arm 0
        (0.95, [0, 1]),  # −1 + 0.95·1.118 > 0, but −2 + 1.9 < 0
        (2.0, [0, 1, 2]),  # nobody is dominated with confidence
    ],
)
def test_maxinp_candidate_set_by_hand(alpha, members):
    in_set, margin = maxinp_candidates(FEATURES, THETA, V_INV, alpha)
    assert np.flatnonzero(np.asarray(in_set)).tolist() == members
    np.testing.assert_allclose(margin[1], min(-1 + alpha * W01, 1 + alpha * W12), rtol=1e-5)
    np.testing.assert_allclose(margin[2], min(-2 + alpha * W02, -1 + alpha * W12), rtol=1e-5)


def test_maxinp_pair_by_hand():
    # All three candidates: the widest pair is (0, 2).
    arms, size = maxinp_pair(FEATURES, THETA, V_INV, 2.0)
    assert arms.tolist() == [0, 2] and int(size) == 3
    # C = {0, 1}: the only pair of candidates.
    arms, size = maxinp_pair(FEATURES, THETA, V_INV, 0.95)
    assert arms.tolist() == [0, 1] and int(size) == 2
    # C = {0}: the lone candidate duels the least dominated other arm (margins −0.44 vs −1).
    arms, size = maxinp_pair(FEATURES, THETA, V_INV, 0.5)
    assert arms.tolist() == [0, 1] and int(size) == 1


def test_colstim_second_arm_by_hand():
    # Against a1 = 0: arm 1 scores −1 + c·W01, arm 2 scores −2 + c·W02.
    assert int(colstim_second_arm(FEATURES, THETA, V_INV, jnp.int32(0), 1.0)) == 1  # 0.118 > 0
    assert int(colstim_second_arm(FEATURES, THETA, V_INV, jnp.int32(0), 3.0)) == 2  # 4 > 2.35
    # Against a1 = 2 with no bonus: the greedy best other arm is 0, never 2 itself.
    assert int(colstim_second_arm(FEATURES, THETA, V_INV, jnp.int32(2), 0.0)) == 0


def test_colstim_first_arm_perturbations():
    keys = jax.random.split(jax.random.key(0), 200)
    first = jax.vmap(colstim_first_arm, in_axes=(0, None, None, None, None))
    # clip = 0: no perturbation, the greedy arm.
    assert np.all(np.asarray(first(keys, FEATURES, THETA, V_INV, 0.0)) == 0)
    # Wide V⁻¹ and a large clip: the Gumbel perturbations sometimes promote other arms, but the
    # greedy arm stays the most frequent.
    counts = np.bincount(np.asarray(first(keys, FEATURES, THETA, 25.0 * V_INV, 10.0)), minlength=3)
    assert counts[0] == counts.max() and counts[1] + counts[2] > 0
    normal = np.asarray(jax.vmap(lambda k: colstim_first_arm(k, FEATURES, THETA, 25.0 * V_INV, 10.0, "normal"))(keys))
    assert not np.array_equal(normal, np.asarray(first(keys, FEATURES, THETA, 25.0 * V_INV, 10.0)))


# --- the agents in cdb.run ---------------------------------------------------------------------

ENV = LinearDuel(num_arms=6, feature_dim=3, batch_size=2, eval_batch_size=16, scale=3.0)
ROUNDS, SEEDS = 100, 3
SMALL = dict(buffer_capacity=256)
AGENTS = {
    "maxinp": MaxInP(**SMALL),
    "colstim": CoLSTIM(**SMALL),
    # Uniformly random pairs for the whole run: the baseline.
    "random": MaxInP(explore_rounds=ROUNDS, **SMALL),
}


@pytest.fixture(scope="module")
def runs():
    return {n: cdb.run(a, ENV, rounds=ROUNDS, seeds=SEEDS, eval_every=50, progress=False) for n, a in AGENTS.items()}


@pytest.mark.parametrize("name", ["maxinp", "colstim"])
def test_lower_cumulative_regret_than_random_pairs(runs, name):
    ours = runs[name].curve("cumulative_regret")[0][:, -1]
    rand = runs["random"].curve("cumulative_regret")[0][:, -1]
    # Same seeds, same problem instances: better on every seed and by a wide margin on average.
    assert np.all(ours < rand), (ours, rand)
    assert ours.mean() < 0.6 * rand.mean(), (ours.mean(), rand.mean())
    bai = runs[name].eval_metrics["bai_regret"]
    assert bai[:, -1].mean() < 0.25 * bai[:, 0].mean()
    assert np.all(np.isfinite(runs[name].metrics["mle_loss"]))


def test_maxinp_candidate_set_shrinks(runs):
    size = runs["maxinp"].metrics["candidate_set_size"]
    assert size[:, :5].mean() > size[:, -20:].mean() + 1.0


@pytest.mark.parametrize(
    "agent",
    [
        MaxInP(alpha=0.0, **SMALL),
        MaxInP(alpha=50.0, **SMALL),
        CoLSTIM(**SMALL),
        CoLSTIM(confidence=0.0, perturbation_clip=0.0, **SMALL),
    ],
)
def test_never_a_self_duel(agent):
    env = LinearDuel(num_arms=4, feature_dim=2, batch_size=64)
    env_state, obs = env.reset(jax.random.key(0), env.default_params)
    state = agent.init(jax.random.key(1), env.spec)
    select, update = jax.jit(agent.select), jax.jit(agent.update)
    for t in range(4):
        duel, _ = select(jax.random.key(10 + t), state, obs)
        arms = np.asarray(duel.arms)
        assert np.all(arms[:, 0] != arms[:, 1]) and arms.dtype == np.int32
        assert np.all(np.asarray(duel.query))
        env_state, next_obs, feedback, _ = env.step(jax.random.key(20 + t), env_state, duel, env.default_params)
        state, info = update(jax.random.key(30 + t), state, obs, duel, feedback)
        obs = next_obs
    assert int(state.t) == 4 and int(state.buffer.size) == 4 * 64
    np.testing.assert_allclose(np.asarray(state.v) @ np.asarray(state.v_inv), np.eye(2), atol=1e-3)


def test_unqueried_rows_are_not_learned():
    agent = MaxInP(**SMALL)
    env = LinearDuel(num_arms=4, feature_dim=2, batch_size=3)
    _, obs = env.reset(jax.random.key(0), env.default_params)
    state = agent.init(jax.random.key(1), env.spec)
    duel = cdb.Duel(arms=jnp.array([[0, 1], [2, 3], [1, 2]], jnp.int32), query=jnp.array([True, False, True]))
    fb = cdb.Feedback(preference=jnp.array([1.0, 0.0, 0.0]), queried=jnp.array([True, False, True]))
    new, _ = agent.update(jax.random.key(2), state, obs, duel, fb)
    f = np.asarray(obs.features)
    z = np.stack([f[0, 0] - f[0, 1], f[2, 1] - f[2, 2]])
    np.testing.assert_allclose(new.v, np.eye(2) + z.T @ z, atol=1e-6)
    assert int(new.buffer.size) == 2


@pytest.mark.parametrize("make", [lambda: MaxInP(**SMALL), CoLSTIM], ids=["maxinp", "colstim"])
def test_select_passes_the_pair_in_aux_and_update_without_it_reads_obs(make):
    agent = make()
    env = LinearDuel(num_arms=5, feature_dim=2, batch_size=3)
    env_state, obs = env.reset(jax.random.key(0), env.default_params)
    state = agent.init(jax.random.key(1), env.spec)
    duel, _ = agent.select(jax.random.key(2), state, obs)
    f, arms = np.asarray(obs.features), np.asarray(duel.arms)
    np.testing.assert_array_equal(duel.aux[0], f[np.arange(3), arms[:, 0]])
    np.testing.assert_array_equal(duel.aux[1], f[np.arange(3), arms[:, 1]])
    _, _, feedback, _ = env.step(jax.random.key(3), env_state, duel, env.default_params)
    with_aux, _ = agent.update(jax.random.key(4), state, obs, duel, feedback)
    without, _ = agent.update(jax.random.key(4), state, obs, cdb.Duel(arms=duel.arms, query=duel.query), feedback)
    assert int(with_aux.buffer.size) == 3
    jax.tree.map(np.testing.assert_array_equal, with_aux, without)


def test_recommend_is_greedy_under_theta():
    agent = CoLSTIM()
    state = agent.init(jax.random.key(0), LinearDuel(num_arms=3, feature_dim=2).spec).replace(theta=THETA)
    obs = cdb.Observation(features=jnp.stack([FEATURES, FEATURES[::-1]]))
    np.testing.assert_array_equal(agent.recommend(jax.random.key(1), state, obs), [0, 2])


def test_runs_on_one_hot_karmed_features():
    env = KArmedDuel(num_arms=3, batch_size=2, eval_batch_size=2)
    res = cdb.run(MaxInP(buffer_capacity=16), env, rounds=4, seeds=1, progress=False)
    np.testing.assert_array_equal(res.metrics["queries"], 2)


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (MaxInP, dict(alpha=-1.0), "alpha"),
        (MaxInP, dict(lam=0.0), "lam"),
        (MaxInP, dict(mle_steps=0), "mle_steps"),
        (MaxInP, dict(buffer_capacity=0), "buffer_capacity"),
        (MaxInP, dict(explore_rounds=-1), "explore_rounds"),
        (CoLSTIM, dict(confidence=-0.5), "confidence"),
        (CoLSTIM, dict(perturbation_clip=-1.0), "perturbation_clip"),
        (CoLSTIM, dict(perturbation="cauchy"), "perturbation"),
        (CoLSTIM, dict(lam=float("nan")), "lam"),
    ],
)
def test_bad_hyper_parameters_name_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field}="):
        cls(**kwargs)


def test_featureless_environment_is_rejected():
    with pytest.raises(ValueError, match="feature"):
        MaxInP().init(jax.random.key(0), cdb.EnvSpec(batch_size=1, prompt_length=4, vocab_size=3))
