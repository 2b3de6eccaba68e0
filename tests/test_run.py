"""The experiment loop, Results and metrics (cdb.run, cdb.results, cdb.metrics, cdb.runners.metrics)."""

import ast
import dataclasses
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdb
from cdb.agents import ee_ts, passive
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel
from cdb.metrics import log_log_slope, queries_to_target
from cdb.results import standard_error
from cdb.runners.metrics import round_metrics, scalar_info
from cdb.types import Feedback

ENV = LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=8)
AGENT = passive(reward_model=LinearEnsemble(num_members=2))


@pytest.fixture(scope="module")
def results():
    return cdb.run(AGENT, ENV, rounds=12, seeds=3, eval_every=4, progress=False)


def test_results_shapes_and_counts(results):
    assert results.num_seeds == 3 and results.num_rounds == 12
    for name in ("regret", "weak_regret", "strong_regret", "queries", "rm_loss"):
        assert results.metrics[name].shape == (3, 12), name
    np.testing.assert_array_equal(results.metrics["duels"], 2)
    np.testing.assert_array_equal(results.metrics["queries"], 2)
    np.testing.assert_array_equal(results.eval_rounds, [0, 4, 8, 12])
    assert results.eval_metrics["bai_regret"].shape == (3, 4)
    # weak <= average <= strong, all non-negative, per round.
    m = results.metrics
    assert np.all(m["weak_regret"] <= m["regret"] + 1e-6) and np.all(m["regret"] <= m["strong_regret"] + 1e-6)
    assert np.all(m["weak_regret"] >= -1e-6)


def test_same_key_same_results_and_blocking_invariance(results):
    again = cdb.run(AGENT, ENV, rounds=12, seeds=3, eval_every=6, progress=False)
    for name in results.metrics:
        np.testing.assert_array_equal(results.metrics[name], again.metrics[name])
    other = cdb.run(AGENT, ENV, rounds=12, seeds=3, eval_every=6, key=1, progress=False)
    assert not np.array_equal(results.metrics["regret"], other.metrics["regret"])


def test_seeds_are_independent_problems(results):
    assert len({tuple(r) for r in np.round(results.metrics["regret"], 5)}) == 3


def test_save_load_roundtrip(results, tmp_path):
    path = results.save(tmp_path / "run")
    loaded = cdb.Results.load(path)
    assert loaded.config == results.config
    for name in results.metrics:
        np.testing.assert_array_equal(loaded.metrics[name], results.metrics[name])
        assert loaded.metrics[name].dtype == results.metrics[name].dtype
    np.testing.assert_array_equal(loaded.eval_metrics["bai_regret"], results.eval_metrics["bai_regret"])
    np.testing.assert_array_equal(loaded.eval_rounds, results.eval_rounds)
    assert results.config["agent"]["selector"]["type"] == "Passive"
    assert results.config["env"]["num_arms"] == 4


def test_dataframe_and_curves(results):
    frame = results.to_dataframe()
    assert len(frame) == 3 * 13  # rounds 1..12 plus the round-0 evaluation, per seed
    seed0 = frame[frame.seed == 0].set_index("round")
    np.testing.assert_allclose(seed0.loc[1:, "cumulative_regret"], np.cumsum(results.metrics["regret"][0]), rtol=1e-6)
    np.testing.assert_allclose(seed0.loc[[0, 4, 8, 12], "bai_regret"], results.eval_metrics["bai_regret"][0])
    values, rounds = results.curve("cumulative_queries")
    np.testing.assert_array_equal(values[:, -1], 24)
    np.testing.assert_array_equal(rounds, np.arange(1, 13))
    with pytest.raises(KeyError, match="unknown metric"):
        results.curve("nope")


def test_plot_returns_figure_with_band(results, tmp_path):
    fig = results.plot("cumulative_regret", x="queries", label="passive")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "oracle queries"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.cumsum(results.metrics["regret"], 1).mean(0), rtol=1e-6)
    assert len(ax.collections) == 1  # the standard-error band
    fig.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_queries_to_target_by_hand():
    metrics = {"queries": np.full((3, 4), 2), "regret": np.zeros((3, 4))}
    evals = {"bai_regret": np.array([[1.0, 0.5, 0.2, 0.1], [1.0, 0.9, 0.8, 0.7], [1.0, 0.3, 0.3, 0.2]])}
    res = cdb.Results(metrics, np.array([0, 1, 2, 3]), evals, {})
    out = queries_to_target(res, "bai_regret", 0.4)
    np.testing.assert_array_equal(out.per_seed, [4.0, np.inf, 2.0])
    assert out.reached == 2 and out.mean == 3.0
    np.testing.assert_allclose(out.stderr, np.std([4.0, 2.0], ddof=1) / np.sqrt(2))
    above = queries_to_target(res, "bai_regret", 0.95, direction="above")
    np.testing.assert_array_equal(above.per_seed, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="direction"):
        queries_to_target(res, "bai_regret", 0.4, direction="up")


def test_round_metrics_by_hand():
    info = {
        "regret": jnp.array([0.5, 1.5]),
        "weak_regret": jnp.array([0.0, 1.0]),
        "reward_first": jnp.array([3.0, 4.0]),
        "online_win_rate": jnp.array([0.25, 0.75]),
        "seconds_oracle": jnp.float32(2.0),
    }
    feedback = Feedback(preference=jnp.array([1.0, 0.0]), queried=jnp.array([True, False]))
    out = {k: float(v) for k, v in round_metrics(info, feedback).items()}
    # regrets summed over the batch, other per-context entries averaged, scalars kept, rewards dropped
    assert out == {
        "regret": 2.0,
        "weak_regret": 1.0,
        "queries": 1.0,
        "duels": 2.0,
        "online_win_rate": 0.5,
        "seconds_oracle": 2.0,
    }


def test_scalar_info_keeps_one_number_per_seed_in_both_runners_layouts():
    one_seed = {"loss": jnp.float32(1.0), "scores": jnp.ones(3)}  # the compiled runner, inside its vmap
    assert set(scalar_info(one_seed)) == {"loss"}
    all_seeds = {"loss": jnp.ones(2), "scores": jnp.ones((2, 3)), "step": jnp.int32(4)}  # the host runner
    assert set(scalar_info(all_seeds, seed_axes=1)) == {"loss"}


def test_results_metrics_and_plotting_import_without_a_cycle():
    """cdb.results imports neither cdb.metrics nor cdb.plotting at module level (both build on it)."""

    def imported(name):
        tree = ast.parse(Path(cdb.__file__).with_name(f"{name}.py").read_text())
        return {n.module for n in tree.body if isinstance(n, ast.ImportFrom)} | {
            a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names
        }

    assert not imported("results") & {"cdb.metrics", "cdb.plotting"}
    assert "cdb.metrics" not in imported("plotting")
    assert "cdb.plotting" not in imported("metrics")


def test_metric_helpers_by_hand():
    np.testing.assert_allclose(standard_error(np.array([[1.0], [3.0]])), [np.sqrt(2) / np.sqrt(2)])
    t = np.arange(1, 401)
    assert abs(log_log_slope(np.sqrt(t)) - 0.5) < 1e-6
    assert abs(log_log_slope(3.0 * t) - 1.0) < 1e-6


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(rounds=0), "rounds"),
        (dict(rounds=10, seeds=0), "seeds"),
        (dict(rounds=10, eval_every=3), "eval_every"),
        (dict(rounds=10, seed_chunk=0), "seed_chunk"),
        (dict(rounds=10, seed_chunk="big"), "seed_chunk"),
        (dict(rounds=10, seed_chunk=True), "seed_chunk"),
        (dict(rounds=10, compiler_options="fast"), "compiler_options"),
        (dict(rounds=10, compiler_options=[("xla_cpu_enable_fast_math", True)]), "compiler_options"),
    ],
)
def test_run_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        cdb.run(AGENT, ENV, progress=False, **kwargs)


@pytest.mark.parametrize("seed_chunk", [1, 3])
def test_seed_chunks_give_the_unchunked_results(seed_chunk):
    # 7 seeds in chunks of 3: three chunks of 3, the last seed repeated twice to fill them
    agent = ee_ts(reward_model=LinearEnsemble(num_members=3))
    kwargs = dict(rounds=6, seeds=7, key=2, eval_every=3, progress=False, shard_seeds=False)
    whole = cdb.run(agent, ENV, seed_chunk=None, **kwargs)
    chunked = cdb.run(agent, ENV, seed_chunk=seed_chunk, **kwargs)
    assert set(chunked.metrics) == set(whole.metrics)
    for name in whole.metrics:
        assert chunked.metrics[name].shape == (7, 6), name
        np.testing.assert_allclose(chunked.metrics[name], whole.metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(chunked.eval_metrics["bai_regret"], whole.eval_metrics["bai_regret"], rtol=1e-5)
    assert len({tuple(r) for r in np.round(chunked.metrics["regret"], 5)}) == 7  # no seed copied into another


def test_compiler_options_change_speed_not_results():
    from cdb.xla_options import CPU_COMPILER_OPTIONS, resolve_compiler_options

    # on this CPU's XLA the options of "auto" are accepted (a newer XLA may not know them)
    assert resolve_compiler_options("auto") == CPU_COMPILER_OPTIONS
    assert resolve_compiler_options(None) == {}
    agent = ee_ts(reward_model=LinearEnsemble(num_members=3))
    kwargs = dict(rounds=6, seeds=2, key=4, progress=False)
    tuned = cdb.run(agent, ENV, **kwargs)
    plain = cdb.run(agent, ENV, compiler_options=None, **kwargs)
    for name in plain.metrics:
        np.testing.assert_allclose(tuned.metrics[name], plain.metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_no_such_option"):
        cdb.run(agent, ENV, compiler_options={"xla_cpu_no_such_option": True}, **kwargs)


def test_auto_compiler_options_fall_back_when_xla_does_not_know_them(monkeypatch):
    options = importlib.import_module("cdb.xla_options")
    monkeypatch.setattr(options, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": True})
    options._default_compiler_options.cache_clear()
    try:
        assert options.resolve_compiler_options("auto") == {}
    finally:
        options._default_compiler_options.cache_clear()


@dataclasses.dataclass(frozen=True)
class KeyImplProbe:
    """Passive on ENV that records, while tracing, the PRNG of every key it is handed."""

    seen: list = dataclasses.field(default_factory=list)  # unhashable: cdb.run compiles it afresh

    def __getattr__(self, name):
        return getattr(AGENT, name)

    def init(self, key, spec):
        self.seen.append(jax.random.key_impl(key))
        return AGENT.init(key, spec)

    def select(self, key, state, obs):
        self.seen.append(jax.random.key_impl(key))
        return AGENT.select(key, state, obs)

    def update(self, key, state, obs, duel, feedback):
        self.seen.append(jax.random.key_impl(key))
        return AGENT.update(key, state, obs, duel, feedback)

    def recommend(self, key, state, obs):
        self.seen.append(jax.random.key_impl(key))
        return AGENT.recommend(key, state, obs)


@pytest.mark.parametrize("impl", ["threefry2x32", "philox4x32"])
def test_run_keeps_the_prng_of_its_key(impl):
    probe = KeyImplProbe()
    key = jax.random.key(5, impl=impl)
    res = cdb.run(probe, ENV, rounds=4, seeds=2, key=key, progress=False)
    assert set(probe.seen) == {impl} and len(probe.seen) >= 4  # init, select, update, recommend
    assert res.config["key_impl"] == impl
    again = cdb.run(AGENT, ENV, rounds=4, seeds=2, key=key, progress=False)
    np.testing.assert_array_equal(res.metrics["regret"], again.metrics["regret"])
    other = cdb.run(AGENT, ENV, rounds=4, seeds=2, key=5, progress=False)  # the same seed, JAX's default PRNG
    assert np.array_equal(other.metrics["regret"], res.metrics["regret"]) == (impl == "threefry2x32")


def test_checkpoint_resume_equals_uninterrupted(results, tmp_path):
    half = cdb.run(AGENT, ENV, rounds=8, seeds=3, eval_every=4, progress=False, checkpoint_dir=tmp_path)
    assert half.num_rounds == 8
    resumed = cdb.run(
        AGENT, ENV, rounds=12, seeds=3, eval_every=4, progress=False, checkpoint_dir=tmp_path, resume=True
    )
    for name in results.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], results.metrics[name])
    np.testing.assert_array_equal(resumed.eval_metrics["bai_regret"], results.eval_metrics["bai_regret"])
    with pytest.raises(ValueError, match="different experiment configuration"):
        cdb.run(AGENT, ENV, rounds=12, seeds=2, eval_every=4, progress=False, checkpoint_dir=tmp_path, resume=True)


@dataclasses.dataclass(frozen=True)
class ExplodingAgent:
    """Passive selection whose reported loss becomes NaN at round ``bad_round``."""

    bad_round: int = 6

    def init(self, key, spec):
        return jnp.zeros((), jnp.int32)

    def select(self, key, state, obs):
        return passive_duel(key, obs), {}

    def update(self, key, state, obs, duel, feedback):
        loss = jnp.where(state + 1 >= self.bad_round, jnp.nan, 1.0)
        return state + 1, {"policy_loss": loss}

    def recommend(self, key, state, obs):
        return jnp.zeros(obs.features.shape[0], jnp.int32)


def passive_duel(key, obs):
    batch, arms = obs.features.shape[:2]
    pairs = jax.vmap(lambda k: jax.random.choice(k, arms, (2,), replace=False))(jax.random.split(key, batch))
    return cdb.Duel(pairs.astype(jnp.int32), jnp.ones(batch, bool))


def test_nan_loss_stops_run_and_keeps_completed_rounds():
    with pytest.raises(cdb.NonFiniteLossError, match="round 6") as err:
        cdb.run(ExplodingAgent(), ENV, rounds=8, seeds=2, eval_every=4, progress=False)
    partial = err.value.results
    assert err.value.round == 6 and err.value.metric == "policy_loss"
    assert partial.num_rounds == 5
    assert np.all(np.isfinite(partial.metrics["policy_loss"]))
    np.testing.assert_array_equal(partial.eval_rounds, [0, 4])


@dataclasses.dataclass(frozen=True)
class HostLinearDuel(LinearDuel):
    """The same environment, declared untraceable, to exercise the host loop."""

    pure_jax = False


def test_host_loop_matches_compiled_loop():
    compiled = cdb.run(AGENT, ENV, rounds=4, seeds=2, eval_every=2, progress=False)
    host = cdb.run(
        AGENT,
        HostLinearDuel(**{f.name: getattr(ENV, f.name) for f in dataclasses.fields(ENV)}),
        rounds=4,
        seeds=2,
        eval_every=2,
        progress=False,
    )
    for name in ("regret", "queries", "rm_loss"):
        np.testing.assert_allclose(host.metrics[name], compiled.metrics[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host.eval_metrics["bai_regret"], compiled.eval_metrics["bai_regret"], rtol=1e-5)


def test_seed_ranges_concatenate_to_the_full_run(results):
    kwargs = dict(rounds=12, seeds=3, eval_every=4, progress=False)
    first = cdb.run(AGENT, ENV, seed_range=(0, 2), **kwargs)
    last = cdb.run(AGENT, ENV, seed_range=(2, 3), **kwargs)
    assert first.num_seeds == 2 and last.num_seeds == 1
    assert first.config["seed_range"] == [0, 2] and results.config["seed_range"] == [0, 3]
    for name in results.metrics:
        joined = np.concatenate([first.metrics[name], last.metrics[name]])
        np.testing.assert_allclose(joined, results.metrics[name], rtol=1e-6, atol=1e-7, err_msg=name)
    joined = np.concatenate([first.eval_metrics["bai_regret"], last.eval_metrics["bai_regret"]])
    np.testing.assert_allclose(joined, results.eval_metrics["bai_regret"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed_range", [(2, 2), (-1, 2), (0, 4), (0.0, 1), [0], "0:2", (True, 2)])
def test_bad_seed_range_is_rejected(seed_range):
    with pytest.raises(ValueError, match=r"seed_range=.*0 <= start < stop <= seeds=3"):
        cdb.run(AGENT, ENV, rounds=4, seeds=3, seed_range=seed_range, progress=False)


def test_compiled_programs_are_released_only_near_the_memory_map_limit(monkeypatch):
    options = importlib.import_module("cdb.xla_options")
    counts = options.memory_map_count()
    if counts is not None:  # Linux: real counts of this process
        assert 0 < counts[0] < counts[1]
    double = jax.jit(lambda x: 2 * x)
    double(jnp.ones(3))
    assert double._cache_size() == 1
    monkeypatch.setattr(options, "memory_map_count", lambda: (40_000, 65_530))
    assert not options.release_compiled_programs(fraction=0.7)
    assert double._cache_size() == 1  # far from the limit: the compiled program stays
    assert options.release_compiled_programs(fraction=0.5)
    assert double._cache_size() == 0
    monkeypatch.setattr(options, "memory_map_count", lambda: None)  # no /proc: nothing to do
    assert not options.release_compiled_programs()
