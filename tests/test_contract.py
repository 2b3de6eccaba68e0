"""One contract test for every agent on every compatible environment (duelpy / jumanji style).

For each pair it checks: shapes and dtypes of a duel, exactly ``rounds × B`` duels, the query
count equals the number of pairs marked for the oracle, no NaN/inf in any metric, identical
results for identical keys, different results for different keys, and no retracing across
rounds (``chex.assert_max_traces`` on the agent's functions while the run spans several blocks).
Tiers 1 and 2 are here; the same contract on tier 3 (every alignment preset on ``LLMDuel`` with a
tiny model and prompt set) is ``test_every_preset_runs_on_llm_duel`` in ``test_alignment_tier3.py``,
beside the tier-3 fixtures it shares.
"""

import dataclasses
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sequence_fixtures as seq
from sequence_fixtures import tiny_env  # noqa: F401  (a pytest fixture)

import cdb
from cdb import agents
from cdb.agents import alignment_presets
from cdb.ensemble import LinearEnsemble, MLPEnsemble
from cdb.environments import KArmedDuel, LinearDuel, NeuralDuel
from cdb.recommenders import DeRa

ROUNDS, SEEDS, EVAL_EVERY = 6, 2, 2

TIER1_ENVS = {
    "linear": LinearDuel(num_arms=5, feature_dim=3, batch_size=3, eval_batch_size=4),
    "neural": NeuralDuel(num_arms=5, feature_dim=3, batch_size=3, eval_batch_size=4),
    "karmed": KArmedDuel(num_arms=4, batch_size=3, eval_batch_size=4),
}
TINY_MLP = MLPEnsemble(num_members=3, hidden_sizes=(8,), steps_per_update=1, batch_size=4, buffer_capacity=16)
TINY_LINEAR = LinearEnsemble(num_members=3)

FEATURE_AGENTS = {
    "passive": agents.passive(reward_model=TINY_LINEAR),
    "greedy_pair": agents.greedy_pair(reward_model=TINY_LINEAR),
    "ee_ts": agents.ee_ts(reward_model=TINY_MLP),
    "ee_ts_linear": agents.ee_ts(reward_model=TINY_LINEAR),
    "bai_ts": agents.bai_ts(reward_model=TINY_MLP),
    "uncertainty": agents.uncertainty(reward_model=TINY_LINEAR),
    "infomax": agents.infomax(reward_model=TINY_LINEAR),
    "ensemble_double_ts": agents.ensemble_double_ts(reward_model=TINY_LINEAR),
    "boltzmann": agents.boltzmann(reward_model=TINY_LINEAR),
}
FEATURE_AGENTS.update(
    maxinp=agents.MaxInP(buffer_capacity=16),
    colstim=agents.CoLSTIM(buffer_capacity=16),
    optimal_design=agents.OptimalDesignAgent(buffer_capacity=16),
)
KARMED_AGENTS = {"dts": agents.DoubleThompsonSampling(), "rucb": agents.RUCB()}

CASES = [(a, e) for a in FEATURE_AGENTS for e in TIER1_ENVS] + [(a, "karmed") for a in KARMED_AGENTS]


@dataclasses.dataclass(frozen=True, eq=False)
class TraceCounted:
    """Wraps an agent so that each of its functions may be traced only a fixed number of times."""

    agent: Any

    def __post_init__(self):
        # init, select, update and recommend: each traced once (init and the evaluation are
        # compiled programs of their own; select/update live inside the compiled block).
        for name, n in (("init", 1), ("select", 1), ("update", 1), ("recommend", 1)):
            object.__setattr__(self, name, chex.assert_max_traces(getattr(self.agent, name), n=n))


def _lookup(agent_name):
    return FEATURE_AGENTS.get(agent_name) or KARMED_AGENTS[agent_name]


@pytest.mark.parametrize("agent_name, env_name", CASES)
def test_agent_contract(agent_name, env_name):
    agent, env = _lookup(agent_name), TIER1_ENVS[env_name]
    spec = env.spec
    # One round by hand: a valid pair for every context (eagerly), shapes of every output
    # (abstractly, so nothing extra is compiled).
    env_state, obs = env.reset(jax.random.key(0), env.default_params)
    state = agent.init(jax.random.key(1), spec)
    duel, _ = agent.select(jax.random.key(2), state, obs)
    chex.assert_shape(duel.arms, (spec.batch_size, 2))
    chex.assert_shape(duel.query, (spec.batch_size,))
    assert duel.arms.dtype == jnp.int32 and duel.query.dtype == jnp.bool_
    assert np.all((np.asarray(duel.arms) >= 0) & (np.asarray(duel.arms) < spec.num_arms))
    _, _, feedback, _ = env.step(jax.random.key(3), env_state, duel, env.default_params)
    new_state, info = jax.eval_shape(agent.update, jax.random.key(4), state, obs, duel, feedback)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, jax.eval_shape(lambda: state))
    assert all(jnp.ndim(v) == 0 for v in info.values()), info
    eval_obs = env.eval_observation(env_state, env.default_params)
    rec = jax.eval_shape(agent.recommend, jax.random.key(5), state, eval_obs)
    assert rec.shape == (spec.eval_batch_size,) and rec.dtype == jnp.int32

    # The whole loop, with trace counting: several blocks must reuse one compilation.
    chex.clear_trace_counter()
    counted = TraceCounted(agent)
    results = cdb.run(counted, env, rounds=ROUNDS, seeds=SEEDS, eval_every=EVAL_EVERY, progress=False)
    np.testing.assert_array_equal(results.metrics["duels"], spec.batch_size)
    assert results.metrics["duels"].sum() == ROUNDS * SEEDS * spec.batch_size
    # Tier-1 agents send every pair to the oracle.
    np.testing.assert_array_equal(results.metrics["queries"], results.metrics["duels"])
    for name, values in {**results.metrics, **results.eval_metrics}.items():
        assert np.all(np.isfinite(values)), f"{agent_name} on {env_name}: {name} has NaN/inf"
    assert np.all(results.metrics["regret"] >= -1e-5)

    # Same key, same results; another key, other results (both reuse the compiled program).
    again = cdb.run(counted, env, rounds=ROUNDS, seeds=SEEDS, eval_every=EVAL_EVERY, progress=False)
    for name in results.metrics:
        np.testing.assert_array_equal(again.metrics[name], results.metrics[name], err_msg=name)
    other = cdb.run(counted, env, rounds=ROUNDS, seeds=SEEDS, eval_every=EVAL_EVERY, key=7, progress=False)
    assert not np.array_equal(other.metrics["regret"], results.metrics["regret"])


def test_feature_agents_reject_featureless_environments():
    spec = cdb.EnvSpec(batch_size=2, prompt_length=3, response_length=4, vocab_size=5)
    with pytest.raises(ValueError, match="feature"):
        agents.ee_ts(reward_model=TINY_LINEAR).init(jax.random.key(0), spec)


def test_ts_rules_need_two_members():
    with pytest.raises(ValueError, match="num_members"):
        agents.ee_ts(reward_model=LinearEnsemble(num_members=1))


# --------------------------------------------------------------------------------------------
# Tier 2: every alignment agent on the tiny SequenceDuel (one run program per agent, shared
# with test_alignment_agents through sequence_fixtures.checked_agent).
# --------------------------------------------------------------------------------------------

# Tier-2 cases beyond the shared set of sequence_fixtures, each built and wrapped once per
# environment (so the repeated runs below reuse one compiled program).
EXTRA_AGENTS = {
    "sail_pr": lambda ref: alignment_presets.sail(ref, variant="pr"),
    "sail_pp": lambda ref: alignment_presets.sail(ref, variant="pp"),
    "sail_dp": lambda ref: alignment_presets.sail(ref, variant="dp", budget=8),
    "online_dpo_dera": lambda ref: alignment_presets.online_dap(ref, recommender=DeRa(2.0)),
}


@functools.cache
def _checked(env, agent_name: str) -> seq.CheckedAgent:
    if agent_name in seq.AGENT_NAMES:
        return seq.checked_agent(env, agent_name)
    agent = EXTRA_AGENTS[agent_name](env.reference)
    return seq.CheckedAgent(agent, env.batch_size, env.response_length, env.vocab_size)


ORACLE_ONLY = {
    "frozen_sampler_dpo",
    "online_dpo",
    "online_ipo",
    "online_slic",
    "sea_ee_ts",
    "sea_bai_ts",
    "xpo",
    "ee4llm",
    "nash_md",
    "online_dpo_dera",
    "sail_pr",
}


def _expected_queries(agent_name: str, agent) -> np.ndarray | None:
    """Oracle queries per round ``[ROUNDS]`` that the agent's labeler prescribes (None: random)."""
    if agent_name in ORACLE_ONLY:
        return np.full(seq.ROUNDS, seq.B)
    if agent_name in ("offline_dpo", "sail_dp"):  # the first `budget` pairs, none after
        return np.diff(np.minimum(np.arange(seq.ROUNDS + 1) * seq.B, agent.labeler.budget))
    if agent_name == "apl":  # ceil(fraction · B) highest-entropy prompts
        return np.full(seq.ROUNDS, int(np.ceil(agent.labeler.fraction * seq.B)))
    return None


@pytest.mark.parametrize("agent_name", seq.AGENT_NAMES + tuple(EXTRA_AGENTS))
def test_alignment_agent_contract(agent_name, tiny_env):  # noqa: F811
    env = tiny_env
    checked = _checked(env, agent_name)
    assert (env.spec.prompt_length, env.spec.response_length, env.spec.vocab_size) == (seq.LP, seq.L, seq.V)
    chex.clear_trace_counter()
    # Shapes, dtypes and scalar infos are asserted by CheckedAgent while cdb.run traces; tracing
    # more than once (a retrace across the blocks) raises inside the run.
    results = cdb.run(checked, env, rounds=seq.ROUNDS, seeds=seq.SEEDS, eval_every=seq.EVAL_EVERY, progress=False)
    m = results.metrics
    assert m["duels"].shape == (seq.SEEDS, seq.ROUNDS)
    np.testing.assert_array_equal(m["duels"], seq.B)
    assert m["duels"].sum() == seq.ROUNDS * seq.SEEDS * seq.B
    np.testing.assert_array_equal(m["tokens_in_range"], 1)
    # The environment's query count (feedback.queried) is the number of pairs the agent marked.
    np.testing.assert_array_equal(m["queries"], m["marked_for_oracle"])
    expected = _expected_queries(agent_name, checked.agent)
    if expected is not None:
        np.testing.assert_array_equal(m["queries"], np.broadcast_to(expected, m["queries"].shape))
        np.testing.assert_array_equal(m["model_labelled"], 0)
    else:  # SEA's mixed labels: model-labelled pairs are never queries
        assert np.all(m["queries"] + m["model_labelled"] <= m["duels"])
        assert 0 < m["queries"].sum() < m["duels"].sum()
    if "rm_correct" in m:  # correct rankings are counted among the oracle pairs only
        assert np.all((m["rm_correct"] >= 0) & (m["rm_correct"] <= m["queries"]))
    for name, values in {**m, **results.eval_metrics}.items():
        assert np.all(np.isfinite(values)), f"{agent_name}: {name} has NaN/inf"
    assert np.all(m["regret"] >= -1e-4) and np.all(m["weak_regret"] <= m["strong_regret"] + 1e-5)
    assert results.eval_metrics["bai_regret"].shape == (seq.SEEDS, seq.ROUNDS // seq.EVAL_EVERY + 1)

    # Same key, same results; another key, other results (both reuse the compiled programs).
    again = cdb.run(checked, env, rounds=seq.ROUNDS, seeds=seq.SEEDS, eval_every=seq.EVAL_EVERY, progress=False)
    for name in m:
        np.testing.assert_array_equal(again.metrics[name], m[name], err_msg=name)
    for name in results.eval_metrics:
        np.testing.assert_array_equal(again.eval_metrics[name], results.eval_metrics[name], err_msg=name)
    other = cdb.run(checked, env, rounds=seq.ROUNDS, seeds=seq.SEEDS, eval_every=seq.EVAL_EVERY, key=7, progress=False)
    assert not np.array_equal(other.metrics["regret"], m["regret"])
