"""Bad input gets a clear error that names the field (DESIGN §8).

One test per bad input. Each asserts the exception type *and* that the message names the field
(and, where the library promises it, the value received), so a bare ``TypeError`` from deep
inside JAX — or an error about some other field — fails the test.
"""

import jax
import pytest

import cdb
from cdb.agents import CoLSTIM, MaxInP, OptimalDesignAgent, ee_ts, passive
from cdb.agents.alignment import AlignmentAgent
from cdb.ensemble import LinearEnsemble, MLPEnsemble
from cdb.environments import DuelParams, KArmedDuel, LinearDuel, SequenceDuel
from cdb.losses import DAPLoss
from cdb.recommenders import DeRa


@pytest.fixture(scope="module")
def small_env():
    return LinearDuel(num_arms=3, feature_dim=3, batch_size=1, eval_batch_size=2)


@pytest.fixture(scope="module")
def small_agent():
    return passive(reward_model=LinearEnsemble(num_members=2))


# --- hyper-parameters, checked at construction -------------------------------------------------


def test_negative_beta_is_rejected():
    with pytest.raises(ValueError, match=r"DAPLoss\.beta=-1 .*out of range"):
        DAPLoss(beta=-1)


def test_thompson_sampling_with_a_single_member_is_rejected():
    with pytest.raises(ValueError, match=r"num_members=1 .*out of range") as err:
        ee_ts(reward_model=LinearEnsemble(num_members=1))
    assert "2" in str(err.value)  # the allowed minimum is stated


def test_negative_dera_lambda_is_rejected():
    with pytest.raises(ValueError, match=r"DeRa\.lam=-0\.5 .*out of range.*>= 0"):
        DeRa(-0.5)


def test_nan_dera_lambda_is_rejected():
    with pytest.raises(ValueError, match=r"DeRa\.lam=nan .*not finite"):
        DeRa(float("nan"))


def test_unknown_recommender_is_rejected_and_dera_is_offered():
    # checked at construction, before the reference policy is touched (hence None)
    with pytest.raises(ValueError, match=r"recommender='beam' .*not allowed.*DeRa\(lam\)"):
        AlignmentAgent(None, recommender="beam")


def test_linear_duel_with_one_arm_is_rejected():
    with pytest.raises(ValueError, match=r"LinearDuel\.num_arms=1 .*>= 2"):
        LinearDuel(num_arms=1)


def test_karmed_duel_with_one_arm_is_rejected():
    with pytest.raises(ValueError, match=r"KArmedDuel\.num_arms=1 .*>= 2"):
        KArmedDuel(num_arms=1)


def test_sequence_duel_with_a_one_token_vocabulary_is_rejected():
    with pytest.raises(ValueError, match=r"SequenceDuel\.vocab_size=1 .*>= 2"):
        SequenceDuel(vocab_size=1)


def test_nan_link_scale_is_rejected():
    with pytest.raises(ValueError, match=r"LinearDuel\.scale=nan .*not finite"):
        LinearDuel(scale=float("nan"))


def test_infinite_learning_rate_is_rejected():
    with pytest.raises(ValueError, match=r"MLPEnsemble\.learning_rate=inf .*not finite"):
        MLPEnsemble(learning_rate=float("inf"))


# --- cdb.run arguments ---------------------------------------------------------------------------


def test_zero_rounds_is_rejected(small_agent, small_env):
    with pytest.raises(ValueError, match=r"rounds=0 .*out of range"):
        cdb.run(small_agent, small_env, rounds=0, progress=False)


def test_eval_every_that_does_not_divide_rounds_is_rejected(small_agent, small_env):
    with pytest.raises(ValueError, match=r"eval_every=3 .*rounds=10"):
        cdb.run(small_agent, small_env, rounds=10, eval_every=3, progress=False)


def test_negative_scale_in_env_params_is_rejected(small_agent, small_env):
    with pytest.raises(ValueError, match=r"params\.scale=-1\.0 .*out of range"):
        cdb.run(small_agent, small_env, rounds=2, env_params=DuelParams(scale=-1.0), progress=False)


# --- shapes at the API boundary --------------------------------------------------------------------


@pytest.fixture(scope="module")
def wider_observation():
    """Observations with feature dimension 4, for agents initialised for dimension 3."""
    env = LinearDuel(num_arms=3, feature_dim=4, batch_size=1, eval_batch_size=2)
    _, obs = env.reset(jax.random.key(0), env.default_params)
    return obs


@pytest.mark.parametrize("method", ["select", "recommend"])
def test_wrong_feature_dimension_is_rejected_by_reward_model_agents(method, small_env, wider_observation):
    agent = ee_ts(reward_model=LinearEnsemble(num_members=2))
    state = agent.init(jax.random.key(1), small_env.spec)
    with pytest.raises(ValueError, match=r"feature dimension 4.*feature_dim=3"):
        getattr(agent, method)(jax.random.key(2), state, wider_observation)


@pytest.mark.parametrize("agent_cls", [MaxInP, CoLSTIM, OptimalDesignAgent])
def test_wrong_feature_dimension_is_rejected_by_linear_agents(agent_cls, small_env, wider_observation):
    agent = agent_cls()
    state = agent.init(jax.random.key(1), small_env.spec)
    try:
        agent.select(jax.random.key(2), state, wider_observation)
    except ValueError as err:
        assert "feature" in str(err) and "3" in str(err) and "4" in str(err)
    except Exception as err:  # anything but a clear ValueError is the bug
        raise AssertionError(f"unclear error {type(err).__name__}: {err}") from err
    else:
        raise AssertionError("no error for observations of the wrong feature dimension")
