"""SequenceDuel (tier 2) against brute-force enumeration, and its cached SFT reference policy."""

import dataclasses
import itertools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdb
from cdb.environments import sequence_duel as sd
from cdb.environments.reference_policy import ReferenceConfig, ReferencePolicy, build_reference_policy  # noqa: F401
from cdb.types import Duel, Observation

V, LP, L, B, B_EVAL = 3, 2, 3, 4, 64
TINY_REF = ReferenceConfig(num_layers=1, d_model=16, num_heads=2, d_ff=32, train_steps=300, train_batch_size=64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("reference_cache"))


@pytest.fixture(scope="module")
def env(cache_dir):
    env = sd.SequenceDuel(
        vocab_size=V,
        prompt_length=LP,
        response_length=L,
        batch_size=B,
        eval_batch_size=B_EVAL,
        reference_config=TINY_REF,
        eval_reference_samples=8,
        cache_dir=cache_dir,
    )
    env.build_reference()
    return env


@pytest.fixture(scope="module")
def params(env):
    return env.default_params


@pytest.fixture(scope="module")
def bare_params(env):
    return env.make_params(with_reference=False)


@pytest.fixture(scope="module")
def many_steps(env):
    """``env.step`` vmapped over keys and jitted once (params without a reference policy)."""
    return jax.jit(jax.vmap(env.step, in_axes=(0, None, None, None)))


# --- independent numpy references ----------------------------------------------------------

ALL = np.array(list(itertools.product(range(V), repeat=L)), dtype=np.int32)  # [V^L, L]


def np_chain_score(reward: sd.ChainReward, prompt, seqs):
    emb, w, u = (np.asarray(a, np.float64) for a in (reward.embedding, reward.weight, reward.pairwise))
    e = emb[np.asarray(prompt)].sum(0) / np.sqrt(len(prompt))
    unary = np.tensordot(e, w, axes=1)  # [L, V]
    seqs = np.asarray(seqs)
    return unary[np.arange(seqs.shape[-1]), seqs].sum(-1) + u[seqs[..., :-1], seqs[..., 1:]].sum(-1)


def np_gold(tables, prompt, seqs):
    return np_chain_score(tables.gold, prompt, seqs)


# --- gold reward, Viterbi, teacher ----------------------------------------------------------


def test_gold_reward_and_viterbi_match_brute_force(env, bare_params):
    tables = bare_params.tables
    prompts = jax.random.randint(jax.random.key(0), (6, LP), 0, V)
    tokens, best = jax.jit(sd.optimal_response)(tables, prompts)
    assert tokens.shape == (6, L) and tokens.dtype == jnp.int32
    rewards = sd.gold_reward(tables, prompts, jnp.broadcast_to(ALL, (6,) + ALL.shape))  # [6, V^L]
    for i, x in enumerate(np.asarray(prompts)):
        expected = np_gold(tables, x, ALL)
        np.testing.assert_allclose(rewards[i], expected, atol=1e-4)
        np.testing.assert_allclose(best[i], expected.max(), atol=1e-4)
        np.testing.assert_array_equal(tokens[i], ALL[np.argmax(expected)])
    assert len({tuple(t) for t in np.asarray(tokens)}) > 1, "the optimum should depend on the prompt"


def test_tables_are_fixed_by_instance_seed(env):
    same = dataclasses.replace(env).tables
    other = dataclasses.replace(env, instance_seed=1).tables
    np.testing.assert_array_equal(same.gold.weight, env.tables.gold.weight)
    assert not np.allclose(other.gold.weight, env.tables.gold.weight)


def test_teacher_is_the_biased_gibbs_distribution(bare_params):
    tables = bare_params.tables
    prompt = jnp.array([[1, 2]], jnp.int32)
    tau = float(tables.teacher_temperature)
    logits = (np_gold(tables, prompt[0], ALL) + np_chain_score(tables.bias, prompt[0], ALL)) / tau
    p = np.exp(logits - np.logaddexp.reduce(logits))
    # exact log-probs and entropy
    log_p = sd.teacher_log_prob(tables, prompt, ALL[None])[0]
    np.testing.assert_allclose(log_p, np.log(p), atol=1e-4)
    np.testing.assert_allclose(sd.teacher_entropy(tables, prompt)[0], -(p * np.log(p)).sum(), atol=1e-4)
    # exact sampling: chi-square over the 27 responses (26 dof: mean 26, sd 7.2)
    n = 20_000
    samples = sd.teacher_sample(jax.random.key(3), tables, prompt, n)
    samples = np.asarray(samples)[0]
    counts = np.bincount((samples * V ** np.arange(L - 1, -1, -1)).sum(-1), minlength=V**L)
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < 80, chi2
    # the bias matters: the teacher is not the unbiased Gibbs distribution of r*
    q = np.exp(np_gold(tables, prompt[0], ALL) / tau)
    q /= q.sum()
    assert ((counts - n * q) ** 2 / (n * q)).sum() > 5 * chi2


# --- step / reset ------------------------------------------------------------------------------


def _random_duel(key, query=None):
    arms = jax.random.randint(key, (B, 2, L), 0, V, jnp.int32)
    query = jnp.ones((B,), bool) if query is None else query
    return Duel(arms=arms, query=query)


def test_reset_shapes(env, params):
    state, obs = jax.jit(env.reset)(jax.random.key(0), params)
    assert obs.prompts.shape == (B, LP) and obs.prompts.dtype == jnp.int32
    assert state.eval_prompts.shape == (B_EVAL, LP)
    assert np.all((np.asarray(obs.prompts) >= 0) & (np.asarray(obs.prompts) < V))
    assert env.spec == cdb.EnvSpec(
        batch_size=B, prompt_length=LP, response_length=L, vocab_size=V, eval_batch_size=B_EVAL
    )
    np.testing.assert_array_equal(env.eval_observation(state, params).prompts, state.eval_prompts)


def test_step_info_matches_brute_force(env, params):
    state, obs = env.reset(jax.random.key(1), params)
    duel = _random_duel(jax.random.key(2))
    new_state, next_obs, feedback, info = jax.jit(env.step)(jax.random.key(3), state, duel, params)
    tables = params.tables
    for i, x in enumerate(np.asarray(obs.prompts)):
        all_r = np_gold(tables, x, ALL)
        r1, r2 = np_gold(tables, x, np.asarray(duel.arms[i]))
        best = all_r.max()
        np.testing.assert_allclose(info["reward_first"][i], r1, atol=1e-4)
        np.testing.assert_allclose(info["reward_second"][i], r2, atol=1e-4)
        np.testing.assert_allclose(info["best_reward"][i], best, atol=1e-4)
        np.testing.assert_allclose(info["regret"][i], best - (r1 + r2) / 2, atol=1e-4)
        np.testing.assert_allclose(info["weak_regret"][i], best - max(r1, r2), atol=1e-4)
        np.testing.assert_allclose(info["strong_regret"][i], best - min(r1, r2), atol=1e-4)
    for k, v in info.items():
        assert v.shape == (B,) and v.dtype == jnp.float32, k
    assert np.all((info["online_win_rate"] >= 0) & (info["online_win_rate"] <= 1))
    assert next_obs.prompts.shape == (B, LP)
    np.testing.assert_array_equal(new_state.prompts, next_obs.prompts)
    np.testing.assert_array_equal(new_state.eval_prompts, state.eval_prompts)


def test_oracle_probability_matches_sigmoid(env, bare_params, many_steps):
    params = bare_params.replace(scale=jnp.float32(0.7))
    state, obs = env.reset(jax.random.key(4), params)
    duel = _random_duel(jax.random.key(5))
    n = 4000
    _, _, feedback, info = many_steps(jax.random.split(jax.random.key(6), n), state, duel, params)
    freq = np.asarray(feedback.preference).mean(0)
    r1, r2 = np.asarray(info["reward_first"][0]), np.asarray(info["reward_second"][0])
    expected = 1 / (1 + np.exp(-0.7 * (r1 - r2)))
    np.testing.assert_allclose(freq, expected, atol=0.04)  # 4000 draws: sd <= 0.008
    assert "online_win_rate" not in info  # no reference policy in these params


def test_non_queried_rows_get_zero_preference(env, bare_params, many_steps):
    state, _ = env.reset(jax.random.key(7), bare_params)
    query = jnp.array([True, False, True, False])
    duel = _random_duel(jax.random.key(8), query)
    # scale 0: every duel is a fair coin, so queried rows win about half the time
    params = bare_params.replace(scale=jnp.float32(0.0))
    _, _, fb, _ = many_steps(jax.random.split(jax.random.key(9), 200), state, duel, params)
    prefs, queried = np.asarray(fb.preference), np.asarray(fb.queried)
    assert fb.preference.dtype == jnp.float32
    np.testing.assert_array_equal(queried, np.broadcast_to(query, queried.shape))
    assert np.all(prefs[:, ~np.asarray(query)] == 0)
    assert 0.35 < prefs[:, np.asarray(query)].mean() < 0.65


def test_identical_arms_are_a_fair_coin(env, bare_params, many_steps):
    state, _ = env.reset(jax.random.key(10), bare_params)
    arms = jax.random.randint(jax.random.key(11), (B, 1, L), 0, V, jnp.int32)
    duel = Duel(arms=jnp.concatenate([arms, arms], 1), query=jnp.ones((B,), bool))
    _, _, fb, info = many_steps(jax.random.split(jax.random.key(12), 2000), state, duel, bare_params)
    np.testing.assert_allclose(np.asarray(fb.preference).mean(0), 0.5, atol=0.05)
    np.testing.assert_array_equal(info["regret"], info["weak_regret"])


def test_same_key_same_outputs_and_vmap_over_seeds(env, bare_params):
    params = bare_params  # the reference policy's path under vmap / scan is covered by cdb.run below

    def episode(key):
        k_reset, k_duel, k_step, k_eval = jax.random.split(key, 4)
        state, obs = env.reset(k_reset, params)
        state, obs, fb, info = env.step(k_step, state, _random_duel(k_duel), params)
        eval_obs = env.eval_observation(state, params)
        arms = jax.random.randint(k_duel, (B_EVAL, L), 0, V, jnp.int32)
        return obs, fb, info, env.evaluate(k_eval, state, eval_obs, arms, params)

    run = jax.jit(jax.vmap(episode))
    keys = jax.random.split(jax.random.key(13), 3)
    a, b = run(keys), run(keys)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    obs, fb, info, ev = a
    assert obs.prompts.shape == (3, B, LP) and ev["bai_regret"].shape == (3, B_EVAL)
    assert set(ev) == {"bai_regret", "reward"}  # no reference policy: no win rate, no gap closed
    assert not np.array_equal(obs.prompts[0], obs.prompts[1])
    assert not np.array_equal(info["regret"][0], info["regret"][1])
    # the unbatched episode with the first key gives the first row
    single = episode(keys[0])
    np.testing.assert_array_equal(single[0].prompts, obs.prompts[0])
    np.testing.assert_allclose(single[2]["regret"], info["regret"][0], atol=1e-6)
    np.testing.assert_allclose(single[3]["bai_regret"], ev["bai_regret"][0], atol=1e-6)


# --- evaluate ----------------------------------------------------------------------------------


def test_evaluate_optimum_and_reference_samples(env, params):
    state, _ = env.reset(jax.random.key(14), params)
    obs = env.eval_observation(state, params)
    best_arms, best = sd.optimal_response(params.tables, obs.prompts)
    evaluate = jax.jit(env.evaluate)
    ev = evaluate(jax.random.key(15), state, obs, best_arms, params)
    assert set(ev) == {"bai_regret", "reward", "win_rate", "gap_closed"}
    for v in ev.values():
        assert v.shape == (B_EVAL,) and v.dtype == jnp.float32
    np.testing.assert_allclose(ev["bai_regret"], 0.0, atol=1e-5)
    np.testing.assert_allclose(ev["reward"], best, atol=1e-5)
    assert float(ev["win_rate"].mean()) > 0.55
    np.testing.assert_allclose(float(ev["gap_closed"].mean()), 1.0, atol=1e-4)

    # A reference sample against reference samples: exactly ½ in expectation (loose bound).
    ref_arms = env.reference.sample(jax.random.key(16), obs.prompts)
    ev_ref = evaluate(jax.random.key(17), state, obs, ref_arms, params)
    # same key, same metrics; another key draws other reference samples
    jax.tree.map(np.testing.assert_array_equal, evaluate(jax.random.key(17), state, obs, ref_arms, params), ev_ref)
    assert not np.array_equal(
        evaluate(jax.random.key(99), state, obs, ref_arms, params)["win_rate"], ev_ref["win_rate"]
    )
    assert abs(float(ev_ref["win_rate"].mean()) - 0.5) < 0.1
    assert abs(float(ev_ref["gap_closed"].mean())) < 0.35
    assert float(ev_ref["bai_regret"].mean()) > 0.1  # the reference is misaligned

    # bai_regret against brute force for arbitrary arms
    arms = jax.random.randint(jax.random.key(18), (B_EVAL, L), 0, V, jnp.int32)
    ev_rand = evaluate(jax.random.key(19), state, obs, arms, params)
    for i in range(5):
        x = np.asarray(obs.prompts[i])
        np.testing.assert_allclose(
            ev_rand["bai_regret"][i],
            np_gold(params.tables, x, ALL).max() - np_gold(params.tables, x, np.asarray(arms[i])),
            atol=1e-4,
        )


# --- the reference policy ----------------------------------------------------------------------


def test_reference_is_cached_and_reloaded(env, cache_dir, params):
    import os

    ref = env.reference
    assert os.path.isdir(ref.path) and os.path.dirname(ref.path) == cache_dir
    assert os.path.exists(os.path.join(ref.path, "meta.json"))
    fresh = dataclasses.replace(env)  # a new object: nothing is built on it yet
    with pytest.raises(RuntimeError, match=r"not built; call env.build_reference\(\) first .*" + re.escape(cache_dir)):
        _ = fresh.reference
    with pytest.raises(RuntimeError, match="build_reference"):
        _ = fresh.default_params
    np.testing.assert_array_equal(fresh.make_params(with_reference=False).scale, 1.0)  # needs no π_ref
    loaded = fresh.build_reference()
    assert loaded.loaded_from_cache and loaded.path == ref.path and fresh.reference is loaded
    jax.tree.map(np.testing.assert_array_equal, loaded.params, ref.params)
    # a different configuration gets a different cache entry
    other = dataclasses.replace(env, bias_scale=0.5)
    assert other.reference_fingerprint() != env.reference_fingerprint()


def test_reference_learns_the_teacher_but_is_misaligned(env, params):
    # Eager calls of jitted functions, with the shapes of the evaluate test (compiled once).
    ref, tables = env.reference, params.tables
    prompts = jax.random.randint(jax.random.key(20), (B_EVAL, LP), 0, V)
    ys = sd.teacher_sample(jax.random.key(21), tables, prompts)
    nll = -float(jnp.mean(ref.log_prob(prompts, ys)))
    entropy = float(jnp.mean(sd.teacher_entropy(tables, prompts)))
    uniform = L * np.log(V)
    assert nll < entropy + 0.5 * (uniform - entropy), (nll, entropy, uniform)  # far better than uniform
    assert nll > entropy - 0.3  # cannot beat the teacher's entropy (up to sampling noise)
    # log-probs are normalised: exp sums to one over all V^L responses (two prompts)
    lp_all = ref.log_prob(jnp.repeat(prompts[:2], V**L, 0), jnp.tile(ALL, (2, 1)))
    np.testing.assert_allclose(jnp.exp(lp_all).reshape(2, -1).sum(1), 1.0, atol=1e-4)
    # misaligned: its expected gold reward is below the Viterbi optimum's
    _, best = sd.optimal_response(tables, prompts)
    gap = float(jnp.mean(best - sd.gold_reward(tables, prompts, ref.sample(jax.random.key(22), prompts))))
    assert gap > 0.3, gap
    # the training report agrees
    assert ref.report["teacher_entropy"] < ref.report["nll"] < ref.report["uniform_nll"]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 1),
        ("prompt_length", 0),
        ("response_length", 0),
        ("batch_size", 0),
        ("teacher_temperature", -1.0),
        ("teacher_temperature", 0.0),
        ("bias_scale", -0.1),
        ("scale", float("nan")),
        ("link", "logistic"),
        ("eval_reference_samples", 0),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SequenceDuel\.{field}="):
        sd.SequenceDuel(**{field: value})


def test_bad_reference_config_raises():
    with pytest.raises(ValueError, match=r"ReferenceConfig\.train_steps="):
        ReferenceConfig(train_steps=0)
    with pytest.raises(ValueError, match=r"ReferenceConfig\.learning_rate="):
        ReferenceConfig(learning_rate=-1.0)


def test_shape_errors_name_the_argument(env, bare_params):
    state, obs = env.reset(jax.random.key(23), bare_params)
    wrong_length = Duel(arms=jnp.zeros((B, 2, L + 1), jnp.int32), query=jnp.ones((B,), bool))
    with pytest.raises(ValueError, match="duel.arms"):
        env.step(jax.random.key(0), state, wrong_length, bare_params)
    with pytest.raises(ValueError, match="duel.arms"):
        env.step(jax.random.key(0), state, Duel(arms=jnp.zeros((B, 2, L)), query=jnp.ones((B,), bool)), bare_params)
    with pytest.raises(ValueError, match="duel.query"):
        env.step(
            jax.random.key(0),
            state,
            Duel(arms=jnp.zeros((B, 2, L), jnp.int32), query=jnp.ones((B + 1,), bool)),
            bare_params,
        )
    bad_obs = Observation(prompts=jnp.zeros((B_EVAL, LP + 1), jnp.int32))
    with pytest.raises(ValueError, match="obs.prompts"):
        env.evaluate(jax.random.key(0), state, bad_obs, jnp.zeros((B_EVAL, L), jnp.int32), bare_params)
    with pytest.raises(ValueError, match="arms"):
        env.evaluate(
            jax.random.key(0),
            state,
            env.eval_observation(state, bare_params),
            jnp.zeros((B_EVAL, L + 2), jnp.int32),
            bare_params,
        )
    with pytest.raises(ValueError, match="scale"):
        env.reset(jax.random.key(0), bare_params.replace(scale=jnp.float32(-1.0)))


# --- the compiled loop -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _UniformAgent:
    """Plays uniformly random responses; recommends one too (a minimal tier-2 agent for cdb.run)."""

    def init(self, key, spec):
        return {"spec_v": jnp.int32(spec.vocab_size)}

    def select(self, key, state, obs):
        arms = jax.random.randint(key, (obs.prompts.shape[0], 2, L), 0, V, jnp.int32)
        return Duel(arms=arms, query=jnp.ones((obs.prompts.shape[0],), bool)), {}

    def update(self, key, state, obs, duel, feedback):
        return state, {}

    def recommend(self, key, state, obs):
        return jax.random.randint(key, (obs.prompts.shape[0], L), 0, V, jnp.int32)


def test_runs_under_cdb_run(env, params):
    results = cdb.run(_UniformAgent(), env, rounds=4, seeds=2, eval_every=2, env_params=params, progress=False)
    assert results.metrics["regret"].shape == (2, 4)
    assert np.all(results.metrics["regret"] > 0)
    assert np.all((results.metrics["online_win_rate"] >= 0) & (results.metrics["online_win_rate"] <= 1))
    for name in ("bai_regret", "win_rate", "gap_closed", "reward"):
        assert results.eval_metrics[name].shape == (2, 3), name
        assert np.all(np.isfinite(results.eval_metrics[name]))
    # random arms close (almost) none of the gap and lose to the reference on average
    assert float(results.eval_metrics["gap_closed"].mean()) < 0.5


def test_cache_dir_defaults_and_env_var_override(monkeypatch, tmp_path):
    from cdb.environments import reference_policy as rp

    monkeypatch.delenv("CDB_CACHE_DIR", raising=False)
    assert rp.resolve_cache_dir() == (Path.home() / ".cache" / "cdb" / "reference_policies").absolute()
    monkeypatch.setenv("CDB_CACHE_DIR", str(tmp_path))
    assert rp.resolve_cache_dir() == tmp_path
    assert rp.resolve_cache_dir(tmp_path / "x") == tmp_path / "x"  # an explicit directory wins
    # the cache key covers the reference's size and the instance, not the cache location
    env = sd.SequenceDuel()
    assert rp.cache_key(env.reference_fingerprint()) == rp.cache_key(
        dataclasses.replace(env, cache_dir="/elsewhere").reference_fingerprint()
    )
    assert rp.cache_key(env.reference_fingerprint()) != rp.cache_key(
        dataclasses.replace(env, instance_seed=3).reference_fingerprint()
    )
    small = dataclasses.replace(env, reference_config=ReferenceConfig(d_model=16))
    assert rp.cache_key(env.reference_fingerprint()) != rp.cache_key(small.reference_fingerprint())
    assert env == dataclasses.replace(env, cache_dir="/elsewhere")  # not part of the identity


def test_tables_first_touched_inside_jit_do_not_leak_tracers(env):
    fresh = dataclasses.replace(env, instance_seed=5)  # its tables are not computed yet

    @jax.jit
    def best(prompts):
        return sd.optimal_response(fresh.tables, prompts)[1]

    prompts = jnp.zeros((2, LP), jnp.int32)
    inside = best(prompts)
    outside = sd.optimal_response(fresh.tables, prompts)[1]  # the cached tables are concrete arrays
    assert isinstance(fresh.tables.gold.pairwise, jax.Array)
    np.testing.assert_allclose(inside, outside, atol=1e-6)
