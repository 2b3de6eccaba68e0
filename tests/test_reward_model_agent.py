"""``RewardModelAgent``: the pair's features travel from ``select`` to ``update`` in ``duel.aux``."""

import jax
import numpy as np

from cdb.agents import ee_ts
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
