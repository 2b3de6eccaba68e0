"""``cdb.run(..., loggers=[...])`` and ``cdb.loggers``: what is logged and when, on both runners;
loggers closed on success, error and interruption; resumed runs that append without repeating a
round; the JSONL, TensorBoard and W&B loggers; errors before anything compiles.

One tiny problem throughout (passive exploration, a linear-Gaussian reward model, a 4-arm
LinearDuel, 10 rounds in blocks of 5, 2 seeds), the shapes of ``tests/test_sweep.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import struct
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdb
from cdb.agents import passive
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel
from cdb.loggers import JSONLLogger, TensorBoardLogger, WandbLogger

ENV = LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=4)
AGENT = passive(reward_model=LinearEnsemble(num_members=2))
ROUNDS, SEEDS, EVAL_EVERY = 10, 2, 5
RUN = dict(rounds=ROUNDS, seeds=SEEDS, eval_every=EVAL_EVERY, progress=False)


@dataclasses.dataclass(frozen=True)
class HostLinearDuel(LinearDuel):
    """The same environment, declared untraceable, to exercise the host loop."""

    pure_jax = False


run_module = importlib.import_module("cdb.run")  # the module; ``cdb.run`` is the function
HOST_ENV = HostLinearDuel(**{f.name: getattr(ENV, f.name) for f in dataclasses.fields(ENV)})


class Recorder:
    """A logger that records every call (arrays copied), and can raise at a chosen call."""

    def __init__(self, raise_at: tuple[str, int] | None = None, error: BaseException | None = None):
        self.calls: list[tuple] = []
        self.raise_at, self.error = raise_at, error

    def open(self, config, start_round):
        self.calls.append(("open", config, start_round))

    def log_rounds(self, rounds, metrics):
        self.calls.append(("rounds", np.array(rounds), {k: np.array(v) for k, v in metrics.items()}))
        self._maybe_raise("rounds", int(rounds[-1]))

    def log_eval(self, round, metrics):
        self.calls.append(("eval", round, {k: np.array(v) for k, v in metrics.items()}))
        self._maybe_raise("eval", round)

    def close(self, error=None):
        self.calls.append(("close", error))

    def _maybe_raise(self, kind, round_):
        if self.raise_at == (kind, round_):
            raise self.error

    def kinds(self) -> list[tuple]:
        """The calls without their data: ``("rounds", (first, last))``, ``("eval", round)``, ..."""
        out = []
        for call in self.calls:
            if call[0] == "rounds":
                out.append(("rounds", (int(call[1][0]), int(call[1][-1]))))
            elif call[0] in ("eval", "open"):
                out.append((call[0], call[2] if call[0] == "open" else call[1]))
            else:
                out.append(("close", type(call[1]).__name__ if call[1] is not None else None))
        return out


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_lines(results: cdb.Results, per_seed: bool = False) -> list[dict]:
    """The JSONL log of ``results`` computed independently: means over seeds in float64, rounds in
    the order they are played, each block's evaluation after its rounds."""
    lines = [{"config": results.config}]
    evals = {int(r): i for i, r in enumerate(results.eval_rounds)}

    def eval_line(i):
        line = {"round": int(results.eval_rounds[i]), "eval": {}}
        for k, v in results.eval_metrics.items():
            line["eval"][k] = float(np.mean(v[:, i].astype(np.float64)))
        if per_seed:
            line["per_seed"] = {k: [float(x) for x in v[:, i]] for k, v in results.eval_metrics.items()}
        return line

    lines.append(eval_line(0))
    for t in range(1, results.num_rounds + 1):
        line = {
            "round": t,
            "metrics": {k: float(np.mean(v[:, t - 1].astype(np.float64))) for k, v in results.metrics.items()},
        }
        if per_seed:
            line["per_seed"] = {k: [float(x) for x in v[:, t - 1]] for k, v in results.metrics.items()}
        lines.append(line)
        if t in evals:
            lines.append(eval_line(evals[t]))
    return lines


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One compiled run with a per-seed JSONL log and a recorder."""
    path = tmp_path_factory.mktemp("logged") / "run.jsonl"
    recorder = Recorder()
    results = cdb.run(AGENT, ENV, loggers=[JSONLLogger(path, per_seed=True), recorder], **RUN)
    return results, path, recorder


def test_jsonl_log_holds_every_round_and_evaluation_of_the_results(logged):
    results, path, _ = logged
    assert read_jsonl(path) == expected_lines(results, per_seed=True)
    assert read_jsonl(path)[0]["config"]["seed_range"] == [0, SEEDS]


def test_the_compiled_runner_logs_each_block_before_its_checkpoint(logged):
    results, _, recorder = logged
    assert recorder.kinds() == [
        ("open", 0),
        ("eval", 0),
        ("rounds", (1, 5)),
        ("eval", 5),
        ("rounds", (6, 10)),
        ("eval", 10),
        ("close", None),
    ]
    _, config, _ = recorder.calls[0]
    assert config == results.config
    (_, rounds, metrics) = recorder.calls[4]
    np.testing.assert_array_equal(rounds, np.arange(6, 11))
    for k, v in results.metrics.items():
        np.testing.assert_array_equal(metrics[k], v[:, 5:10], err_msg=k)


def test_the_host_loop_streams_every_round_as_it_ends():
    recorder = Recorder()
    results = cdb.run(AGENT, HOST_ENV, loggers=[recorder], **RUN)
    rounds = [("rounds", (t, t)) for t in range(1, 11)]
    assert recorder.kinds() == [
        ("open", 0),
        ("eval", 0),
        *rounds[:5],
        ("eval", 5),
        *rounds[5:],
        ("eval", 10),
        ("close", None),
    ]
    for call in recorder.calls:
        if call[0] == "rounds":
            (t,) = call[1]
            for k, v in results.metrics.items():
                np.testing.assert_array_equal(call[2][k], v[:, t - 1 : t], err_msg=k)
        elif call[0] == "eval":
            index = list(results.eval_rounds).index(call[1])
            for k, v in results.eval_metrics.items():
                np.testing.assert_array_equal(call[2][k], v[:, index], err_msg=k)


def test_an_error_mid_run_closes_every_logger_and_the_log_holds_the_rounds_before_it(tmp_path):
    """An oracle giving up in round 7 of the host loop (here: a logger raising there, the same
    place in the loop): the log holds rounds 1-7 and the evaluations at 0 and 5, every line whole."""
    path = tmp_path / "run.jsonl"
    failing = Recorder(raise_at=("rounds", 7), error=RuntimeError("oracle gave up"))
    after = Recorder()
    with pytest.raises(RuntimeError, match="oracle gave up") as err:
        cdb.run(AGENT, HOST_ENV, loggers=[JSONLLogger(path), failing, after], **RUN)
    assert err.value.results.num_rounds == 5
    lines = read_jsonl(path)
    assert [(line.get("round"), "eval" in line) for line in lines[1:]] == [
        (0, True),
        (1, False),
        (2, False),
        (3, False),
        (4, False),
        (5, False),
        (5, True),
        (6, False),
        (7, False),
    ]
    for logger in (failing, after):
        assert logger.calls[-1][0] == "close" and logger.calls[-1][1] is err.value
    assert after.kinds()[-2] == ("rounds", (6, 6))  # the failing logger came first: round 7 stopped there


def test_keyboard_interrupt_closes_every_logger_with_it(tmp_path):
    def interrupt(rounds_done, results):
        raise KeyboardInterrupt

    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        cdb.run(AGENT, ENV, loggers=[recorder], on_block=interrupt, **RUN)
    assert recorder.kinds() == [
        ("open", 0),
        ("eval", 0),
        ("rounds", (1, 5)),
        ("eval", 5),
        ("close", "KeyboardInterrupt"),
    ]


@dataclasses.dataclass(frozen=True)
class LossTurnsNaN:
    """``AGENT``'s duels and updates, reporting a ``loss`` that is NaN from round ``bad_round`` on."""

    bad_round: int = 7

    def init(self, key, spec):
        return AGENT.init(key, spec), jnp.zeros((), jnp.int32)

    def select(self, key, state, obs):
        return AGENT.select(key, state[0], obs)

    def update(self, key, state, obs, duel, feedback):
        inner, info = AGENT.update(key, state[0], obs, duel, feedback)
        loss = jnp.where(state[1] + 1 >= self.bad_round, jnp.nan, 1.0)
        return (inner, state[1] + 1), {**info, "loss": loss}

    def recommend(self, key, state, obs):
        return AGENT.recommend(key, state[0], obs)


def test_the_block_where_the_nan_guard_stops_a_run_is_logged_with_null_for_nan(tmp_path):
    path, recorder = tmp_path / "run.jsonl", Recorder()
    with pytest.raises(cdb.NonFiniteLossError, match="loss is not finite at round 7") as err:
        cdb.run(LossTurnsNaN(), ENV, loggers=[JSONLLogger(path), recorder], **RUN)
    lines = read_jsonl(path)[1:]
    assert [line["round"] for line in lines if "eval" in line] == [0, 5]  # the stopped block has none
    losses = [line["metrics"]["loss"] for line in lines if "metrics" in line]
    assert losses == [1.0] * 6 + [None] * 4  # every round the block played
    assert recorder.calls[-1] == ("close", err.value)


def crash_after_logging_round_10(tmp_path, logger) -> None:
    """A run that logged all its rounds and died before its last checkpoint (after round 5 it
    has one), leaving a half-written line in the JSONL log too."""
    crash = Recorder(raise_at=("eval", 10), error=RuntimeError("node preempted"))
    with pytest.raises(RuntimeError, match="node preempted"):
        cdb.run(AGENT, ENV, loggers=[logger, crash], checkpoint_dir=tmp_path / "ckpt", **RUN)


def test_a_resumed_run_appends_to_its_log_without_repeating_a_round(logged, tmp_path):
    _, uninterrupted, _ = logged
    path = tmp_path / "run.jsonl"
    crash_after_logging_round_10(tmp_path, JSONLLogger(path, per_seed=True))
    assert [line.get("round") for line in read_jsonl(path)][-2:] == [10, 10]  # rounds 6-10 after the checkpoint
    with path.open("a") as f:
        f.write('{"round": 11, "metr')  # killed while writing
    recorder = Recorder()
    resumed = cdb.run(
        AGENT,
        ENV,
        loggers=[JSONLLogger(path, per_seed=True), recorder],
        checkpoint_dir=tmp_path / "ckpt",
        resume=True,
        **RUN,
    )
    assert recorder.kinds() == [("open", 5), ("rounds", (6, 10)), ("eval", 10), ("close", None)]
    assert path.read_text() == uninterrupted.read_text()  # line for line, byte for byte
    assert read_jsonl(path) == expected_lines(resumed, per_seed=True)


def test_a_resumed_run_refuses_the_log_of_another_run(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"config": {"agent": "another", "rounds": 10}}) + "\n")
    logger = JSONLLogger(path)
    with pytest.raises(ValueError, match=r"holds the log of another run .*config\.agent"):
        logger.open({"agent": "this one", "rounds": 20}, 5)
    logger.open({"agent": "this one", "rounds": 20}, 0)  # a new run starts the file afresh
    logger.close()
    assert read_jsonl(path) == [{"config": {"agent": "this one", "rounds": 20}}]


def test_non_finite_values_are_written_as_null(tmp_path):
    logger = JSONLLogger(tmp_path / "log.jsonl", per_seed=True)
    logger.open({}, 0)
    logger.log_rounds(np.array([1]), {"loss": np.array([[np.nan], [1.0]]), "regret": np.array([[0.5], [1.5]])})
    logger.close()
    (_, line) = read_jsonl(tmp_path / "log.jsonl")
    assert line == {
        "round": 1,
        "metrics": {"loss": None, "regret": 1.0},
        "per_seed": {"loss": [None, 1.0], "regret": [0.5, 1.5]},
    }


# ------------------------------------------------------------------------------------------------
# errors before any compilation


@pytest.fixture
def no_compilation(monkeypatch):
    """Makes building either runner fail, so an error raised instead comes before any compilation."""

    def refuse(*args, **kwargs):
        raise AssertionError("a runner was built")

    monkeypatch.setattr(run_module, "compiled_runner", refuse)
    monkeypatch.setattr(run_module, "HostRunner", refuse)


def test_a_logger_folder_that_cannot_be_created_is_an_error_naming_it(tmp_path, no_compilation):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(
        ValueError, match=r"JSONLLogger.*folder '.*a_file/logs' cannot be created.*folder you can write"
    ):
        cdb.run(AGENT, ENV, loggers=[JSONLLogger(blocker / "logs" / "run.jsonl")], **RUN)
    with pytest.raises(ValueError, match=r"is a folder; expected a file name"):
        JSONLLogger(tmp_path)
    pytest.importorskip("tensorboardX")
    with pytest.raises(ValueError, match=r"TensorBoardLogger.*'.*a_file/tb' cannot be created"):
        TensorBoardLogger(blocker / "tb")


@pytest.mark.parametrize("loggers", [JSONLLogger, [object()], "run.jsonl", [None]])
def test_something_that_is_not_a_logger_is_refused_before_compilation(loggers, no_compilation):
    with pytest.raises(ValueError, match=r"run: loggers.*expected"):
        cdb.run(AGENT, ENV, loggers=loggers, **RUN)


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda tmp: JSONLLogger(tmp / "log.jsonl", per_seed="yes"), "per_seed='yes'"),
        (lambda tmp: TensorBoardLogger(tmp, flush_secs=0), "flush_secs=0"),
        (lambda tmp: WandbLogger("p", config=["lr", 0.1]), "config=\\['lr', 0.1\\]"),
    ],
)
def test_bad_logger_arguments_are_rejected_naming_the_field(build, field, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb())
    with pytest.raises(ValueError, match=field):
        build(tmp_path)


@pytest.mark.parametrize(
    "module, build, extra",
    [
        ("wandb", lambda tmp: WandbLogger(project="p"), "wandb"),
        ("tensorboardX", lambda tmp: TensorBoardLogger(tmp), "tensorboard"),
    ],
)
def test_a_logger_whose_library_is_missing_says_what_to_install(module, build, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what ``import`` sees when it is not installed
    with pytest.raises(ImportError, match=rf"needs the '{module}' package.*pip install 'cdb-jax\[{extra}\]'"):
        build(tmp_path)


# ------------------------------------------------------------------------------------------------
# TensorBoard


def read_events(logdir) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar TensorBoard would show from ``logdir``'s event files.

    Reads the TFRecord framing (length, its CRC, the record, its CRC) and ``tensorboardX``'s own
    ``Event`` protobuf, file by file in name order, and applies TensorBoard's purge rule: a
    ``SessionLog.START`` at step ``p`` drops every earlier event at step ``p`` or later.
    """
    from tensorboardX.proto import event_pb2

    scalars: list[tuple[int, str, float]] = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                scalars = [s for s in scalars if s[0] < event.step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.append((event.step, value.tag, value.simple_value))
    return scalars


def expected_scalars(results: cdb.Results) -> list[tuple[int, str, float]]:
    out = []
    for line in expected_lines(results)[1:]:
        if "eval" in line:
            out += [(line["round"], f"eval/{k}", np.float32(v)) for k, v in line["eval"].items()]
        else:
            out += [(line["round"], k, np.float32(v)) for k, v in line["metrics"].items()]
    return out


def test_tensorboard_event_files_read_back_and_a_resumed_run_shows_each_round_once(logged, tmp_path):
    pytest.importorskip("tensorboardX")
    results, _, _ = logged
    whole = tmp_path / "whole"
    cdb.run(AGENT, ENV, loggers=[TensorBoardLogger(whole)], **RUN)
    assert read_events(whole) == expected_scalars(results)

    cut = tmp_path / "cut"
    crash_after_logging_round_10(tmp_path, TensorBoardLogger(cut))
    cdb.run(AGENT, ENV, loggers=[TensorBoardLogger(cut)], checkpoint_dir=tmp_path / "ckpt", resume=True, **RUN)
    assert len(list(cut.glob("events.out.tfevents.*"))) == 2
    assert read_events(cut) == expected_scalars(results)


# ------------------------------------------------------------------------------------------------
# Weights & Biases


class FakeWandb(types.ModuleType):
    """Stands for the ``wandb`` module: records ``init``'s arguments and each run's ``log`` and
    ``finish`` calls, to check what ``WandbLogger`` asks of W&B without W&B installed."""

    def __init__(self):
        super().__init__("wandb")
        self.runs: list[types.SimpleNamespace] = []

    def init(self, **kwargs):
        run = types.SimpleNamespace(init=kwargs, logged=[], exit_code=None)
        run.log = lambda data, step: run.logged.append((step, data))
        run.finish = lambda exit_code=0: setattr(run, "exit_code", exit_code)
        self.runs.append(run)
        return run


def test_wandb_logger_logs_means_by_round_and_finishes_with_the_runs_outcome(logged, monkeypatch):
    results, _, _ = logged
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cdb.run(AGENT, ENV, loggers=[WandbLogger("cdb", name="K4/passive", id="cell-1", config={"note": "x"})], **RUN)
    (run,) = fake.runs
    assert run.init["project"] == "cdb" and run.init["name"] == "K4/passive"
    assert run.init["id"] == "cell-1" and run.init["resume"] == "allow"
    assert run.init["config"] == {**results.config, "note": "x"}
    expected = []
    for line in expected_lines(results)[1:]:
        data = {f"eval/{k}": v for k, v in line["eval"].items()} if "eval" in line else line["metrics"]
        expected.append((line["round"], data))
    assert run.logged == expected and run.exit_code == 0

    def interrupt(rounds_done, results):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        cdb.run(AGENT, ENV, loggers=[WandbLogger("cdb")], on_block=interrupt, **RUN)
    assert "id" not in fake.runs[1].init and fake.runs[1].exit_code == 1


def test_wandb_offline_run_writes_its_history(logged, tmp_path, monkeypatch):
    """The real ``wandb`` (in the test extras) in offline mode: the history it writes is the run's."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    results, _, _ = logged
    cdb.run(AGENT, ENV, loggers=[WandbLogger("cdb-test", name="tiny", dir=tmp_path)], **RUN)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history = read_wandb_history(next(run_dir.glob("*.wandb")))
    assert [step for step, _ in history] == sorted({line["round"] for line in expected_lines(results)[1:]})
    final = dict(history)[ROUNDS]
    assert final["regret"] == pytest.approx(float(results.metrics["regret"][:, -1].mean()), rel=1e-6)
    assert final["eval/bai_regret"] == pytest.approx(float(results.eval_metrics["bai_regret"][:, -1].mean()), rel=1e-6)


def read_wandb_history(path) -> list[tuple[int, dict]]:
    """``(step, {key: value})`` of each history row in an offline run's ``.wandb`` file.

    The file is a 7-byte header (``:W&B``, a magic number, a version) then LevelDB's log format:
    32 KiB blocks of records (CRC 4 bytes, length 2, type 1: full, first, middle or last piece of
    a ``Record`` protobuf), a block's tail shorter than a record header left as padding.
    """
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:8]
    at, pieces, rows = 7, b"", []
    while at + 7 <= len(data):
        if block - at % block < 7:  # padding at a block's end
            at += block - at % block
            continue
        length, kind = struct.unpack("<HB", data[at + 4 : at + 7])
        pieces += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_internal_pb2.Record.FromString(pieces)
            pieces = b""
            if record.WhichOneof("record_type") == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                rows.append((int(items.pop("_step")), {k: v for k, v in items.items() if not k.startswith("_")}))
    return rows


# ------------------------------------------------------------------------------------------------
# a logger per sweep cell


def tiny_sweep():
    from cdb.sweep import Sweep

    return Sweep(
        agents={"passive": AGENT}, envs={"K4": ENV}, seed_splits=2, **{k: RUN[k] for k in RUN if k != "progress"}
    )


def test_wandb_per_cell_gives_each_cell_a_run_named_after_it_that_a_resume_continues(tmp_path, monkeypatch):
    from cdb.sweep import run_sweep, wandb_per_cell

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_sweep(tiny_sweep(), tmp_path / "store", progress=False, logger_factory=wandb_per_cell("cdb", group="tiny"))
    cells = tiny_sweep().cells()
    assert [r.init["name"] for r in fake.runs] == [c.name for c in cells]
    assert [r.init["id"] for r in fake.runs] == [
        f"cell-{c.id.rsplit('-', 1)[1]}" for c in cells
    ]  # the store folder's end
    assert all(r.init["resume"] == "allow" and r.init["group"] == "tiny" and r.exit_code == 0 for r in fake.runs)
    assert fake.runs[1].init["config"]["cell"] == "K4/passive/seeds=1:2"
    assert fake.runs[1].init["config"]["seed_range"] == [1, 2] and fake.runs[1].init["config"]["params"] == {}
    assert [step for step, _ in fake.runs[0].logged] == [0, *range(1, 6), 5, *range(6, 11), 10]
    # with two jax.distributed processes each process logs its own seeds to a run of its own
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    (logger,) = wandb_per_cell("cdb")(cells[0].name, cells[0].description)
    assert (logger.id, logger.name) == (f"{fake.runs[0].init['id']}-p1", f"{cells[0].name}-p1")


def test_tensorboard_per_cell_writes_one_run_per_cell(tmp_path):
    pytest.importorskip("tensorboardX")
    from cdb.store import Store
    from cdb.sweep import run_sweep, tensorboard_per_cell

    store = Store(tmp_path / "store")
    run_sweep(tiny_sweep(), store, progress=False, logger_factory=tensorboard_per_cell(tmp_path / "tb"))
    for cell in tiny_sweep().cells():
        results = store.load_results(cell.id)
        logdir = tmp_path / "tb" / "K4" / "passive" / f"seeds={cell.seed_range[0]}_{cell.seed_range[1]}"
        assert read_events(logdir) == expected_scalars(results)
