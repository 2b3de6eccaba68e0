"""``RewardModelAgent``: the pair's features travel from ``select`` to ``update`` in ``duel.aux``;
the presets are one agent with different selection rules."""

import jax
import numpy as np
import pytest

from cdb import selection
from cdb.agents import (
    arm_feature_ensemble,
    bai_ts,
    boltzmann,
    ee_ts,
    ensemble_double_ts,
    greedy_pair,
    infomax,
    passive,
    uncertainty,
)
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel
from cdb.types import Duel


def _setup():
    env = LinearDuel(num_arms=6, feature_dim=3, batch_size=4, eval_batch_size=2)
    agent = ee_ts(reward_model=LinearEnsemble(num_members=4))
    _, obs = env.reset(jax.random.key(0), env.default_params)
    state = agent.init(jax.random.key(1), env.spec)
    return env, agent, obs, state


def test_select_puts_the_chosen_arms_features_in_aux():
    _, agent, obs, state = _setup()
    duel, _ = agent.select(jax.random.key(2), state, obs)
    first, second = duel.aux
    rows = np.arange(4)
    np.testing.assert_array_equal(first, np.asarray(obs.features)[rows, np.asarray(duel.arms[:, 0])])
    np.testing.assert_array_equal(second, np.asarray(obs.features)[rows, np.asarray(duel.arms[:, 1])])


def test_update_without_aux_reads_the_pair_from_obs():
    env, agent, obs, state = _setup()
    duel, _ = agent.select(jax.random.key(2), state, obs)
    _, _, feedback, _ = env.step(
        jax.random.key(3), env.reset(jax.random.key(0), env.default_params)[0], duel, env.default_params
    )
    with_aux, _ = agent.update(jax.random.key(4), state, obs, duel, feedback)
    by_hand, _ = agent.update(jax.random.key(4), state, obs, Duel(arms=duel.arms, query=duel.query), feedback)
    assert int(with_aux.reward_model.num_queries) == 4
    jax.tree.map(np.testing.assert_array_equal, with_aux, by_hand)


@pytest.mark.parametrize(
    "preset, kwargs, rule",
    [
        (passive, {}, selection.Passive()),
        (greedy_pair, {}, selection.GreedyPair()),
        (ee_ts, {"max_tries": 3, "fallback": "random"}, selection.EETS(max_tries=3, fallback="random")),
        (bai_ts, {"variance": "logit"}, selection.BAITS(variance="logit")),
        (uncertainty, {}, selection.Uncertainty()),
        (infomax, {}, selection.Infomax()),
        (ensemble_double_ts, {"max_resamples": 2}, selection.EnsembleDoubleTS(max_resamples=2)),
        (boltzmann, {"temperature": 0.5}, selection.Boltzmann(temperature=0.5)),
    ],
)
def test_presets_build_their_rule_with_the_given_fields(preset, kwargs, rule):
    model = LinearEnsemble(num_members=3)
    agent = preset(model, **kwargs)
    assert agent.selector == rule and agent.reward_model is model and agent.name == preset.__name__
    default = preset()
    assert default.reward_model == arm_feature_ensemble()
    assert default.selector == type(rule)()  # the rule's own defaults when no field is given
