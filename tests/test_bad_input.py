"""Bad input gets a clear error that names the field (docs/design.md §9).

One test per bad input. Each asserts the exception type *and* that the message names the field
(and, where the library promises it, the value received), so a bare ``TypeError`` from deep
inside JAX — or an error about some other field — fails the test.
"""

import dataclasses
import errno
import threading

import jax
import numpy as np
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


# --- keys, sizes and environment parameters given to cdb.run ------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "0",
        1.5,
        2**32,  # JAX keeps the low 32 bits: it would silently be key 0
        2**64,
        -1,
        True,
        np.bool_(False),
        jax.random.split(jax.random.key(0), 3),  # a batch of keys
        np.zeros(3, np.uint32),  # raw data of no key
        np.zeros(2, np.int32),
    ],
    ids=repr,
)
def test_bad_key_is_rejected(small_agent, small_env, key):
    with pytest.raises(ValueError, match=r"run: key.*expected an int in \[0, 2\*\*32\)"):
        cdb.run(small_agent, small_env, rounds=2, key=key, progress=False)


def test_every_accepted_form_of_a_key_gives_the_same_run(small_agent, small_env):
    kwargs = dict(rounds=2, progress=False)
    by_int = cdb.run(small_agent, small_env, key=7, **kwargs)
    for key in (np.int64(7), jax.random.key(7), jax.random.key_data(jax.random.key(7))):
        again = cdb.run(small_agent, small_env, key=key, **kwargs)
        np.testing.assert_array_equal(again.metrics["regret"], by_int.metrics["regret"])
        assert again.config["key"] == by_int.config["key"]


@pytest.mark.parametrize("field, value", [("rounds", 2**31), ("seeds", 2**31), ("eval_every", 2**40)])
def test_sizes_beyond_the_int32_round_counter_are_rejected(small_agent, small_env, field, value):
    kwargs = {"rounds": 4, "progress": False, field: value}
    with pytest.raises(ValueError, match=rf"{field}={value} is out of range.*2\*\*31 - 1"):
        cdb.run(small_agent, small_env, **kwargs)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"scale": 1.0}, r"env_params of type dict does not have the structure of LinearDuel\.default_params"),
        (DuelParams(scale=np.ones(3, np.float32)), r"env_params\.scale=.* shape \(3,\).*expected shape \(\)"),
        (DuelParams(scale="8"), r"env_params\.scale='8' .*dtype <U1.*expected .*float32"),
    ],
    ids=["dict", "shape", "string"],
)
def test_env_params_of_the_wrong_type_or_shape_are_rejected_before_tracing(small_agent, small_env, params, match):
    with pytest.raises(ValueError, match=match):
        cdb.run(small_agent, small_env, rounds=2, env_params=params, progress=False)


def test_env_params_that_overflow_float32_are_rejected(small_agent, small_env):
    with pytest.raises(ValueError, match=r"params\.scale=1e\+39 .*out of range.*float32"):
        cdb.run(small_agent, small_env, rounds=2, env_params=DuelParams(scale=1e39), progress=False)


# --- hyper-parameter types -------------------------------------------------------------------------------


def test_scale_beyond_float32_is_rejected():
    with pytest.raises(ValueError, match=r"LinearDuel\.scale=1e\+39 .*not finite in float32"):
        LinearDuel(scale=1e39)


def test_a_string_scale_is_rejected():
    with pytest.raises(ValueError, match=r"LinearDuel\.scale='8' .*not a number"):
        LinearDuel(scale="8")


def test_numpy_integers_are_integers():
    env = LinearDuel(num_arms=np.int64(16), feature_dim=np.int32(3))
    assert env.spec.num_arms == 16
    with pytest.raises(ValueError, match=r"LinearDuel\.num_arms=.*not an integer"):
        LinearDuel(num_arms=np.float64(16))


def test_a_reward_model_given_by_name_is_rejected():
    with pytest.raises(ValueError, match=r"ee_ts: reward_model='linear' is not a reward model.*LinearEnsemble"):
        ee_ts(reward_model="linear")


# --- Results files ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_results():
    metrics = {"regret": np.ones((2, 3), np.float32), "queries": np.ones((2, 3), np.int32)}
    return cdb.Results(metrics, np.array([0, 3]), {"bai_regret": np.zeros((2, 2), np.float32)}, {"rounds": 3})


def test_save_keeps_dotted_names_apart_and_never_overwrites_silently(tmp_path, tiny_results):
    first = tiny_results.save(tmp_path / "exp_lr0.1")
    second = tiny_results.save(tmp_path / "exp_lr0.2")
    assert (first.name, second.name) == ("exp_lr0.1.npz", "exp_lr0.2.npz")
    with pytest.raises(FileExistsError, match=r"exp_lr0\.1\.npz.*overwrite=True"):
        tiny_results.save(tmp_path / "exp_lr0.1")
    assert tiny_results.save(first, overwrite=True) == first
    assert cdb.Results.load(first).config == {"rounds": 3}


def _write_foreign(path):
    np.savez(path, weights=np.zeros(3))


def _write_empty(path):
    path.write_bytes(b"")


def _write_ragged(path):
    np.savez(
        path,
        **{"metrics/regret": np.zeros((2, 3)), "metrics/queries": np.zeros((2, 4))},
        eval_rounds=np.array([0, 3]),
        config=np.asarray("{}"),
    )


def _write_truncated(path, source):
    raw = source.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize(
    "write, match",
    [
        (_write_foreign, r"not a Results file written by Results\.save: it has no \['config', 'eval_rounds'\]"),
        (_write_empty, r"not a Results file written by Results\.save \(EOFError"),
        (_write_ragged, r"per-round metrics must all be \[seeds, rounds\] of one shape"),
        (_write_truncated, r"not a Results file written by Results\.save|cannot be read"),
    ],
    ids=["foreign", "empty", "ragged", "truncated"],
)
def test_loading_a_file_that_is_not_results_is_a_clear_error(tmp_path, tiny_results, write, match):
    path = tmp_path / "bad.npz"
    if write is _write_truncated:
        write(path, tiny_results.save(tmp_path / "good"))
    else:
        write(path)
    with pytest.raises(ValueError, match=r"Results\.load: .*bad\.npz.*" + match):
        cdb.Results.load(path)


def test_a_save_that_fails_midway_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, tiny_results, monkeypatch):
    old = tiny_results.save(tmp_path / "exp")
    before = old.read_bytes()
    real_savez = np.savez

    def savez_on_a_full_disk(file, *args, **kwds):
        target = file if hasattr(file, "write") else open(file, "wb")  # noqa: SIM115
        target.write(b"PK\x03\x04 the first bytes of a zip")
        target.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_on_a_full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        tiny_results.save(old, overwrite=True)
    assert old.read_bytes() == before
    with pytest.raises(OSError, match="No space left on device"):
        tiny_results.save(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.npz"]  # no partial file, no temporary one
    monkeypatch.setattr(np, "savez", real_savez)
    retried = tiny_results.save(tmp_path / "new")  # not refused as existing
    assert cdb.Results.load(retried).config == tiny_results.config


def test_of_two_saves_of_one_new_name_at_once_exactly_one_succeeds(tmp_path, tiny_results, monkeypatch):
    both_checked = threading.Barrier(2, timeout=60)
    real_savez = np.savez

    def savez_together(file, *args, **kwds):
        both_checked.wait()  # both saves have found the name free before either writes
        real_savez(file, *args, **kwds)

    monkeypatch.setattr(np, "savez", savez_together)
    outcomes = {}

    def save(writer):
        try:
            dataclasses.replace(tiny_results, config={"writer": writer}).save(tmp_path / "same")
            outcomes[writer] = "saved"
        except FileExistsError as err:
            outcomes[writer] = str(err)

    threads = [threading.Thread(target=save, args=(writer,)) for writer in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == [0, 1] and list(outcomes.values()).count("saved") == 1, outcomes
    winner = next(w for w, outcome in outcomes.items() if outcome == "saved")
    assert "same.npz' exists; pass overwrite=True" in outcomes[1 - winner]
    assert cdb.Results.load(tmp_path / "same.npz").config == {"writer": winner}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.npz"]


def test_a_prompt_file_that_is_not_utf8_names_the_file_and_the_line(tmp_path):
    from cdb.environments import PromptSet

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "Write a review."}\n{"prompt": "Un caf\xe9, s\'il vous pla\xeet."}\n')
    with pytest.raises(ValueError, match=r"prompts\.jsonl: line 2 is not UTF-8 text .*save the file as UTF-8"):
        PromptSet.from_jsonl(path)
    csv_folder = tmp_path / "dataset"
    csv_folder.mkdir()
    (csv_folder / "train.csv").write_bytes(b"prompt\nfine\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"train\.csv: line 3 is not UTF-8 text"):
        PromptSet.from_hf_dataset(csv_folder)
