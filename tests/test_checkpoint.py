"""Checkpoints and resume (cdb.checkpoint), the NaN guard, and the host loop's checkpoints,
timings and progress (cdb.run).

Every run here uses one tiny configuration (3 seeds, blocks of 4 rounds), so the compiled
program is built once and reused; the host-loop tests use 2 seeds and blocks of 2 rounds.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sequence_fixtures import tiny_env  # noqa: F401  (a pytest fixture)

import cdb
from cdb.agents import passive
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel

ENV = LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=8)
AGENT = passive(reward_model=LinearEnsemble(num_members=2))
KW = dict(seeds=3, eval_every=4, progress=False)


def assert_same(a: cdb.Results, b: cdb.Results) -> None:
    assert set(a.metrics) == set(b.metrics) and set(a.eval_metrics) == set(b.eval_metrics)
    for name in a.metrics:
        np.testing.assert_array_equal(a.metrics[name], b.metrics[name], err_msg=name)
    for name in a.eval_metrics:
        np.testing.assert_array_equal(a.eval_metrics[name], b.eval_metrics[name], err_msg=name)
    np.testing.assert_array_equal(a.eval_rounds, b.eval_rounds)


@pytest.fixture(scope="module")
def whole():
    return cdb.run(AGENT, ENV, rounds=12, **KW)


@pytest.fixture
def eight_rounds(tmp_path):
    """A folder with the checkpoints of rounds 4 and 8 of the 12-round run."""
    cdb.run(AGENT, ENV, rounds=8, checkpoint_dir=tmp_path, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "8"]
    return tmp_path


# --- what resume checks ------------------------------------------------------------------------


def test_resume_refuses_the_checkpoint_of_another_key(eight_rounds):
    with pytest.raises(ValueError, match=r"different experiment configuration.*config\.key"):
        cdb.run(AGENT, ENV, rounds=12, key=1, checkpoint_dir=eight_rounds, resume=True, **KW)


def test_mismatch_error_names_the_field_and_stays_short(eight_rounds):
    other = passive(reward_model=LinearEnsemble(num_members=3))
    with pytest.raises(ValueError, match=r"config\.agent\.reward_model\.num_members: 2 -> 3") as err:
        cdb.run(other, ENV, rounds=12, checkpoint_dir=eight_rounds, resume=True, **KW)
    assert len(str(err.value)) < 1000


def test_resume_false_into_a_folder_of_checkpoints_is_refused(eight_rounds):
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*holds checkpoints.*resume=True"):
        cdb.run(AGENT, ENV, rounds=12, checkpoint_dir=eight_rounds, **KW)
    assert sorted(p.name for p in eight_rounds.iterdir()) == ["4", "8"]  # nothing overwritten


def test_resume_with_fewer_rounds_returns_that_many_and_warns_of_the_rounds_dropped(eight_rounds, whole):
    with pytest.warns(UserWarning, match=r"rounds 5-8 of the checkpointed run are dropped"):
        four = cdb.run(AGENT, ENV, rounds=4, checkpoint_dir=eight_rounds, resume=True, **KW)
    assert four.num_rounds == 4 and four.config["rounds"] == 4
    assert_same(four, whole.truncated(4))


def test_resume_continues_to_the_uninterrupted_curve(eight_rounds, whole):
    assert_same(cdb.run(AGENT, ENV, rounds=12, checkpoint_dir=eight_rounds, resume=True, **KW), whole)


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _empty(step: Path) -> None:
    """Every item's files gone; the folder keeps orbax's record with the mark, so it is still a checkpoint."""
    import shutil

    for item in ("carry", "history", "meta"):
        shutil.rmtree(step / item)


def _truncate(step: Path) -> None:
    data = _largest_file(step / "carry")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _flip(step: Path) -> None:
    data = _largest_file(step / "carry")
    raw = bytearray(data.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 8):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))


def _wrong_checksum(step: Path) -> None:
    meta = step / "meta" / "metadata"
    saved = json.loads(meta.read_text())
    saved["sha256"] = "0" * 64
    meta.write_text(json.dumps(saved))


def _edited_done(step: Path) -> None:
    meta = step / "meta" / "metadata"
    saved = json.loads(meta.read_text())
    saved["done"] = 4
    meta.write_text(json.dumps(saved))


def _stale_meta(step: Path) -> None:
    """The meta data of the checkpoint before (rounds done, configuration and checksum of round 4)."""
    (step / "meta" / "metadata").write_text((step.parent / "4" / "meta" / "metadata").read_text())


@pytest.mark.parametrize("damage", [_empty, _truncate, _flip, _wrong_checksum, _edited_done, _stale_meta])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(eight_rounds, whole, damage):
    damage(eight_rounds / "8")
    with pytest.warns(RuntimeWarning, match=r"checkpoint after round 8 .* unusable"):
        resumed = cdb.run(AGENT, ENV, rounds=12, checkpoint_dir=eight_rounds, resume=True, **KW)
    assert_same(resumed, whole)
    assert sorted(p.name for p in eight_rounds.iterdir()) == ["12", "8"]  # round 8 saved afresh


def test_no_readable_checkpoint_is_a_clear_error(eight_rounds):
    _empty(eight_rounds / "8")
    _wrong_checksum(eight_rounds / "4")
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="no checkpoint there can be read"):
        cdb.run(AGENT, ENV, rounds=12, checkpoint_dir=eight_rounds, resume=True, **KW)


def test_folders_that_are_not_checkpoints_are_never_touched(tmp_path, whole):
    from cdb.store import checkpointed_rounds

    data = tmp_path / "2024" / "data.csv"
    data.parent.mkdir()
    data.write_text("a,b\n1,2\n")
    empty = tmp_path / "12345"
    empty.mkdir()
    cdb.run(AGENT, ENV, rounds=8, checkpoint_dir=tmp_path, resume=True, **KW)
    assert checkpointed_rounds(tmp_path) == 8
    assert_same(cdb.run(AGENT, ENV, rounds=12, checkpoint_dir=tmp_path, resume=True, **KW), whole)
    assert data.read_text() == "a,b\n1,2\n" and empty.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["12", "12345", "2024", "8"]


def test_a_folder_where_a_checkpoint_goes_is_left_alone_and_named(tmp_path):
    mine = tmp_path / "4" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    with pytest.raises(ValueError, match=r"holds a folder '4' that is not a checkpoint .*Move it away"):
        cdb.run(AGENT, ENV, rounds=8, checkpoint_dir=tmp_path, **KW)
    assert mine.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["4"]


def test_checkpoint_dir_that_is_a_file_is_rejected(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*a_file.* is a file"):
        cdb.run(AGENT, ENV, rounds=4, checkpoint_dir=path, **KW)


EXITS_PROMPTLY = textwrap.dedent(
    """
    import sys
    import cdb
    from cdb.agents import passive
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel

    env = LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=8)
    agent = passive(reward_model=LinearEnsemble(num_members=2))

    try:  # the folder lies under a file: orbax fails to write the first checkpoint
        cdb.run(agent, env, rounds=4, seeds=1, eval_every=2, progress=False, checkpoint_dir=sys.argv[1] + "/ckpt")
    except OSError as err:
        print("stopped:", type(err).__name__)
    """
)


def test_a_failed_checkpoint_save_closes_the_manager_and_the_process_exits(tmp_path):
    # the unclosed orbax manager of a failed save kept the process alive for about 5 minutes
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    env_vars = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", EXITS_PROMPTLY, str(blocker)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env_vars,
    )
    assert proc.returncode == 0 and "stopped: NotADirectoryError" in proc.stdout, proc.stderr[-2000:]


READ_ONLY_SAVE = textwrap.dedent(
    """
    import sys
    import cdb
    from cdb.agents import passive
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel

    env = LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=8)
    agent = passive(reward_model=LinearEnsemble(num_members=2))
    try:
        cdb.run(agent, env, rounds=4, seeds=1, eval_every=2, progress=False, checkpoint_dir=sys.argv[1])
    except OSError as err:
        print("stopped:", type(err).__name__, err, flush=True)
    """
)


def _read_only(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` exists but cannot be written, even by root (who
    ignores permissions: then a read-only bind mount in a user namespace); ``None`` where there is none."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ["unshare", "-rm", "sh", "-c", script, str(folder)]
    try:
        probe = subprocess.run([*prefix, "sh", "-c", f'! touch "{folder}/probe"'], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def test_a_read_only_checkpoint_dir_fails_the_first_save_and_the_process_exits(tmp_path):
    # orbax's asynchronous saving raised after 2 s here, then kept the process alive for 5 minutes
    folder = tmp_path / "read_only"
    folder.mkdir()
    prefix = _read_only(folder)
    if prefix is None:
        pytest.skip("no way to make a folder read-only for this user here (root without user namespaces)")
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", READ_ONLY_SAVE, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0 and "stopped:" in proc.stdout and "Read-only" in proc.stdout, proc.stderr[-2000:]
    assert list(folder.iterdir()) == []


# --- the NaN guard -------------------------------------------------------------------------------


def passive_duel(key, obs):
    batch, arms = obs.features.shape[:2]
    pairs = jax.vmap(lambda k: jax.random.choice(k, arms, (2,), replace=False))(jax.random.split(key, batch))
    return cdb.Duel(pairs.astype(jnp.int32), jnp.ones(batch, bool))


@dataclasses.dataclass(frozen=True)
class GoesBad:
    """A passive agent without any loss: from round ``bad_round`` on, ``what`` turns NaN —
    a reported metric named like no loss (``"margin"``), or only its state (``"state"``)."""

    what: str
    bad_round: int = 6

    def init(self, key, spec):
        return {"t": jnp.zeros((), jnp.int32), "value": jnp.zeros((), jnp.float32)}

    def select(self, key, state, obs):
        return passive_duel(key, obs), {}

    def update(self, key, state, obs, duel, feedback):
        t = state["t"] + 1
        value = jnp.where(t >= self.bad_round, jnp.nan, 1.0)
        info = {"margin": value} if self.what == "margin" else {}
        state_value = value if self.what == "state" else state["value"]
        return {"t": t, "value": state_value}, info

    def recommend(self, key, state, obs):
        return jnp.zeros(obs.features.shape[0], jnp.int32)


def test_nan_in_any_floating_metric_stops_the_run():
    with pytest.raises(cdb.NonFiniteLossError, match=r"margin is not finite at round 6") as err:
        cdb.run(GoesBad("margin"), ENV, rounds=8, seeds=2, eval_every=4, progress=False)
    assert err.value.round == 6 and err.value.results.num_rounds == 5


def test_nan_in_the_agent_state_stops_the_run_after_its_block():
    with pytest.raises(cdb.NonFiniteLossError, match=r"agent state .* after round 8 .* rounds 5-8") as err:
        cdb.run(GoesBad("state"), ENV, rounds=8, seeds=2, eval_every=4, progress=False)
    assert err.value.metric == "agent_state" and err.value.results.num_rounds == 4
    np.testing.assert_array_equal(err.value.results.eval_rounds, [0, 4])


# --- the host loop -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostDuel(LinearDuel):
    """The tier-1 environment declared untraceable, to exercise the host loop. ``fail_at`` makes
    ``step`` raise once ``steps[0]`` steps have been taken (an oracle failing after its retries);
    it is left out of the configuration (``repr=False``), like any test-only switch."""

    fail_at: int | None = dataclasses.field(default=None, repr=False, compare=False)
    steps: list = dataclasses.field(default_factory=lambda: [0], repr=False, compare=False)

    pure_jax = False

    def step(self, key, state, duel, params):
        self.steps[0] += 1
        if self.fail_at is not None and self.steps[0] > self.fail_at:
            raise ConnectionError("the oracle did not answer after 3 retries")
        return super().step(key, state, duel, params)


HOST_ENV_FIELDS = {f.name: getattr(ENV, f.name) for f in dataclasses.fields(ENV)}
HOST_KW = dict(seeds=2, eval_every=2, progress=False)


@pytest.fixture(scope="module")
def host_whole():
    return cdb.run(AGENT, HostDuel(**HOST_ENV_FIELDS), rounds=6, **HOST_KW)


def test_host_loop_records_its_timings(host_whole):
    for name in ("seconds_select", "seconds_env", "seconds_update"):
        values = host_whole.metrics[name]
        assert values.shape == (2, 6) and values.dtype == np.float32, name
        assert np.all(values > 0) and np.all(np.isfinite(values)), name
        np.testing.assert_array_equal(values[0], values[1])  # one wall time per round, for all seeds


def test_host_loop_resumes_after_an_oracle_failure(tmp_path, host_whole):
    # 2 seeds step once a round each: the 9th step is round 5, in the third block
    flaky = HostDuel(**HOST_ENV_FIELDS, fail_at=8)
    with pytest.raises(ConnectionError, match="retries") as err:
        cdb.run(AGENT, flaky, rounds=6, checkpoint_dir=tmp_path, **HOST_KW)
    note = " ".join(getattr(err.value, "__notes__", []))
    assert "resume=True" in note and str(tmp_path) in note and "4 rounds" in note
    resumed = cdb.run(AGENT, HostDuel(**HOST_ENV_FIELDS), rounds=6, checkpoint_dir=tmp_path, resume=True, **HOST_KW)
    timings = {"seconds_select", "seconds_env", "seconds_update"}
    for name in set(host_whole.metrics) - timings:
        np.testing.assert_array_equal(resumed.metrics[name], host_whole.metrics[name], err_msg=name)
    np.testing.assert_array_equal(resumed.eval_metrics["bai_regret"], host_whole.eval_metrics["bai_regret"])


def test_an_oracle_failure_without_checkpoints_keeps_the_completed_rounds(host_whole):
    flaky = HostDuel(**HOST_ENV_FIELDS, fail_at=8)
    with pytest.raises(ConnectionError, match="retries") as err:
        cdb.run(AGENT, flaky, rounds=6, **HOST_KW)
    note = " ".join(getattr(err.value, "__notes__", []))
    assert "4 rounds completed before this error are in its `.results`" in note and "checkpoint_dir=" in note
    kept = err.value.results
    assert kept.num_rounds == 4
    for name in set(host_whole.metrics) - {"seconds_select", "seconds_env", "seconds_update"}:
        np.testing.assert_array_equal(kept.metrics[name], host_whole.metrics[name][:, :4], err_msg=name)
    np.testing.assert_array_equal(kept.eval_rounds, [0, 2, 4])
    np.testing.assert_array_equal(kept.eval_metrics["bai_regret"], host_whole.eval_metrics["bai_regret"][:, :3])


@dataclasses.dataclass(frozen=True)
class OracleHostDuel(HostDuel):
    """The host-loop duel with an oracle in its configuration, as ``LLMDuel`` has one (the labels
    still come from the linear duel: only the configuration matters here)."""

    oracle: Any = None


def constant_reward(value):
    def reward(prompts, responses):
        return [value] * len(responses)

    return reward


class ScorerWithoutRepr:
    """A reward object that shows nothing of itself but its address: it cannot be described."""

    def __call__(self, prompts, responses):
        return [0.0] * len(responses)


def test_resume_compares_lambdas_and_closures_by_code_and_captured_values(tmp_path):
    from cdb.environments import RewardOracle

    def duel(reward):
        return OracleHostDuel(**HOST_ENV_FIELDS, oracle=RewardOracle(reward))

    first = duel(lambda prompts, responses: [0.0] * len(responses))
    cdb.run(AGENT, first, rounds=2, checkpoint_dir=tmp_path / "lambda", **HOST_KW)
    other = duel(lambda prompts, responses: [1.0] * len(responses))  # the same name, "<lambda>"
    with pytest.raises(ValueError, match=r"different experiment configuration.*config\.env\.oracle\.reward_fn\.code"):
        cdb.run(AGENT, other, rounds=4, checkpoint_dir=tmp_path / "lambda", resume=True, **HOST_KW)
    cdb.run(AGENT, duel(constant_reward(0.0)), rounds=2, checkpoint_dir=tmp_path / "closure", **HOST_KW)
    with pytest.raises(ValueError, match=r"config\.env\.oracle\.reward_fn\.captured\.value: 0\.0 -> 1\.0"):
        cdb.run(
            AGENT, duel(constant_reward(1.0)), rounds=4, checkpoint_dir=tmp_path / "closure", resume=True, **HOST_KW
        )
    resumed = cdb.run(
        AGENT, duel(constant_reward(0.0)), rounds=4, checkpoint_dir=tmp_path / "closure", resume=True, **HOST_KW
    )
    assert resumed.num_rounds == 4  # made again, the same closure resumes


def test_resume_refuses_a_callable_that_cannot_be_described_unless_it_is_named(tmp_path):
    from cdb.environments import RewardOracle

    def duel(reward):
        return OracleHostDuel(**HOST_ENV_FIELDS, oracle=RewardOracle(reward))

    with pytest.warns(RuntimeWarning, match=r"cannot be resumed.*config\.env\.oracle\.reward_fn"):
        cdb.run(AGENT, duel(ScorerWithoutRepr()), rounds=2, checkpoint_dir=tmp_path / "object", **HOST_KW)
    with pytest.raises(ValueError, match=r"config\.env\.oracle\.reward_fn \(<.*ScorerWithoutRepr object>\).*named"):
        cdb.run(AGENT, duel(ScorerWithoutRepr()), rounds=4, checkpoint_dir=tmp_path / "object", resume=True, **HOST_KW)
    assert [p.name for p in (tmp_path / "object").iterdir()] == ["2"]  # refused, not removed
    from cdb.config import named

    scorer = named(ScorerWithoutRepr(), "zero_v1")
    cdb.run(AGENT, duel(scorer), rounds=2, checkpoint_dir=tmp_path / "named", **HOST_KW)
    renamed = named(ScorerWithoutRepr(), "zero_v2")
    with pytest.raises(ValueError, match=r"config\.env\.oracle\.(name|reward_fn): 'zero_v1' -> 'zero_v2'"):
        cdb.run(AGENT, duel(renamed), rounds=4, checkpoint_dir=tmp_path / "named", resume=True, **HOST_KW)
    assert (
        cdb.run(AGENT, duel(scorer), rounds=4, checkpoint_dir=tmp_path / "named", resume=True, **HOST_KW).num_rounds
        == 4
    )


def counting_agent(layout):
    """A passive agent whose state is ``layout()`` and counts its updates. Agents made with
    different ``layout``s have the same configuration and differ in code, as one agent's state
    does before and after its code changes."""

    @dataclasses.dataclass(frozen=True)
    class Counting:
        def init(self, key, spec):
            return layout()

        def select(self, key, state, obs):
            return passive_duel(key, obs), {}

        def update(self, key, state, obs, duel, feedback):
            return jax.tree.map(lambda v: v + 1, state), {}

        def recommend(self, key, state, obs):
            return jnp.zeros(obs.features.shape[0], jnp.int32)

    return Counting()


@pytest.mark.parametrize(
    "layout, where",
    [
        (lambda: {"count": jnp.zeros((), jnp.float32)}, r"carry\.agent_state\.count: int32\[3\] -> float32\[3\]"),
        (lambda: {"count": jnp.zeros(2, jnp.int32)}, r"carry\.agent_state\.count: int32\[3\] -> int32\[3, 2\]"),
        (
            lambda: {"count": jnp.zeros((), jnp.int32), "total": jnp.zeros(())},
            r"carry\.agent_state\.total: <absent> -> float32\[3\]",
        ),
    ],
    ids=["dtype", "shape", "new_leaf"],
)
def test_resume_refuses_a_state_of_another_layout(tmp_path, layout, where):
    cdb.run(counting_agent(lambda: {"count": jnp.zeros((), jnp.int32)}), ENV, rounds=4, checkpoint_dir=tmp_path, **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint is not taken for a damaged one
        with pytest.raises(ValueError, match=r"another layout than the one this code's init builds.*" + where):
            cdb.run(counting_agent(layout), ENV, rounds=8, checkpoint_dir=tmp_path, resume=True, **KW)
    assert [p.name for p in tmp_path.iterdir()] == ["4"]


@dataclasses.dataclass(frozen=True)
class TraceCounting:
    """An agent that counts how often its ``select`` is traced (``traces`` is left out of its identity)."""

    agent: Any
    traces: list = dataclasses.field(default_factory=lambda: [0], repr=False, compare=False)

    def __getattr__(self, name):
        return getattr(self.agent, name)

    def init(self, key, spec):
        return self.agent.init(key, spec)

    def select(self, key, state, obs):
        self.traces[0] += 1
        return self.agent.select(key, state, obs)

    def update(self, key, state, obs, duel, feedback):
        return self.agent.update(key, state, obs, duel, feedback)

    def recommend(self, key, state, obs):
        return self.agent.recommend(key, state, obs)


def test_host_loop_runs_of_one_agent_share_its_compiled_programs(host_whole):
    counting = TraceCounting(AGENT)
    env = HostDuel(**HOST_ENV_FIELDS)
    parts = [cdb.run(counting, env, rounds=6, seed_range=(s, s + 1), **HOST_KW) for s in (0, 1)]
    assert counting.traces == [1]  # the second run (another seed) reused the first one's programs
    merged = cdb.Results.merge_seeds(parts)
    for name in set(host_whole.metrics) - {"seconds_select", "seconds_env", "seconds_update"}:
        np.testing.assert_array_equal(merged.metrics[name], host_whole.metrics[name], err_msg=name)


def test_host_loop_progress_bar_moves_every_round(monkeypatch):
    run_module = sys.modules["cdb.run"]
    updates = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(run_module, "tqdm", Bar)
    cdb.run(AGENT, HostDuel(**HOST_ENV_FIELDS), rounds=4, seeds=2, eval_every=2, progress=True)
    assert updates == [1, 1, 1, 1]


# --- configurations are the same in every process --------------------------------------------------

DESCRIBE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from sequence_fixtures import LEARNING_ENSEMBLE, NUM_CANDIDATES, build_tiny_env
    from cdb.agents import alignment, alignment_presets
    from cdb.config import describe

    env = build_tiny_env(sys.argv[1])  # reads the reference policy the test session trained
    reference = env.build_reference()
    agent = alignment_presets.sea(
        reference, num_candidates=NUM_CANDIDATES, rule="ee_ts", gamma=1.0, reward_model=LEARNING_ENSEMBLE
    )
    print(json.dumps(describe(agent)))
    """
)


def test_an_alignment_agent_is_described_alike_in_another_process(tiny_env):  # noqa: F811
    from sequence_fixtures import tiny_agents

    from cdb.config import describe

    here = describe(tiny_agents(tiny_env)["sea_ee_ts"])
    text = json.dumps(here)
    # no addresses, no weights spelled out (the optimizer's closures are, by code and captured values)
    assert " at 0x" not in text and len(text) < 8000 and "'step_size': -0.001" in str(here["optimizer"])
    assert here["features"] == "cdb.features.reference_hidden_features"
    env_vars = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", DESCRIBE, tiny_env.cache_dir, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env_vars,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == json.loads(text)
