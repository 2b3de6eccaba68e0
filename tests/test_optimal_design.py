"""D-optimal design (cdb.design) and the optimal-design agents (cdb.agents.optimal_design)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdb
from cdb import design
from cdb.agents.optimal_design import (
    OfflineOptimalDesign,
    OptimalDesignAgent,
    all_pairs,
    run_offline_design,
)
from cdb.environments import KArmedDuel, LinearDuel
from cdb.keys import seed_keys

# A fixed set of 4 vectors in R^2 whose D-optimal design has a non-trivial support.
VECTORS = np.array([[1.0, 0.2], [0.3, 1.1], [-0.8, 0.9], [0.5, 0.4]], np.float32)


def _simplex_grid(n, resolution):
    """Every weight vector on the simplex of R^n with coordinates in multiples of 1/resolution."""
    rows = [c for c in itertools.product(range(resolution + 1), repeat=n - 1) if sum(c) <= resolution]
    head = np.array(rows, np.float64)
    return np.concatenate([head, resolution - head.sum(axis=1, keepdims=True)], axis=1) / resolution


def _brute_force_log_det(z, resolution):
    w = _simplex_grid(z.shape[0], resolution)
    m = np.einsum("gn,ni,nj->gij", w, z.astype(np.float64), z.astype(np.float64))
    return np.linalg.slogdet(m)[1].max()


def test_frank_wolfe_reaches_the_brute_force_optimum():
    brute = _brute_force_log_det(VECTORS, resolution=120)
    for step_size, steps, tol in (("line_search", 300, 2e-4), ("open_loop", 3000, 5e-3)):
        w = design.d_optimal_design(VECTORS, steps, reg=0.0, step_size=step_size)
        assert np.all(np.asarray(w) >= 0) and abs(float(w.sum()) - 1) < 1e-5
        value = float(design.log_det(VECTORS, w))
        # A grid point is a feasible design: FW must not be (meaningfully) worse than the best one,
        # and the grid at resolution 1/120 is within a hair of the continuous optimum.
        assert value >= brute - tol, (step_size, value, brute)
        assert value <= brute + 5e-3, (step_size, value, brute)


def test_kiefer_wolfowitz_equivalence():
    z = np.random.default_rng(3).normal(size=(12, 3)).astype(np.float32)
    w = design.d_optimal_design(z, 400, reg=0.0)
    g = np.asarray(design.leverages(z, w))
    d = z.shape[1]
    assert abs(g.max() - d) < 1e-3 * d, g.max()
    support = np.asarray(w) > 1e-3
    assert support.sum() >= d
    np.testing.assert_allclose(g[support], d, rtol=2e-3)
    # The uniform design is not optimal: its largest leverage exceeds d.
    assert float(design.leverages(z, jnp.full(12, 1 / 12)).max()) > d + 0.1


def test_away_steps_drop_points_that_toward_steps_cannot():
    # The 4th vector is never in the optimal support; without away steps its weight only decays as O(1/k).
    w_away = np.asarray(design.d_optimal_design(VECTORS, 200, reg=0.0))
    w_plain = np.asarray(design.d_optimal_design(VECTORS, 200, reg=0.0, away_steps=False))
    assert w_away[3] == 0.0
    assert w_plain[3] > 0.0


def test_round_design_by_hand_and_sums():
    np.testing.assert_array_equal(design.round_design(jnp.array([0.5, 0.3, 0.2]), 10), [5, 3, 2])
    # p = 2 support points: ceil((3 - 1) * w) = [2, 1] -> sum 3.
    np.testing.assert_array_equal(design.round_design(jnp.array([0.7, 0.0, 0.3]), 3), [2, 0, 1])
    rng = np.random.default_rng(0)
    for budget in (1, 2, 7, 50):
        w = rng.dirichlet(np.ones(6)).astype(np.float32)
        counts = np.asarray(design.round_design(w, budget))
        assert counts.sum() == budget and counts.min() >= 0
        assert np.all(np.abs(counts - budget * w) <= len(w) / 2)
        if budget >= len(w):  # efficient rounding keeps the whole support once the budget allows it
            assert counts.min() >= 1


def test_grouped_design_matches_brute_force_over_feasible_query_sets():
    groups, pairs, budget = 6, 3, 3
    for seed in (0, 4, 7):
        z = np.random.default_rng(seed).normal(size=(groups, pairs, 2)).astype(np.float32)
        w = np.asarray(design.grouped_d_optimal_design(z, budget, 300))
        assert abs(w.sum() - 1) < 1e-5 and np.all(w.sum(axis=1) <= 1 / budget + 1e-5)
        chosen, pair = (np.asarray(a) for a in design.round_grouped_design(w, budget))
        assert chosen.sum() == budget
        picked = z[chosen, pair[chosen]]
        value = float(design.log_det(picked, np.full(budget, 1 / budget), 0.0))
        best = max(
            np.linalg.slogdet(z[list(g), list(p)].T @ z[list(g), list(p)] / budget)[1]
            for g in itertools.combinations(range(groups), budget)
            for p in itertools.product(range(pairs), repeat=budget)
        )
        assert value >= best - 1e-3, (seed, value, best)


def test_design_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        design.d_optimal_design(VECTORS, 0)
    with pytest.raises(ValueError, match="reg"):
        design.d_optimal_design(VECTORS, 10, reg=-1.0)
    with pytest.raises(ValueError, match="step_size"):
        design.d_optimal_design(VECTORS, 10, step_size="armijo")
    with pytest.raises(ValueError, match="budget"):
        design.round_design(jnp.array([0.5, 0.5]), 0)
    with pytest.raises(ValueError, match="budget"):
        design.grouped_d_optimal_design(np.zeros((2, 3, 2), np.float32), 3)


# --- the offline experiment -------------------------------------------------------------------

OFFLINE_ENV = LinearDuel(num_arms=5, feature_dim=3, batch_size=4, eval_batch_size=64, scale=3.0)
BUDGETS = (4, 16, 64)


@pytest.fixture(scope="module")
def offline():
    kwargs = dict(pool_rounds=16, seeds=6, key=0, design_steps=100)
    return {d: run_offline_design(OFFLINE_ENV, BUDGETS, design=d, **kwargs) for d in ("d_optimal", "random")}


def test_offline_design_regret_decreases_with_budget(offline):
    res = offline["d_optimal"]
    assert isinstance(res, cdb.Results)
    np.testing.assert_array_equal(res.eval_rounds, BUDGETS)
    assert res.eval_metrics["bai_regret"].shape == (6, 3) and res.num_seeds == 6 and res.metrics == {}
    np.testing.assert_array_equal(res.eval_metrics["queries"], np.broadcast_to(BUDGETS, (6, 3)))
    values, budgets = res.curve("bai_regret")
    np.testing.assert_array_equal(budgets, BUDGETS)
    mean = values.mean(axis=0)
    assert mean[0] > mean[1] > mean[2], mean
    assert mean[2] < 0.5 * mean[0], mean
    assert res.config["budgets"] == list(BUDGETS) and res.config["design"]["design"] == "d_optimal"
    assert res.config["key_impl"] == "threefry2x32"


def test_offline_design_beats_random_queries(offline):
    opt, rnd = (offline[d].eval_metrics for d in ("d_optimal", "random"))
    # Same instances, pools and held-out contexts per seed; the designed query sets are better.
    assert np.all(opt["log_det"] > rnd["log_det"])
    assert opt["bai_regret"].mean() < 0.6 * rnd["bai_regret"].mean(), (opt["bai_regret"], rnd["bai_regret"])


def test_offline_design_takes_cdb_run_keys(tmp_path):
    # cdb.run's per-seed keys: an int, the typed key and its raw data give the same results; another
    # PRNG is carried through (and recorded) as cdb.run does.
    small = dict(pool_rounds=2, seeds=2, design_steps=5)
    by_int = run_offline_design(OFFLINE_ENV, [3], key=7, **small)
    for key in (jax.random.key(7), jax.random.key_data(jax.random.key(7))):
        same = run_offline_design(OFFLINE_ENV, [3], key=key, **small)
        np.testing.assert_array_equal(same.eval_metrics["bai_regret"], by_int.eval_metrics["bai_regret"])
    other = run_offline_design(OFFLINE_ENV, [3], key=8, **small)
    assert not np.array_equal(other.eval_metrics["log_det"], by_int.eval_metrics["log_det"])
    rbg = run_offline_design(OFFLINE_ENV, [3], key=jax.random.key(7, impl="rbg"), **small)
    assert rbg.config["key_impl"] == "rbg" and np.all(np.isfinite(rbg.eval_metrics["bai_regret"]))
    np.testing.assert_array_equal(seed_keys_data(7, 2), jax.random.key_data(jax.random.split(jax.random.key(7), 2)))
    # Results round-trips through save/load like any cdb.run result.
    loaded = cdb.Results.load(by_int.save(tmp_path / "offline"))
    np.testing.assert_array_equal(loaded.eval_metrics["log_det"], by_int.eval_metrics["log_det"])
    assert loaded.num_seeds == 2


def seed_keys_data(key, seeds):
    return jax.random.key_data(seed_keys(key, seeds))


@dataclasses.dataclass(frozen=True)
class _InstanceProbe(KArmedDuel):
    """KArmedDuel whose "regret" reports the first drawn utility: which instance reset drew."""

    def evaluate(self, key, state, obs, arms, params):
        return {"bai_regret": jnp.broadcast_to(state.utilities[0], arms.shape)}


@dataclasses.dataclass(frozen=True)
class _DuelDependentContexts(LinearDuel):
    """LinearDuel whose next contexts shift by the first arm played: the pool cannot be replayed."""

    def step(self, key, state, duel, params):
        state, obs, feedback, info = super().step(key, state, duel, params)
        shift = 0.01 * duel.arms[0, 0].astype(jnp.float32)
        return state, obs.replace(features=obs.features + shift), feedback, info


def test_offline_design_refuses_contexts_that_depend_on_the_duels():
    env = _DuelDependentContexts(num_arms=4, feature_dim=2, batch_size=2, eval_batch_size=2)
    with pytest.raises(ValueError, match="do not depend on the duels"):
        run_offline_design(env, [3], pool_rounds=3, seeds=2, key=0, design_steps=2)
    # the same design on the plain environment replays its pool
    plain = LinearDuel(num_arms=4, feature_dim=2, batch_size=2, eval_batch_size=2)
    assert run_offline_design(plain, [3], pool_rounds=3, seeds=2, key=0, design_steps=2).num_seeds == 2


def test_offline_design_meets_cdb_runs_problem_instance():
    env = _InstanceProbe(num_arms=4, batch_size=2, eval_batch_size=2)
    online = cdb.run(OptimalDesignAgent(buffer_capacity=4), env, rounds=1, seeds=3, key=5, progress=False)
    offline = run_offline_design(env, [2], pool_rounds=1, seeds=3, key=5, design_steps=2)
    expected = online.eval_metrics["bai_regret"][:, 0]
    assert len(set(expected.tolist())) == 3  # three different instances
    np.testing.assert_array_equal(offline.eval_metrics["bai_regret"][:, 0], expected)


def test_offline_design_counts_queries_and_checks_budget():
    out = OfflineOptimalDesign(budget=5, pool_rounds=2, design_steps=10).run(1, OFFLINE_ENV, seeds=2)
    np.testing.assert_array_equal(out["queries"], [5, 5])
    assert np.all(np.isfinite(out["bai_regret"])) and np.all(out["bai_regret"] >= 0)
    with pytest.raises(ValueError, match="budget"):
        OfflineOptimalDesign(budget=9, pool_rounds=2).run(0, OFFLINE_ENV)  # pool holds 2 × 4 contexts
    with pytest.raises(ValueError, match="pure-JAX|features"):
        OfflineOptimalDesign(budget=1, pool_rounds=1).run(0, _HostEnv())
    with pytest.raises(ValueError, match="budgets"):
        run_offline_design(OFFLINE_ENV, [], pool_rounds=2)
    with pytest.raises(ValueError, match="budgets"):
        run_offline_design(OFFLINE_ENV, [2.5], pool_rounds=2)


class _HostEnv:
    pure_jax = False
    spec = cdb.EnvSpec(batch_size=1, num_arms=3, feature_dim=2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(budget=0, pool_rounds=4), "budget"),
        (dict(budget=2, pool_rounds=0), "pool_rounds"),
        (dict(budget=2, pool_rounds=4, design="a_optimal"), "design"),
        (dict(budget=2, pool_rounds=4, lam=0.0), "lam"),
        (dict(budget=2, pool_rounds=4, design_reg=-1e-3), "design_reg"),
    ],
)
def test_offline_design_validates_fields(kwargs, field):
    with pytest.raises(ValueError, match=f"OfflineOptimalDesign.{field}"):
        OfflineOptimalDesign(**kwargs)


def test_all_pairs():
    first, second = all_pairs(4)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]


# --- the online, label-free agent --------------------------------------------------------------


def test_online_design_agent_is_label_free_and_greedy():
    env = LinearDuel(num_arms=4, feature_dim=2, batch_size=3)
    agent = OptimalDesignAgent()
    state = agent.init(jax.random.key(0), env.spec)
    _, obs = env.reset(jax.random.key(1), env.default_params)
    select, update = jax.jit(agent.select), jax.jit(agent.update)
    duel, info = select(jax.random.key(2), state, obs)
    arms = np.asarray(duel.arms)
    assert np.all(arms[:, 0] != arms[:, 1]) and float(info["log_det_gain"]) > 0
    # First context: the pair of largest ‖φ_i − φ_j‖ under V = λI.
    f = np.asarray(obs.features[0])
    dist = np.linalg.norm(f[:, None] - f[None], axis=-1)
    assert np.isclose(dist[arms[0, 0], arms[0, 1]], dist.max())
    # The next selection does not depend on the labels received.
    fb = [cdb.Feedback(preference=jnp.full((3,), v), queried=jnp.ones((3,), bool)) for v in (0.0, 1.0)]
    s0, _ = update(jax.random.key(3), state, obs, duel, fb[0])
    s1, _ = update(jax.random.key(3), state, obs, duel, fb[1])
    assert not np.allclose(s0.theta, s1.theta)
    d0, _ = select(jax.random.key(4), s0, obs)
    d1, _ = select(jax.random.key(4), s1, obs)
    np.testing.assert_array_equal(d0.arms, d1.arms)
    # Within a round, each context's pair is the widest under V grown by the earlier contexts' pairs.
    z = np.stack([f_b[a] - f_b[b] for f_b, (a, b) in zip(np.asarray(obs.features), arms, strict=True)])
    v = np.eye(2)
    for b in range(3):
        fb_ = np.asarray(obs.features[b])
        diff = fb_[:, None] - fb_[None]
        width = np.einsum("ijd,de,ije->ij", diff, np.linalg.inv(v), diff)
        assert np.isclose(width[arms[b, 0], arms[b, 1]], width.max(), rtol=1e-4), b
        v = v + np.outer(z[b], z[b])
    np.testing.assert_allclose(np.asarray(s0.v), v, atol=1e-5)


def test_online_design_agent_learns_the_best_arm():
    env = LinearDuel(num_arms=5, feature_dim=3, batch_size=2, eval_batch_size=32, scale=3.0)
    res = cdb.run(OptimalDesignAgent(buffer_capacity=256), env, rounds=80, seeds=3, eval_every=40, progress=False)
    bai = res.eval_metrics["bai_regret"]
    assert np.all(bai[:, -1] < bai[:, 0]), bai
    assert "log_det_gain" in res.metrics and "mle_loss" in res.metrics


def test_online_design_agent_rejects_featureless_envs():
    with pytest.raises(ValueError, match="feature"):
        OptimalDesignAgent().init(jax.random.key(0), cdb.EnvSpec(batch_size=1, prompt_length=3))
    # K-armed one-hot features are features: it runs there too.
    state = OptimalDesignAgent().init(jax.random.key(0), KArmedDuel(num_arms=3).spec)
    assert state.v.shape == (3, 3)
