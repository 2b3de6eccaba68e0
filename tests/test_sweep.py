"""``cdb.sweep`` and ``cdb.store``: cells, skipping, resuming, shards, summaries, the command line,
and one experiment across two ``jax.distributed`` processes.

One sweep configuration throughout (passive exploration with a linear-Gaussian reward model on a
4-arm LinearDuel, 10 rounds, 2 seeds cut into two one-seed cells), so every cell, shard and
resumed run reuses one compiled program.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cdb
from cdb import sweep as S
from cdb.agents import passive
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel
from cdb.store import Store
from cdb.sweep.__main__ import main

ENV = LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=4)
AGENT = passive(reward_model=LinearEnsemble(num_members=2))
ROUNDS, SEEDS, EVAL_EVERY = 10, 2, 5
CONFIG = f"""
import cdb.sweep
from cdb.agents import passive
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel

SWEEP = cdb.sweep.Sweep(
    agents={{"passive": passive(reward_model=LinearEnsemble(num_members=2))}},
    envs={{"K4": LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=4)}},
    rounds={ROUNDS}, seeds={SEEDS}, eval_every={EVAL_EVERY}, seed_splits=2,
)
"""


def make_sweep(**kwargs) -> S.Sweep:
    options = dict(
        agents={"passive": AGENT},
        envs={"K4": ENV},
        rounds=ROUNDS,
        seeds=SEEDS,
        eval_every=EVAL_EVERY,
        seed_splits=2,
    )
    options.update(kwargs)
    return S.Sweep(**options)


def snapshot(store: Store) -> dict[str, tuple[bytes, int]]:
    """Every file of a store: its bytes and modification time (ns)."""
    return {
        str(p.relative_to(store.root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in store.root.rglob("*")
        if p.is_file()
    }


def cell_results(store: Store) -> dict[str, cdb.Results]:
    return {r["name"]: store.load_results(cid) for cid, r in store.index().items()}


def assert_same_results(a: cdb.Results, b: cdb.Results) -> None:
    assert sorted(a.metrics) == sorted(b.metrics) and sorted(a.eval_metrics) == sorted(b.eval_metrics)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)
    for k in a.eval_metrics:
        np.testing.assert_array_equal(a.eval_metrics[k], b.eval_metrics[k], err_msg=k)
    np.testing.assert_array_equal(a.eval_rounds, b.eval_rounds)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The whole sweep run once into a store, and what ``run_sweep`` reported."""
    store = Store(tmp_path_factory.mktemp("full"))
    report = S.run_sweep(make_sweep(), store, progress=False)
    return store, report


@pytest.fixture(scope="module")
def reference():
    """One ``cdb.run`` of both seeds, which the two one-seed cells must reproduce."""
    return cdb.run(AGENT, ENV, ROUNDS, SEEDS, eval_every=EVAL_EVERY, progress=False)


def test_cells_are_named_deterministically_and_split_the_seeds():
    cells = make_sweep().cells()
    assert [c.name for c in cells] == ["K4/passive/seeds=0:1", "K4/passive/seeds=1:2"]
    assert [c.seed_range for c in cells] == [(0, 1), (1, 2)]
    assert {c.experiment for c in cells} == {"K4/passive"}
    # the same configuration built again (new objects) gives the same ids; another changes them
    assert [c.id for c in make_sweep().cells()] == [c.id for c in cells]
    other = make_sweep(agents={"passive": passive(reward_model=LinearEnsemble(num_members=3))}).cells()
    assert not {c.id for c in other} & {c.id for c in cells}
    fields = {f.name: getattr(cells[0], f.name) for f in dataclasses.fields(S.Cell)}
    assert S.Cell(**fields) == cells[0]
    with pytest.raises(TypeError):  # sixteen fields: by keyword only
        S.Cell(*fields.values())


def test_grid_makes_the_product_of_the_parameters_each_factory_names():
    sweep = S.Sweep(
        agents={
            "ts": lambda members, env_name: passive(reward_model=LinearEnsemble(num_members=members)),
            "fixed": AGENT,
        },
        envs={"L": lambda arms: LinearDuel(num_arms=arms, feature_dim=3)},
        grid={"members": [2, 3], "arms": [4, 5]},
        rounds=4,
    )
    names = [c.name for c in sweep.cells()]
    assert names == sorted(
        [f"L/ts/members={m},arms={k}" for m in (2, 3) for k in (4, 5)] + [f"L/fixed/arms={k}" for k in (4, 5)]
    )
    cell = next(c for c in sweep.cells() if c.name == "L/ts/members=3,arms=5")
    assert (
        cell.agent.reward_model.num_members == 3 and cell.env.num_arms == 5 and cell.params == {"members": 3, "arms": 5}
    )


@dataclasses.dataclass(frozen=True)
class HoldsReference:
    """An agent's configuration that holds a reference policy (as the alignment agents do); only
    the cells' ids are built from it, it never runs."""

    reference: Any

    def select(self, key, state, obs):
        raise AssertionError("HoldsReference only names cells")


def test_a_cells_id_does_not_depend_on_whether_its_reference_policy_was_trained_or_loaded():
    from cdb.environments.reference_policy import ReferencePolicy

    trained = ReferencePolicy("tiny-policy", {"w": np.arange(32.0)}, 2, 3, report={"train_seconds": 9.5})
    loaded = dataclasses.replace(trained, path="/cache/ref", loaded_from_cache=True, report={"train_seconds": 0.1})

    def ids(reference):
        return [c.id for c in make_sweep(agents={"sea": HoldsReference(reference)}).cells()]

    assert ids(loaded) == ids(trained)  # the same weights are the same cell
    other_weights = dataclasses.replace(trained, params={"w": np.arange(32.0) + 1})
    assert not set(ids(other_weights)) & set(ids(trained))


def test_a_changed_lambda_makes_new_cells():
    keep = make_sweep(postprocess=lambda results: results)
    cut = make_sweep(postprocess=lambda results: results.truncated(EVAL_EVERY))
    assert not {c.id for c in keep.cells()} & {c.id for c in cut.cells()}
    assert [c.id for c in make_sweep(postprocess=lambda results: results).cells()] == [c.id for c in keep.cells()]


class Unchanged:
    """A postprocess that shows nothing of itself but its address: it cannot be described."""

    def __call__(self, results):
        return results


def test_a_done_cell_with_a_callable_that_cannot_be_described_is_refused(full, tmp_path):
    store = Store(tmp_path / "store")
    assert len(S.run_sweep(make_sweep(postprocess=Unchanged()), store, progress=False).ran) == 2
    with pytest.raises(ValueError, match=r"cell 'K4/passive/seeds=0:1' is done .*config\.postprocess \(<.*Unchanged"):
        S.run_sweep(make_sweep(postprocess=Unchanged()), store, progress=False)
    from cdb.config import named

    identity = make_sweep(postprocess=named(Unchanged(), "identity"))
    assert len(S.run_sweep(identity, store, progress=False).ran) == 2  # another description: new cells
    assert len(S.run_sweep(identity, store, progress=False).skipped) == 2


def test_a_summary_leaves_out_cells_of_a_listed_experiment_under_other_ids(full, tmp_path):
    store = Store(tmp_path / "store")
    S.run_sweep(make_sweep(), store, progress=False)
    for cid, record in store.index().items():  # the same experiment, recorded under an older description
        stale = f"{cid}-older"
        store.write_record(stale, {**record, "id": stale})
        store.save_results(stale, store.load_results(cid))
    summary = S.summarize(store)
    assert summary.frame["experiment"].tolist() == ["K4/passive"] and summary.frame["seeds"].tolist() == [SEEDS]


def test_a_sweep_writes_results_records_and_a_manifest(full, reference):
    store, report = full
    assert report.ran == ["K4/passive/seeds=0:1", "K4/passive/seeds=1:2"] and not report.skipped and not report.failed
    index = store.index()
    assert len(index) == 2
    for cid, record in index.items():
        assert record["status"] == "done" and record["error"] is None and record["attempts"] == 1
        assert record["wall_seconds"] > 0 and record["shard"] == "0/1" and record["resumed_from"] == 0
        cell = next(c for c in make_sweep().cells() if c.id == cid)
        assert record["config"] == json.loads(json.dumps(cell.description)) and record["name"] == cell.name
        assert store.results_path(cid).exists() and not store.checkpoint_dir(cid).exists()
    manifest = store.manifest()
    assert [c["id"] for c in manifest["cells"]] == sorted(index, key=lambda c: index[c]["name"])
    # the two one-seed cells are exactly the two seeds of one cdb.run
    parts = cell_results(store)
    merged = cdb.Results.merge_seeds([parts["K4/passive/seeds=0:1"], parts["K4/passive/seeds=1:2"]])
    assert_same_results(merged, reference)
    assert merged.config["seed_range"] == [0, SEEDS]
    # each cell's log: its run's configuration, then each round's metrics and each evaluation, once
    for cid in index:
        res = store.load_results(cid)
        lines = [json.loads(line) for line in store.log_path(cid).read_text().splitlines()]
        assert lines[0] == {"config": res.config}
        rounds = [line for line in lines[1:] if "metrics" in line]
        assert [line["round"] for line in rounds] == list(range(1, ROUNDS + 1))
        regret = [line["metrics"]["regret"] for line in rounds]
        np.testing.assert_array_equal(regret, res.metrics["regret"].astype(np.float64).mean(axis=0))
        evals = [line for line in lines[1:] if "eval" in line]
        assert [line["round"] for line in evals] == list(res.eval_rounds)


def test_a_second_run_skips_done_cells_and_touches_nothing(full):
    store, _ = full
    before = snapshot(store)
    report = S.run_sweep(make_sweep(), store, progress=False)
    assert report.skipped == ["K4/passive/seeds=0:1", "K4/passive/seeds=1:2"] and not report.ran
    after = snapshot(store)
    # the manifest is rewritten with the same content; every record and result is untouched
    assert {k: v for k, v in after.items() if k != "sweep.json"} == {
        k: v for k, v in before.items() if k != "sweep.json"
    }
    assert after["sweep.json"][0] == before["sweep.json"][0]


def test_an_interrupted_cell_fails_then_resumes_from_its_checkpoint(full, tmp_path):
    store = Store(tmp_path / "store")

    def interrupt(cell, rounds_done, results):
        assert results.num_rounds == rounds_done
        if cell.seed_range == (0, 1) and rounds_done == EVAL_EVERY:
            raise RuntimeError("node preempted")

    report = S.run_sweep(make_sweep(), store, progress=False, on_block=interrupt)
    assert report.ran == ["K4/passive/seeds=1:2"]
    assert report.failed == {"K4/passive/seeds=0:1": "RuntimeError: node preempted"}
    (first_id,) = [cid for cid, r in store.index().items() if r["status"] == "failed"]
    record = store.record(first_id)
    assert record["error"] == "RuntimeError: node preempted" and "node preempted" in record["traceback"]
    assert not store.results_path(first_id).exists() and store.checkpoint_dir(first_id).exists()

    report = S.run_sweep(make_sweep(), store, progress=False)
    assert report.ran == ["K4/passive/seeds=0:1"] and report.skipped == ["K4/passive/seeds=1:2"]
    record = store.record(first_id)
    assert record["status"] == "done" and record["attempts"] == 2 and record["resumed_from"] == EVAL_EVERY
    uninterrupted = cell_results(full[0])
    for name, res in cell_results(store).items():
        assert_same_results(res, uninterrupted[name])
    for cid in store.index():  # the resumed cell's log went on after round 5, without repeating one
        assert store.log_path(cid).read_text() == full[0].log_path(cid).read_text()


def test_without_checkpoints_an_interrupted_cell_starts_over(full, tmp_path):
    sweep = make_sweep(checkpoints=False)
    assert [c.id for c in sweep.cells()] == [c.id for c in make_sweep().cells()]  # not part of the identity
    store = Store(tmp_path / "store")

    def interrupt(cell, rounds_done, results):
        if cell.seed_range == (0, 1) and rounds_done == EVAL_EVERY:
            raise RuntimeError("node preempted")

    assert list(S.run_sweep(sweep, store, progress=False, on_block=interrupt).failed) == ["K4/passive/seeds=0:1"]
    assert not any(store.checkpoint_dir(cid).exists() for cid in store.index())
    assert S.run_sweep(sweep, store, progress=False).ran == ["K4/passive/seeds=0:1"]
    assert all(r["resumed_from"] == 0 and r["status"] == "done" for r in store.index().values())
    uninterrupted = cell_results(full[0])
    for name, res in cell_results(store).items():
        assert_same_results(res, uninterrupted[name])


class CellLogger:
    """A logger built per cell by a factory: records the cell it was built for and its calls."""

    def __init__(self, name, description, calls):
        self.name, self.description, self.calls = name, description, calls

    def open(self, config, start_round):
        self.calls.append((self.name, "open", start_round))

    def log_rounds(self, rounds, metrics):
        self.calls.append((self.name, "rounds", int(rounds[-1])))

    def log_eval(self, round, metrics):
        pass

    def close(self, error=None):
        self.calls.append((self.name, "close", error))


def test_each_cell_gets_its_own_loggers_built_with_its_name_and_description(tmp_path):
    calls, built = [], {}

    def factory(name, description):
        if name.endswith("seeds=1:2"):
            raise RuntimeError("no W&B project for this cell")
        built[name] = description
        return [CellLogger(name, description, calls)]

    store = Store(tmp_path / "store")
    report = S.run_sweep(make_sweep(), store, progress=False, logger_factory=factory, jsonl=False)
    first, second = (c for c in make_sweep().cells())
    assert store.is_done(first.id) and not store.log_path(first.id).exists()  # jsonl=False: no log of its own
    assert built == {first.name: first.description}
    assert calls == [
        (first.name, "open", 0),
        (first.name, "rounds", EVAL_EVERY),
        (first.name, "rounds", ROUNDS),
        (first.name, "close", None),
    ]
    assert report.ran == [first.name] and report.failed == {second.name: "RuntimeError: no W&B project for this cell"}
    report = S.run_sweep(make_sweep(), Store(tmp_path / "other"), progress=False, logger_factory=lambda n, d: [print])
    assert report.failed[first.name].startswith(
        "ValueError: run_sweep: logger_factory('K4/passive/seeds=0:1', ...): loggers[0]=<built-in function print> "
        "is not a logger"
    )
    assert len(report.failed) == 2 and not report.ran


def test_shards_are_disjoint_and_together_equal_the_whole_sweep(full, tmp_path):
    store = Store(tmp_path / "sharded")
    first = S.run_sweep(make_sweep(), store, shard="0/2", progress=False)
    assert first.ran == ["K4/passive/seeds=0:1"]
    partial = S.summarize(store)
    assert partial.frame["status"].tolist() == ["partial"] and partial.missing == ["K4/passive"]
    assert np.isnan(partial.frame["cumulative_regret"].iloc[0])
    second = S.run_sweep(make_sweep(), store, shard=S.Shard(1, 2), progress=False)
    assert second.ran == ["K4/passive/seeds=1:2"]
    assert {r["shard"] for r in store.index().values()} == {"0/2", "1/2"}
    whole = cell_results(full[0])
    for name, res in cell_results(store).items():
        assert_same_results(res, whole[name])
    a, b = S.summarize(store), S.summarize(full[0])
    assert a.missing == [] and a.rows()[0]["cumulative_regret"] == b.rows()[0]["cumulative_regret"]


def test_summary_numbers_equal_an_independent_computation(full):
    store, _ = full
    summary = S.summarize(store, make_sweep(), targets=["bai_regret<=0.5", "cumulative_regret>=3"])
    (row,) = summary.frame.to_dict("records")
    assert row["status"] == "done" and row["seeds"] == SEEDS and summary.missing == []
    arrays = [np.load(store.results_path(cid)) for cid in sorted(store.index(), key=lambda c: store.index()[c]["name"])]
    regret = np.concatenate([a["metrics/regret"] for a in arrays])  # [seeds, rounds]
    bai = np.concatenate([a["eval/bai_regret"] for a in arrays])  # [seeds, evals]
    queries = np.concatenate([a["metrics/queries"] for a in arrays])
    final = regret.sum(axis=1)
    assert row["cumulative_regret"] == pytest.approx(final.mean(), rel=1e-6)
    assert row["cumulative_regret se"] == pytest.approx(final.std(ddof=1) / np.sqrt(SEEDS), rel=1e-6)
    assert row["bai_regret"] == pytest.approx(bai[:, -1].mean(), rel=1e-6)
    # queries to target by brute force: the first evaluation round with BAI regret <= 0.5
    eval_rounds = np.arange(bai.shape[1]) * EVAL_EVERY
    expected = []
    for s in range(SEEDS):
        hits = [t for t, v in zip(eval_rounds, bai[s], strict=True) if v <= 0.5]
        if hits:
            expected.append(queries[s, : hits[0]].sum())
    label = "queries to bai_regret <= 0.5"
    assert row[f"{label} reached"] == len(expected)
    if expected:
        assert row[label] == pytest.approx(np.mean(expected))
    cumulative = np.cumsum(regret, axis=1)
    expected = [
        queries[s, : np.argmax(cumulative[s] >= 3) + 1].sum() for s in range(SEEDS) if (cumulative[s] >= 3).any()
    ]
    label = "queries to cumulative_regret >= 3"
    assert row[f"{label} reached"] == len(expected) and row[label] == pytest.approx(np.mean(expected))
    text = summary.markdown()
    assert f"{final.mean():.2f} ± {final.std(ddof=1) / np.sqrt(SEEDS):.2f}" in text


def test_command_line_runs_and_summarizes(full, tmp_path, capsys):
    config = tmp_path / "tiny_sweep.py"
    config.write_text(textwrap.dedent(CONFIG))
    store = tmp_path / "cli_store"
    tensorboard = ["--tensorboard", str(tmp_path / "tb")] if importlib.util.find_spec("tensorboardX") else []
    assert main(["run", str(config), "--store", str(store), "--shard", "1/2", "--no-progress", *tensorboard]) == 0
    assert "1 cells ran" in capsys.readouterr().out
    if tensorboard:  # one TensorBoard run for the one cell that ran, in a folder named after it
        (events,) = (tmp_path / "tb").rglob("events.*")
        assert events.parent == tmp_path / "tb" / "K4" / "passive" / "seeds=1_2" and events.stat().st_size > 0
    assert main(["summary", str(store)]) == 0
    out = capsys.readouterr().out
    assert "partial" in out and "1 experiments without complete results: K4/passive" in out
    assert main(["run", str(config), "--store", str(store), "--shard", "0/2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["summary", str(config), "--store", str(store), "--target", "bai_regret<=0.5"]) == 0
    out = capsys.readouterr().out
    expected = S.summarize(full[0]).rows()[0]["cumulative_regret"]
    assert expected in out and "queries to bai_regret <= 0.5" in out
    for ext in ("md", "csv", "png"):
        assert (store / f"summary.{ext}").stat().st_size > 0
    assert (store / "summary.md").read_text().strip() == S.summarize(store, targets=["bai_regret<=0.5"]).markdown()


def test_python_dash_m_cdb_sweep_runs_a_sweep_file(full, tmp_path):
    """The real entry point: the sweep file's ``cdb.sweep.Sweep`` is the class the command line checks
    for, the package is imported once, and the cells equal those of the in-process sweep."""
    config = tmp_path / "tiny_sweep.py"
    config.write_text(textwrap.dedent(CONFIG))
    store = tmp_path / "cli_store"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    root = str(Path(cdb.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "cdb.sweep", "run", str(config)]
    done = subprocess.run(
        [*command, "--store", str(store), "--no-progress"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 cells ran, 0 skipped (done), 0 failed" in done.stdout
    for name, res in cell_results(Store(store)).items():
        assert_same_results(res, cell_results(full[0])[name])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(agents={}), "agents"),
        (dict(envs={"a/b": ENV}), "envs"),
        (dict(rounds=0), "rounds"),
        (dict(eval_every=3), "eval_every"),
        (dict(seed_splits=3), "seed_splits"),
        (dict(grid={"members": []}), "grid"),
        (dict(grid={"env": [1]}), "grid"),
        (dict(run_options={"seed": 1}), "run_options"),
        (dict(key="zero"), "key"),
        (dict(checkpoints="yes"), "checkpoints"),
    ],
)
def test_bad_sweeps_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_sweep(**kwargs)


def test_a_grid_key_no_factory_takes_is_rejected():
    with pytest.raises(ValueError, match=r"grid keys \['members'\] are named by no agent"):
        make_sweep(grid={"members": [1, 2]}).cells()


def test_a_factory_needing_an_unknown_argument_is_rejected():
    with pytest.raises(ValueError, match=r"agent 'ts' factory needs \['width'\]"):
        make_sweep(agents={"ts": lambda width: AGENT}).cells()


@pytest.mark.parametrize("text", ["2/2", "1/0", "a/b", "1", "-1/2", "0/2/3"])
def test_bad_shards_are_rejected(text):
    with pytest.raises(ValueError, match="shard"):
        S.Shard.parse(text)


def test_shards_partition_cells_by_index_modulo_count():
    cells = list(range(7))
    parts = [S.Shard.parse(f"{i}/3").select(cells) for i in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]


def test_targets_parse_and_bad_ones_are_rejected():
    assert S.Target.parse("bai_regret<=0.01") == S.Target("bai_regret", 0.01, "below")
    assert S.Target.parse("win_rate>=0.8") == S.Target("win_rate", 0.8, "above")
    assert S.Target.parse("bai_regret=0.1").direction == "below"
    assert S.Target.parse("win_rate=0.7").direction == "above"
    for bad in ("bai_regret<0.1", "=0.1", "bai_regret<=x"):
        with pytest.raises(ValueError, match="target"):
            S.Target.parse(bad)


def test_bad_config_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="config"):
        S.load_sweep(tmp_path / "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match="defines SWEEP=nothing"):
        S.load_sweep(empty)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("SWEEP = {'agents': {}}\n")
    with pytest.raises(ValueError, match="defines SWEEP=dict"):
        S.load_sweep(wrong)
    with pytest.raises(SystemExit):
        main(["run", str(empty), "--shard", "0/2", "--coordinator", "127.0.0.1:1"])


def test_merge_seeds_rejects_ranges_that_do_not_follow_each_other(full):
    parts = cell_results(full[0])
    a, b = parts["K4/passive/seeds=0:1"], parts["K4/passive/seeds=1:2"]
    with pytest.raises(ValueError, match="not consecutive"):
        cdb.Results.merge_seeds([b, a])
    without_eval = dataclasses.replace(b, eval_metrics={})
    with pytest.raises(ValueError, match=r"different metrics .*\['bai_regret'\] against .*\[\]"):
        cdb.Results.merge_seeds([a, without_eval])
    with pytest.raises(ValueError, match="different evaluation rounds"):
        cdb.Results.merge_seeds([a, b.truncated(EVAL_EVERY)])
    with pytest.raises(ValueError, match=r"parts=\[\] is not allowed"):
        cdb.Results.merge_seeds([])


_DISTRIBUTED = """
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import cdb.distributed
from cdb.agents import passive
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel
env = LinearDuel(num_arms=4, feature_dim=3, batch_size=2, eval_batch_size=4)
agent = passive(reward_model=LinearEnsemble(num_members=2))
res = cdb.distributed.run(agent, env, {rounds}, 3, eval_every={eval_every}, progress=False)
assert jax.process_count() == 2 and res.num_seeds == 3
res.save(sys.argv[3])
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_jax_distributed_processes_give_the_one_process_results(tmp_path):
    """Three seeds over two local CPU processes (slices of 2 and 1 seeds, gathered with
    ``process_allgather``) equal one ``cdb.run`` of the three seeds in this process."""
    script = tmp_path / "worker.py"
    script.write_text(_DISTRIBUTED.format(rounds=ROUNDS, eval_every=EVAL_EVERY))
    address = f"127.0.0.1:{_free_port()}"
    # the test process's XLA flags (tests/conftest.py): other flags may round differently
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # the workers import this checkout's cdb, as the test process does
    root = str(Path(cdb.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), address, str(p), str(tmp_path / f"p{p}.npz")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    one = cdb.run(AGENT, ENV, ROUNDS, 3, eval_every=EVAL_EVERY, progress=False)
    for p in range(2):
        gathered = cdb.Results.load(tmp_path / f"p{p}.npz")
        assert_same_results(gathered, one)
        assert gathered.config == one.config


def test_seed_slices_are_contiguous_and_cover_the_seeds():
    from cdb.distributed import seed_slice

    assert [seed_slice(5, 2, p) for p in range(2)] == [(0, 2), (2, 5)]
    assert [seed_slice(3, 3, p) for p in range(3)] == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="seeds=1"):
        seed_slice(1, 2, 0)
    with pytest.raises(ValueError, match="process_id=2"):
        seed_slice(4, 2, 2)
