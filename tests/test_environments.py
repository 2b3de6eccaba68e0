"""Tier-1 environments (LinearDuel, NeuralDuel, KArmedDuel) against plain numpy references."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.environments import (
    LINKS,
    DuelParams,
    KArmedDuel,
    LinearDuel,
    NeuralDuel,
    preference_probability,
)
from cdb.types import Duel, Environment, EnvSpec, Feedback, Observation

K, D, B, B_EVAL = 4, 3, 6, 5
ARMS = np.array([[0, 1], [1, 0], [2, 2], [3, 0], [1, 3], [2, 1]], np.int32)  # includes a self-duel
QUERY = np.array([True, False, True, True, False, True])
INFO_KEYS = {"reward_first", "reward_second", "best_reward", "regret", "weak_regret", "strong_regret"}

# A 4-armed matrix with Condorcet winner 2 and a cycle 0 ≻ 1 ≻ 3 ≻ 0 among the others (not BT).
MATRIX = np.array(
    [
        [0.5, 0.7, 0.4, 0.3],
        [0.3, 0.5, 0.2, 0.7],
        [0.6, 0.8, 0.5, 0.9],
        [0.7, 0.3, 0.1, 0.5],
    ]
)

ENVS = {
    "linear": LinearDuel(K, D, B, eval_batch_size=B_EVAL),
    "neural": NeuralDuel(K, D, B, eval_batch_size=B_EVAL, hidden_dim=5),
    "karmed": KArmedDuel(K, B, eval_batch_size=B_EVAL, scale=2.0),
    "karmed_matrix": KArmedDuel(K, B, MATRIX, eval_batch_size=B_EVAL),
}
FEATURE_ENVS = ("linear", "neural")
DETERMINISTIC = LinearDuel(K, D, B, eval_batch_size=B_EVAL, link="deterministic")


@functools.cache
def compiled(name: str):
    """One jitted reset / step / evaluate per environment, shared by every test of this module."""
    env = DETERMINISTIC if name == "deterministic" else ENVS[name]
    return (
        env,
        env.default_params,
        jax.jit(env.reset),
        jax.jit(env.step),
        jax.jit(env.evaluate),
    )


def duel(arms=ARMS, query=QUERY) -> Duel:
    return Duel(arms=jnp.asarray(arms, jnp.int32), query=jnp.asarray(query, bool))


def play(name: str, seed: int = 0):
    env, params, reset, step, _ = compiled(name)
    state, obs = reset(jax.random.key(seed), params)
    new_state, next_obs, feedback, info = step(jax.random.key(seed + 100), state, duel(), params)
    return state, obs, new_state, next_obs, feedback, info


# --- numpy references ----------------------------------------------------------------------


def np_rewards(name: str, state, features) -> np.ndarray:
    """Latent rewards [n, K] computed in float64 numpy, one arm at a time."""
    phi = np.asarray(features, np.float64)
    out = np.zeros(phi.shape[:2])
    rp = state.reward_params
    for b in range(phi.shape[0]):
        for a in range(phi.shape[1]):
            if name == "linear":
                out[b, a] = float(np.dot(np.asarray(rp.theta, np.float64), phi[b, a]))
            else:
                h = np.tanh(phi[b, a] @ np.asarray(rp.w1, np.float64) + np.asarray(rp.b1, np.float64))
                out[b, a] = float(h @ np.asarray(rp.w2, np.float64))
    return out


def np_regrets(rewards: np.ndarray, arms: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: np.zeros(len(arms)) for k in INFO_KEYS}
    for b, (a1, a2) in enumerate(arms):
        r = rewards[b]
        best = max(r)
        out["reward_first"][b], out["reward_second"][b], out["best_reward"][b] = r[a1], r[a2], best
        out["regret"][b] = best - (r[a1] + r[a2]) / 2
        out["weak_regret"][b] = min(best - r[a1], best - r[a2])
        out["strong_regret"][b] = max(best - r[a1], best - r[a2])
    return out


def np_condorcet(p: np.ndarray) -> int:
    winners = [i for i in range(len(p)) if all(p[i, j] > 0.5 for j in range(len(p)) if j != i)]
    assert len(winners) == 1
    return winners[0]


def np_link(link: str, z: float) -> float:
    if link == "bradley_terry":
        return 1.0 / (1.0 + math.exp(-z))
    if link == "probit":
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    return 1.0 if z > 0 else (0.0 if z < 0 else 0.5)


# --- API shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENVS))
def test_shapes_dtypes_and_spec(name):
    env, params, _, _, evaluate = compiled(name)
    d = D if name in FEATURE_ENVS else K
    assert isinstance(env, Environment) and env.pure_jax is True
    k_armed = name not in FEATURE_ENVS
    assert env.spec == EnvSpec(batch_size=B, num_arms=K, feature_dim=d, eval_batch_size=B_EVAL, k_armed=k_armed)
    state, obs, new_state, next_obs, feedback, info = play(name)
    for o in (obs, next_obs):
        assert o.features.shape == (B, K, d) and o.features.dtype == jnp.float32
        assert o.prompts is None
    assert feedback.preference.shape == (B,) and feedback.preference.dtype == jnp.float32
    assert feedback.queried.shape == (B,) and feedback.queried.dtype == jnp.bool_
    assert set(info) == INFO_KEYS
    for v in info.values():
        assert v.shape == (B,) and v.dtype == jnp.float32
        assert np.all(np.isfinite(v))
    assert jax.tree.structure(state) == jax.tree.structure(new_state)
    eval_obs = env.eval_observation(new_state, params)
    assert eval_obs.features.shape == (B_EVAL, K, d)
    out = evaluate(jax.random.key(1), new_state, eval_obs, jnp.zeros(B_EVAL, jnp.int32), params)
    assert set(out) == {"bai_regret"}
    assert out["bai_regret"].shape == (B_EVAL,) and out["bai_regret"].dtype == jnp.float32
    assert np.all(np.asarray(out["bai_regret"]) >= 0)


def test_karmed_observation_is_one_hot_identity():
    _, obs, *_ = play("karmed")
    np.testing.assert_array_equal(obs.features, np.broadcast_to(np.eye(K), (B, K, K)))


def test_features_are_redrawn_each_round_and_eval_contexts_are_fixed():
    state, obs, new_state, next_obs, _, _ = play("linear")
    assert not np.allclose(obs.features, next_obs.features)
    np.testing.assert_array_equal(new_state.eval_features, state.eval_features)
    np.testing.assert_array_equal(new_state.reward_params.theta, state.reward_params.theta)
    # φ ~ N(0, I/d): the empirical second moment over all drawn entries is near 1/d.
    assert abs(float(np.mean(np.asarray(state.eval_features) ** 2)) * D - 1.0) < 0.6


def test_pool_contexts_are_whole_pool_rows_drawn_uniformly():
    from cdb.environments.feature_duel import make_context_pool

    env = LinearDuel(num_arms=4, feature_dim=3, batch_size=5, eval_batch_size=2, context_pool=6)
    pool = make_context_pool(6, 4, 3, env.pool_seed)
    draw = jax.jit(jax.vmap(lambda k: env._features(k, env.batch_size)))
    contexts = np.asarray(draw(jax.random.split(jax.random.key(0), 2000))).reshape(-1, 4, 3)
    # each drawn context equals exactly one pool context (no clamping, no mixing of rows)
    matches = np.all(contexts[:, None] == pool[None], axis=(2, 3))
    np.testing.assert_array_equal(matches.sum(axis=1), 1)
    counts = matches.sum(axis=0)
    expected = len(contexts) / 6
    assert float(np.sum((counts - expected) ** 2 / expected)) < 25.0  # chi-square, 5 dof: p < 1e-4


# --- exact regrets against brute force -----------------------------------------------------


@pytest.mark.parametrize("name", FEATURE_ENVS)
def test_feature_env_regrets_match_brute_force(name):
    env, params, _, _, evaluate = compiled(name)
    state, obs, new_state, _, _, info = play(name)
    expected = np_regrets(np_rewards(name, state, obs.features), ARMS)
    for k in INFO_KEYS:
        np.testing.assert_allclose(info[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert np.all(np.asarray(info["weak_regret"]) <= np.asarray(info["strong_regret"]))
    # BAI regret on the held-out contexts, for the worst and the best arms.
    eval_obs = env.eval_observation(new_state, params)
    r_eval = np_rewards(name, state, eval_obs.features)
    for arms in (r_eval.argmin(axis=1), r_eval.argmax(axis=1), np.arange(B_EVAL) % K):
        out = evaluate(jax.random.key(3), new_state, eval_obs, jnp.asarray(arms, jnp.int32), params)
        expected_bai = r_eval.max(axis=1) - r_eval[np.arange(B_EVAL), arms]
        np.testing.assert_allclose(out["bai_regret"], expected_bai, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["karmed", "karmed_matrix"])
def test_karmed_regrets_match_brute_force(name):
    env, params, _, _, evaluate = compiled(name)
    state, _, _, _, _, info = play(name)
    p = np.asarray(state.preference_matrix, np.float64)
    star = np_condorcet(p)
    assert int(state.best_arm) == star
    for b, (a1, a2) in enumerate(ARMS):
        e1, e2 = p[star, a1] - 0.5, p[star, a2] - 0.5
        np.testing.assert_allclose(info["regret"][b], (e1 + e2) / 2, atol=1e-6)
        np.testing.assert_allclose(info["weak_regret"][b], min(e1, e2), atol=1e-6)
        np.testing.assert_allclose(info["strong_regret"][b], max(e1, e2), atol=1e-6)
        np.testing.assert_allclose(info["reward_first"][b], -e1, atol=1e-6)
        np.testing.assert_allclose(info["reward_second"][b], -e2, atol=1e-6)
    np.testing.assert_array_equal(info["best_reward"], np.zeros(B))
    arms = np.arange(B_EVAL) % K
    out = evaluate(jax.random.key(0), state, env.eval_observation(state, params), jnp.asarray(arms), params)
    np.testing.assert_allclose(out["bai_regret"], p[star, arms] - 0.5, atol=1e-6)
    assert float(out["bai_regret"][star]) == 0.0


def test_karmed_matrix_is_used_as_given():
    state, *_ = play("karmed_matrix")
    np.testing.assert_allclose(state.preference_matrix, MATRIX, atol=1e-7)
    assert int(state.best_arm) == 2 and state.utilities is None


def test_karmed_drawn_matrix_is_the_link_of_utilities():
    env, *_ = compiled("karmed")
    state, *_ = play("karmed", seed=4)
    u = np.asarray(state.utilities, np.float64)
    expected = 1.0 / (1.0 + np.exp(-env.scale * (u[:, None] - u[None, :])))
    np.testing.assert_allclose(state.preference_matrix, expected, atol=1e-6)
    assert int(state.best_arm) == int(np.argmax(u))


# --- randomness ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENVS))
def test_same_keys_give_identical_outputs(name):
    first, second = play(name, seed=7), play(name, seed=7)
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(x, y)
    # ... and a different step key gives a different round (new features or new preferences).
    env, params, _, step, _ = compiled(name)
    rounds = [step(jax.random.key(k), first[0], duel(query=np.ones(B, bool)), params) for k in range(8)]
    seen = {(np.asarray(o[1].features).tobytes(), np.asarray(o[2].preference).tobytes()) for o in rounds}
    assert len(seen) > 1


@pytest.mark.parametrize("name", ["linear", "neural", "karmed"])
def test_different_seeds_draw_different_instances(name):
    states = [play(name, seed=s)[0] for s in (0, 1)]
    truths = [np.asarray(jax.tree.leaves(s.reward_params if name in FEATURE_ENVS else s.utilities)[0]) for s in states]
    assert not np.allclose(truths[0], truths[1])
    if name == "linear":
        for s in states:
            np.testing.assert_allclose(np.linalg.norm(s.reward_params.theta), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", list(ENVS))
def test_vmap_reset_and_step_over_seeds_under_jit(name):
    env, params, reset, step, _ = compiled(name)
    keys = jax.random.split(jax.random.key(11), 3)
    step_keys = jax.random.split(jax.random.key(12), 3)

    @jax.jit
    def batched(keys, step_keys):
        state, obs = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
        out = jax.vmap(env.step, in_axes=(0, 0, None, None))(step_keys, state, duel(), params)
        return state, obs, *out

    state, obs, new_state, next_obs, feedback, info = batched(keys, step_keys)
    assert obs.features.shape[:2] == (3, B) and info["regret"].shape == (3, B)
    assert feedback.preference.shape == (3, B)
    for s in range(3):  # each seed matches the unbatched computation
        s_state, s_obs = reset(keys[s], params)
        _, _, s_fb, s_info = step(step_keys[s], s_state, duel(), params)
        np.testing.assert_allclose(obs.features[s], s_obs.features, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(info["regret"][s], s_info["regret"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(feedback.preference[s], s_fb.preference)
    if name != "karmed_matrix":  # three different problem instances
        truth = state.reward_params if name in FEATURE_ENVS else state.utilities
        leaf = np.asarray(jax.tree.leaves(truth)[0])
        assert not np.allclose(leaf[0], leaf[1]) and not np.allclose(leaf[1], leaf[2])


def test_params_can_be_vmapped():
    env = ENVS["karmed"]
    scales = DuelParams(scale=jnp.array([0.0, 1.0, 4.0], jnp.float32))
    state, _ = jax.vmap(env.reset, in_axes=(None, 0))(jax.random.key(0), scales)
    np.testing.assert_allclose(state.preference_matrix[0], 0.5)  # scale 0: every duel a fair coin
    star = int(state.best_arm[1])
    others = np.arange(K) != star
    p = np.asarray(state.preference_matrix)
    assert np.all(p[2, star][others] > p[1, star][others]) and np.all(p[1, star][others] > 0.5)


# --- the oracle ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENVS))
def test_unqueried_rows_get_no_preference(name):
    _, _, _, _, feedback, _ = play(name)
    np.testing.assert_array_equal(feedback.queried, QUERY)
    np.testing.assert_array_equal(np.asarray(feedback.preference)[~QUERY], 0.0)
    assert set(np.unique(feedback.preference)) <= {0.0, 1.0}


def test_deterministic_link_best_arm_always_wins_and_mask_zeroes_the_rest():
    _, params, reset, step, _ = compiled("deterministic")
    state, obs = reset(jax.random.key(0), params)
    r = np_rewards("linear", state, obs.features)
    arms = np.stack([r.argmax(axis=1), r.argmin(axis=1)], axis=1)
    _, _, fb, _ = step(jax.random.key(1), state, duel(arms), params)
    np.testing.assert_array_equal(fb.preference, QUERY.astype(np.float32))
    _, _, fb, _ = step(jax.random.key(1), state, duel(arms[:, ::-1]), params)
    np.testing.assert_array_equal(fb.preference, np.zeros(B))


def _frequencies(name: str, arms: np.ndarray, draws: int):
    """Per-row frequency of 'first arm wins' over `draws` oracle calls on one fixed state."""
    env = compiled(name)[0]
    params = env.default_params
    state, obs = env.reset(jax.random.key(5), params)
    keys = jax.random.split(jax.random.key(6), draws)
    many_steps = jax.jit(jax.vmap(env.step, in_axes=(0, None, None, None)))
    fb = many_steps(keys, state, duel(arms, np.ones(B, bool)), params)[2]
    return state, obs, np.asarray(fb.preference).mean(axis=0)


def test_empirical_preference_frequency_matches_probability_linear():
    arms = np.tile([[0, 1]], (B, 1)).astype(np.int32)
    state, obs, freq = _frequencies("linear", arms, draws=2000)
    r = np_rewards("linear", state, obs.features)
    p = np.array([np_link("bradley_terry", r[b, 0] - r[b, 1]) for b in range(B)])
    assert np.all(np.abs(freq - p) < 0.05), (freq, p)  # 4.5 standard errors at n = 2000


def test_empirical_preference_frequency_matches_matrix():
    _, _, freq = _frequencies("karmed_matrix", ARMS, draws=2000)
    p = np.array([0.5 if a1 == a2 else MATRIX[a1, a2] for a1, a2 in ARMS])
    assert np.all(np.abs(freq - p) < 0.05), (freq, p)


def test_self_duel_is_a_fair_coin_even_for_the_deterministic_link():
    arms = np.stack([np.arange(B) % K] * 2, axis=1).astype(np.int32)
    _, _, freq = _frequencies("deterministic", arms, draws=1000)
    assert np.all(np.abs(freq - 0.5) < 0.07), freq
    for link in LINKS:
        assert float(preference_probability(link, 3.0, jnp.float32(0.3), jnp.float32(0.3))) == 0.5


@pytest.mark.parametrize("link", LINKS)
def test_links_match_closed_forms(link):
    r1 = np.array([-1.0, -0.2, 0.0, 0.3, 2.0], np.float32)
    r2 = np.array([0.5, 0.1, 0.0, -0.4, 0.0], np.float32)
    got = np.asarray(preference_probability(link, 1.5, r1, r2))
    expected = [np_link(link, 1.5 * (float(a) - float(b))) for a, b in zip(r1, r2, strict=True)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(preference_probability(link, 0.0, r1, r2), 0.5)
    with pytest.raises(ValueError, match="link"):
        preference_probability("logit", 1.0, r1, r2)


# --- what the agent sees --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENVS))
def test_latent_reward_is_not_in_the_observation(name):
    assert {f.name for f in dataclasses.fields(Observation)} == {"features", "prompts", "prompt_mask"}
    assert {f.name for f in dataclasses.fields(Feedback)} == {"preference", "queried"}
    state, obs, _, _, feedback, info = play(name)
    leaves = jax.tree.leaves(obs)
    assert len(leaves) == 1 and leaves[0].ndim == 3  # only the [B, K, d] features
    rewards = np.stack([np.asarray(info["reward_first"]), np.asarray(info["reward_second"])], axis=1)
    flat = np.asarray(leaves[0]).reshape(B, -1)
    assert not any(np.allclose(flat[:, i], rewards[:, 0]) for i in range(flat.shape[1]))


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: LinearDuel(num_arms=1), "num_arms"),
        (lambda: NeuralDuel(num_arms=1), "num_arms"),
        (lambda: KArmedDuel(num_arms=1), "num_arms"),
        (lambda: LinearDuel(feature_dim=0), "feature_dim"),
        (lambda: LinearDuel(batch_size=0), "batch_size"),
        (lambda: KArmedDuel(batch_size=0), "batch_size"),
        (lambda: LinearDuel(eval_batch_size=0), "eval_batch_size"),
        (lambda: LinearDuel(num_arms=2.5), "num_arms"),
        (lambda: LinearDuel(link="logit"), "link"),
        (lambda: KArmedDuel(link="logit"), "link"),
        (lambda: LinearDuel(scale=-1.0), "scale"),
        (lambda: NeuralDuel(scale=float("nan")), "scale"),
        (lambda: KArmedDuel(scale=float("inf")), "scale"),
        (lambda: NeuralDuel(hidden_dim=0), "hidden_dim"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=rf"\.{field}="):
        make()


@pytest.mark.parametrize(
    "matrix, why",
    [
        (MATRIX[:3, :3], "shape"),
        (np.where(np.eye(K, dtype=bool), 0.4, MATRIX), "diagonal"),
        (MATRIX + np.where(np.arange(K)[:, None] < np.arange(K), 0.05, 0.0), "P \\+ P.T"),
        (np.where(MATRIX == 0.9, 1.2, np.where(MATRIX == 0.1, -0.2, MATRIX)), r"outside \[0, 1\]"),
        (np.where(MATRIX == 0.9, np.nan, MATRIX), "non-finite"),
        (np.array([[0.5, 0.6, 0.4], [0.4, 0.5, 0.6], [0.6, 0.4, 0.5]]), "Condorcet"),  # rock-paper-scissors
        ("not a matrix", "numeric"),
    ],
)
def test_bad_preference_matrix_raises_value_error(matrix, why):
    k = 3 if "Condorcet" in why else K
    with pytest.raises(ValueError, match="preference_matrix") as err:
        KArmedDuel(k, B, matrix)
    assert err.match(why)


def test_bad_params_at_reset_and_bad_duels_raise():
    env, params, *_ = compiled("linear")
    for scale in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            env.reset(jax.random.key(0), DuelParams(scale=jnp.float32(scale)))
    state, _ = env.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match="duel.arms"):
        env.step(jax.random.key(0), state, duel(ARMS[:3], QUERY[:3]), params)
    with pytest.raises(ValueError, match="duel.query"):
        env.step(jax.random.key(0), state, duel(ARMS, QUERY[:3]), params)


def test_environments_are_hashable_static_config():
    assert hash(KArmedDuel(K, B, MATRIX)) == hash(KArmedDuel(K, B, MATRIX.tolist()))
    assert LinearDuel(K, D, B) == LinearDuel(K, D, B)
    assert hash(NeuralDuel(K, D, B)) == hash(NeuralDuel(K, D, B))
