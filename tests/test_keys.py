"""cdb.keys: the key schedule its docstring states is the one both runners hand to agents."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdb
from cdb import keys
from cdb.agents import RUCB
from cdb.environments import KArmedDuel

ROUNDS, SEEDS, KEY = 3, 2, 11


def test_schedule_is_the_documented_fold_ins():
    """Each function against the formula of the module docstring, written out with jax.random."""
    k_s = jax.random.split(jax.random.key(KEY), SEEDS)[1]
    data, impl = jax.random.key_data(k_s), str(jax.random.key_impl(k_s))
    same = lambda a, b: np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    same(keys.seed_keys(KEY, SEEDS)[1], k_s)
    same(keys.reset_key(k_s), jax.random.fold_in(k_s, 0))
    same(keys.init_key(k_s), jax.random.fold_in(k_s, 1))
    same(keys.round_keys(data, 5, impl), jax.random.split(jax.random.fold_in(jax.random.fold_in(k_s, 2), 5), 3))
    same(keys.eval_keys(data, 1, impl), jax.random.split(jax.random.fold_in(jax.random.fold_in(k_s, 3), 1), 2))


def test_as_key_accepts_the_three_forms_and_names_the_caller():
    data = jax.random.key_data(jax.random.key(3))
    for key in (3, jax.random.key(3), data):
        np.testing.assert_array_equal(jax.random.key_data(keys.as_key(key)), data)
    with pytest.raises(ValueError, match=r"run_offline_design: key=2\.5 of type float is not a key"):
        keys.as_key(2.5, "run_offline_design")


@dataclasses.dataclass(frozen=True)
class KeyProbe(RUCB):
    """RUCB that reports a uniform draw of the keys it is handed, so a test can recompute them."""

    def init(self, key, spec):
        return super().init(key, spec), jax.random.uniform(key)

    def select(self, key, state, obs):
        duel, info = super().select(key, state[0], obs)
        return duel, {**info, "select_draw": jax.random.uniform(key), "init_draw": state[1]}

    def update(self, key, state, obs, duel, feedback):
        inner, info = super().update(key, state[0], obs, duel, feedback)
        return (inner, state[1]), {**info, "update_draw": jax.random.uniform(key)}

    def recommend(self, key, state, obs):
        return super().recommend(key, state[0], obs)


@dataclasses.dataclass(frozen=True)
class HostKArmedDuel(KArmedDuel):
    pure_jax = False


@pytest.mark.parametrize("env_cls", [KArmedDuel, HostKArmedDuel], ids=["compiled", "host"])
def test_runners_hand_out_the_documented_keys(env_cls):
    env = env_cls(3, 2)
    results = cdb.run(KeyProbe(), env, rounds=ROUNDS, seeds=SEEDS, key=KEY, eval_every=1, progress=False)
    for s, k_s in enumerate(keys.seed_keys(KEY, SEEDS)):
        data, impl = jax.random.key_data(k_s), str(jax.random.key_impl(k_s))
        rounds = [keys.round_keys(data, t, impl) for t in range(ROUNDS)]
        expected = {
            "init_draw": [jax.random.uniform(keys.init_key(k_s))] * ROUNDS,
            "select_draw": [jax.random.uniform(k[0]) for k in rounds],
            "update_draw": [jax.random.uniform(k[2]) for k in rounds],
        }
        for name, values in expected.items():
            np.testing.assert_array_equal(results.metrics[name][s], jnp.stack(values), err_msg=name)
