"""Sweeps: a grid of experiments (agents × environments × hyper-parameters × seeds) run into a results store.

A sweep is a small Python file that defines ``SWEEP``::

    # sweeps/linear.py
    from cdb.agents import ee_ts, passive
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel
    from cdb.sweep import Sweep

    SWEEP = Sweep(
        agents={"ee_ts": lambda members: ee_ts(reward_model=LinearEnsemble(members)), "passive": passive()},
        envs={"K16": LinearDuel(num_arms=16, feature_dim=8)},
        grid={"members": [4, 8]},          # hyper-parameters, passed to the factories that name them
        rounds=200, seeds=8, eval_every=20, key=0,
    )

and is run and summarised from the shell::

    python -m cdb.sweep run sweeps/linear.py --store results/linear [--shard 0/4]
    python -m cdb.sweep summary results/linear --target 'bai_regret<=0.01'

**Cells.** An agent or environment is either an object or a factory (any callable that is not
an agent / environment). Factories are called with the keyword arguments they name among the
grid's hyper-parameters; an agent factory may also name ``env`` (the cell's environment object)
and ``env_name``. A cell is one (environment, agent, hyper-parameters that its factories use)
triple; an agent that takes no hyper-parameter gives one cell per environment, not one per grid
point. With ``seed_splits=n`` a cell's ``seeds`` are cut into ``n`` contiguous ranges, each its
own cell run with ``cdb.run(seed_range=)`` and exactly the per-seed keys of the whole run, so the
summary's concatenation equals one run of all seeds; shards can then spread one experiment.

Each cell has a readable name (``env/agent/param=value,…[/seeds=a:b]``) and an id: the name's
slug and a SHA-256 digest of the cell's description (:func:`cdb.config.describe` of the agent,
the environment, the hyper-parameters and the run's settings, as ``cdb.run`` records them), so
the same content gives the same id in every process, and what ``describe`` leaves out (e.g.
whether a reference policy was trained or read from its cache) does not change it; a lambda or
a closure is described by its code and captured values, so changing one makes a new cell. A cell
whose configuration holds a callable that can be described neither so nor by its name (an
object shown by its memory address) runs, but is never taken as done or resumed:
:func:`run_sweep` refuses it then (name it with :func:`cdb.config.named`).

**The store** (:class:`cdb.store.Store`): one folder per cell with ``results.npz``, orbax
checkpoints while running (``cdb.run(checkpoint_dir=, resume=True)``) and a ``record.json``
(config, status ``running``/``done``/``failed`` with the error, wall seconds, shard). Running a
sweep again skips ``done`` cells and resumes the others from their last checkpoint, which gives
the same results as an uninterrupted run (``cdb.run``'s per-round keys do not depend on where a
run was cut). A failed cell does not stop the sweep; it is recorded and reported at the end.

**Shards.** ``--shard i/n`` runs the cells ``j`` with ``j mod n == i`` of the cell list sorted by
name, so ``n`` jobs of a scheduler's job array (``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)
run disjoint parts into one store on a shared file system, and the summary merges whatever is
there, naming the cells that are missing.

**Several processes on one experiment.** With ``jax.distributed`` initialised (``--coordinator``,
``--num-processes``, ``--process-id``, or ``--distributed`` for a scheduler JAX detects), every
process runs every cell on its own contiguous slice of the seeds (:mod:`cdb.distributed`), the
slices are gathered, and process 0 writes the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import runpy
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from cdb.config import SWEEP_FILE_MODULE, describe, digest, unidentified_callables, unidentified_error
from cdb.metrics import TargetQueries, queries_to_target
from cdb.results import Results
from cdb.store import Store, checkpointed_rounds
from cdb.xla_options import release_compiled_programs

_RESERVED = ("env", "env_name")
_MANAGED_RUN_ARGS = (
    "agent",
    "env",
    "rounds",
    "seeds",
    "key",
    "eval_every",
    "progress",
    "checkpoint_dir",
    "resume",
    "on_block",
    "seed_range",
)


# ---------------------------------------------------------------------------------------------
# names


def _slug(text: str, limit: int = 80) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:limit]


# ---------------------------------------------------------------------------------------------
# the sweep and its cells


@dataclasses.dataclass(frozen=True)
class Cell:
    """One experiment of a sweep: one ``cdb.run`` (or one seed range of it)."""

    name: str
    experiment: str
    env_name: str
    agent_name: str
    params: dict[str, Any]
    agent: Any
    env: Any
    rounds: int
    seeds: int
    seed_range: tuple[int, int]
    eval_every: int | None
    key: int
    run_options: dict[str, Any]
    description: dict[str, Any]
    id: str
    postprocess: Callable[[Results], Results] | None = None

    def run(self, *, checkpoint_dir=None, progress: bool = False, on_block=None, runner=None) -> Results:
        """``cdb.run`` of this cell (``runner``: a function with ``cdb.run``'s signature)."""
        if runner is None:
            from cdb.run import run as runner
        full = self.seed_range == (0, self.seeds)
        return runner(
            self.agent,
            self.env,
            self.rounds,
            self.seeds,
            key=self.key,
            eval_every=self.eval_every,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            resume=checkpoint_dir is not None,
            on_block=on_block,
            seed_range=None if full else self.seed_range,
            **self.run_options,
        )

    def summary(self) -> dict[str, Any]:
        """What the store's manifest and the cell's record say about the cell."""
        return {
            "id": self.id,
            "name": self.name,
            "experiment": self.experiment,
            "env": self.env_name,
            "agent": self.agent_name,
            "params": describe(self.params),
            "seeds": self.seeds,
            "seed_range": list(self.seed_range),
        }


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A grid of experiments: every environment × agent × grid point (× seed range).

    Args:
      agents: ``{name: agent or factory}``; a factory is called with the keyword arguments it
        names among the grid's keys, ``env`` (the environment object) and ``env_name``.
      envs: ``{name: environment or factory}``; a factory gets the grid keys it names.
      rounds, seeds, eval_every, key: as in :func:`cdb.run` (the same ``key`` for every cell, so
        cells differ only by configuration: common random numbers across agents).
      grid: ``{hyper-parameter: [values]}``; the cells take the Cartesian product of the values
        of the keys their factories name. Every key must be named by some factory.
      seed_splits: cut each experiment's seeds into this many contiguous ranges (one cell each).
      run_options: further keyword arguments of ``cdb.run`` (``env_params``, ``seed_chunk``,
        ``compiler_options``, ``shard_seeds``), the same for every cell.
      postprocess: ``Results -> Results`` applied to each cell's results before they are saved
        (e.g. a derived metric); named by its qualified name in the cells' descriptions.
      checkpoints: save orbax checkpoints after every block, so that an interrupted cell resumes
        where it stopped. ``False`` for cells so short that running one again costs less than
        the saves; an interrupted cell then starts over. Not part of a cell's identity (it does
        not change results).
    """

    agents: Mapping[str, Any]
    envs: Mapping[str, Any]
    rounds: int
    seeds: int = 1
    grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    eval_every: int | None = None
    key: int = 0
    seed_splits: int = 1
    run_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    postprocess: Callable[[Results], Results] | None = None
    checkpoints: bool = True

    def __post_init__(self):
        for field in ("agents", "envs"):
            value = getattr(self, field)
            if not isinstance(value, Mapping) or not value:
                raise ValueError(
                    f"Sweep: {field}={value!r} is not allowed; expected a non-empty dict of name -> object"
                )
            bad = [k for k in value if not isinstance(k, str) or not k or "/" in k]
            if bad:
                raise ValueError(
                    f"Sweep: {field} names {bad!r} are not allowed; expected non-empty strings without '/'"
                )
        for field in ("rounds", "seeds", "seed_splits"):
            _check_positive(field, getattr(self, field))
        if self.eval_every is not None:
            _check_positive("eval_every", self.eval_every)
            if self.rounds % self.eval_every:
                raise ValueError(f"Sweep: eval_every={self.eval_every} must divide rounds={self.rounds}")
        if isinstance(self.key, bool) or not isinstance(self.key, int | np.integer):
            raise ValueError(f"Sweep: key={self.key!r} is not allowed; expected an integer")
        if self.seed_splits > self.seeds:
            raise ValueError(
                f"Sweep: seed_splits={self.seed_splits} is out of range; expected 1 <= it <= seeds={self.seeds}"
            )
        if not isinstance(self.grid, Mapping):
            raise ValueError(f"Sweep: grid={self.grid!r} is not allowed; expected a dict of name -> list of values")
        for name, values in self.grid.items():
            if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED:
                raise ValueError(
                    f"Sweep: grid key {name!r} is not allowed; expected a Python identifier other than {_RESERVED}"
                )
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not len(values):
                raise ValueError(
                    f"Sweep: grid[{name!r}]={values!r} is not allowed; expected a non-empty list of values"
                )
        if not isinstance(self.checkpoints, bool):
            raise ValueError(f"Sweep: checkpoints={self.checkpoints!r} is not allowed; expected True or False")
        if not isinstance(self.run_options, Mapping):
            raise ValueError(f"Sweep: run_options={self.run_options!r} is not allowed; expected a dict")
        from cdb.run import run

        allowed = set(inspect.signature(run).parameters) - set(_MANAGED_RUN_ARGS)
        unknown = sorted(set(self.run_options) - allowed)
        if unknown:
            raise ValueError(f"Sweep: run_options {unknown} are not allowed; expected keys among {sorted(allowed)}")
        if self.postprocess is not None and not callable(self.postprocess):
            raise ValueError(f"Sweep: postprocess={self.postprocess!r} is not allowed; expected a callable or None")

    def cells(self) -> list[Cell]:
        """Every cell, sorted by name (the order shards are dealt from)."""
        return _build_cells(self)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"Sweep: {name}={value!r} is out of range; expected an integer >= 1")


def _is_factory(obj: Any, method: str) -> bool:
    return callable(obj) and not hasattr(obj, method)


def _call(factory: Callable, available: dict[str, Any], what: str) -> tuple[Any, set[str]]:
    """Calls ``factory`` with the keyword arguments it names; returns the object and the names used."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        names = set(available)
    else:
        names = {n for n, p in parameters.items() if n in available and p.kind is not inspect.Parameter.VAR_POSITIONAL}
    required = [
        n
        for n, p in parameters.items()
        if n not in available
        and p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise ValueError(
            f"Sweep: the {what} factory needs {required}, which are neither grid keys nor among {sorted(available)}"
        )
    return factory(**{n: available[n] for n in names}), names


def _build_cells(sweep: Sweep) -> list[Cell]:
    grid_keys = list(sweep.grid)
    points = [dict(zip(grid_keys, values, strict=True)) for values in itertools.product(*sweep.grid.values())]
    used_anywhere: set[str] = set()
    envs: dict[tuple, tuple[Any, set[str]]] = {}
    cells: dict[str, Cell] = {}
    run_options = dict(sweep.run_options)
    for env_name, env_spec in sweep.envs.items():
        for agent_name, agent_spec in sweep.agents.items():
            for point in points:
                if _is_factory(env_spec, "step"):
                    env, env_used = _call(env_spec, point, f"environment {env_name!r}")
                    env_key = (env_name, tuple(sorted((k, repr(point[k])) for k in env_used)))
                    env, env_used = envs.setdefault(env_key, (env, env_used))
                else:
                    env, env_used = env_spec, set()
                if _is_factory(agent_spec, "select"):
                    available = {**point, "env": env, "env_name": env_name}
                    agent, agent_used = _call(agent_spec, available, f"agent {agent_name!r}")
                else:
                    agent, agent_used = agent_spec, set()
                used = (env_used | agent_used) - set(_RESERVED)
                used_anywhere |= used
                params = {k: point[k] for k in grid_keys if k in used}
                for start, stop in _seed_ranges(sweep.seeds, sweep.seed_splits):
                    cell = _make_cell(sweep, env_name, agent_name, params, agent, env, (start, stop), run_options)
                    cells.setdefault(cell.id, cell)
    unused = [k for k in grid_keys if k not in used_anywhere]
    if unused:
        raise ValueError(
            f"Sweep: grid keys {unused} are named by no agent or environment factory; a factory takes a "
            "hyper-parameter as a keyword argument of the same name"
        )
    return sorted(cells.values(), key=lambda c: (c.name, c.id))


def _seed_ranges(seeds: int, splits: int) -> list[tuple[int, int]]:
    bounds = [round(i * seeds / splits) for i in range(splits + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(splits)]


def _make_cell(sweep, env_name, agent_name, params, agent, env, seed_range, run_options) -> Cell:
    experiment = f"{env_name}/{agent_name}"
    if params:
        experiment += "/" + ",".join(f"{k}={_short(v)}" for k, v in params.items())
    name = experiment if sweep.seed_splits == 1 else f"{experiment}/seeds={seed_range[0]}:{seed_range[1]}"
    description = {
        "env_name": env_name,
        "agent_name": agent_name,
        "params": describe(params),
        "agent": describe(agent),
        "env": describe(env),
        "rounds": sweep.rounds,
        "seeds": sweep.seeds,
        "seed_range": list(seed_range),
        "eval_every": sweep.eval_every,
        "key": int(sweep.key),
        "run_options": describe(run_options),
        "postprocess": describe(sweep.postprocess),
    }
    cell_id = f"{_slug(name)}-{digest(description)[:12]}"
    return Cell(
        name,
        experiment,
        env_name,
        agent_name,
        params,
        agent,
        env,
        sweep.rounds,
        sweep.seeds,
        seed_range,
        sweep.eval_every,
        int(sweep.key),
        run_options,
        description,
        cell_id,
        sweep.postprocess,
    )


def _short(value: Any) -> str:
    if isinstance(value, bool | int | float | str) or value is None:
        return str(value)
    text = json.dumps(describe(value), sort_keys=True, default=str)
    return text if len(text) <= 24 else hashlib.sha256(text.encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# shards


@dataclasses.dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count``: the cells ``j`` (in name order) with ``j mod count == index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        ok = all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in (self.index, self.count))
        if not ok or self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index!r}/{self.count!r} is out of range; expected i/n with integers 0 <= i < n"
            )

    @classmethod
    def parse(cls, text: str | Shard | None) -> Shard:
        """``"i/n"`` (e.g. ``"0/4"``); ``None`` is the whole sweep."""
        if text is None:
            return cls()
        if isinstance(text, Shard):
            return text
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None:
            raise ValueError(f"shard={text!r} is not allowed; expected 'i/n' with integers 0 <= i < n, e.g. '0/4'")
        return cls(int(match.group(1)), int(match.group(2)))

    def select(self, cells: Sequence[Cell]) -> list[Cell]:
        return [c for j, c in enumerate(cells) if j % self.count == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# ---------------------------------------------------------------------------------------------
# running


@dataclasses.dataclass
class SweepReport:
    """What one ``run_sweep`` call did: cell names that ran, were skipped (done) or failed."""

    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]

    def __str__(self) -> str:
        text = f"{len(self.ran)} cells ran, {len(self.skipped)} skipped (done), {len(self.failed)} failed"
        for name, error in self.failed.items():
            text += f"\n  failed: {name}: {error}"
        return text


def run_sweep(
    sweep: Sweep,
    store: Store | str | os.PathLike,
    *,
    shard: Shard | str | None = None,
    progress: bool = True,
    keep_checkpoints: bool = False,
    on_block: Callable[[Cell, int, Results], None] | None = None,
) -> SweepReport:
    """Runs this shard's cells of ``sweep`` into ``store``, skipping done cells, resuming the others.

    Each cell runs ``cdb.run(..., checkpoint_dir=<cell>/checkpoints, resume=True)``; its record
    says ``running`` while it runs, then ``done`` (results saved, checkpoints removed unless
    ``keep_checkpoints``) or ``failed`` with the error (checkpoints kept for the next attempt).
    ``on_block(cell, rounds_done, results_so_far)`` is called after every block of every cell.
    A ``KeyboardInterrupt`` is recorded as a failure and re-raised. A done cell whose
    configuration holds a callable that :func:`cdb.config.describe` cannot describe (see
    :func:`cdb.config.unidentified_callables`) is a ``ValueError`` naming it, raised before any
    cell runs; such a cell with checkpoints fails the same way in ``cdb.run``.

    With ``jax.distributed`` initialised over several processes, every process must call this
    with the same arguments: each cell's seeds are split across the processes
    (:func:`cdb.distributed.run`), and process 0 alone writes the store. Which cells are done is
    process 0's view, broadcast to the others. A cell that fails in only some processes leaves
    the others waiting in the gather (a collective has no timeout of its own); the scheduler's
    time limit ends them, and the next run resumes from the checkpoints.
    """
    store = store if isinstance(store, Store) else Store(store)
    shard = Shard.parse(shard)
    cells = sweep.cells()
    mine = shard.select(cells)
    multi = jax.process_count() > 1
    leader = jax.process_index() == 0
    if multi and sweep.seed_splits > 1:
        raise ValueError(
            f"run_sweep: seed_splits={sweep.seed_splits} is not allowed with {jax.process_count()} jax.distributed "
            "processes, which split every cell's seeds themselves; expected seed_splits=1"
        )
    if leader:
        store.write_manifest(_manifest(sweep, cells))
    done = [store.is_done(c.id) for c in mine]
    if multi:
        from jax.experimental import multihost_utils

        done = [bool(d) for d in multihost_utils.broadcast_one_to_all(np.asarray(done, dtype=bool))]
    for cell, is_done in zip(mine, done, strict=True):
        unidentified = unidentified_callables(cell.description) if is_done else []
        if unidentified:
            raise unidentified_error(
                f"run_sweep: cell {cell.name!r} is done in {str(store.root)!r}",
                unidentified,
                "Its results may come from other functions of the same names, so it is neither skipped nor run again.",
            )
    report = SweepReport([], [], {})
    bar = tqdm(total=len(mine), disable=not progress, desc=f"sweep {shard}", unit="cell")
    try:
        for cell, is_done in zip(mine, done, strict=True):
            bar.set_postfix_str(cell.name, refresh=True)
            if is_done:
                report.skipped.append(cell.name)
            else:
                release_compiled_programs()  # a long sweep would otherwise exhaust the process's memory maps
                error = _run_cell(
                    cell, store, shard, progress, sweep.checkpoints, keep_checkpoints, on_block, multi, leader
                )
                if error is None:
                    report.ran.append(cell.name)
                else:
                    report.failed[cell.name] = error
            bar.update(1)
    finally:
        bar.close()
    return report


def _manifest(sweep: Sweep, cells: Sequence[Cell]) -> dict[str, Any]:
    return {
        "rounds": sweep.rounds,
        "seeds": sweep.seeds,
        "eval_every": sweep.eval_every,
        "key": int(sweep.key),
        "seed_splits": sweep.seed_splits,
        "grid": describe(dict(sweep.grid)),
        "cells": [c.summary() for c in cells],
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _run_cell(cell, store, shard, progress, checkpoints, keep_checkpoints, on_block, multi, leader) -> str | None:
    previous = store.record(cell.id) if leader else None
    record = {
        **cell.summary(),
        "config": cell.description,
        "status": "running",
        "error": None,
        "attempts": (previous or {}).get("attempts", 0) + 1,
        "wall_seconds": (previous or {}).get("wall_seconds", 0.0),
        "shard": str(shard),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "processes": jax.process_count(),
        "started": _now(),
        "finished": None,
    }
    if multi:
        checkpoint_dir = store.checkpoint_dir(cell.id) / f"process_{jax.process_index()}"
    else:
        checkpoint_dir = store.checkpoint_dir(cell.id)
    record["resumed_from"] = checkpointed_rounds(checkpoint_dir)
    if leader:
        store.write_record(cell.id, record)
    callback = None if on_block is None else functools.partial(on_block, cell)
    start = time.perf_counter()
    try:
        if multi:
            from cdb.distributed import run as runner
        else:
            runner = None
        results = cell.run(
            checkpoint_dir=checkpoint_dir if checkpoints else None, progress=progress, on_block=callback, runner=runner
        )
        if cell.postprocess is not None:
            results = cell.postprocess(results)
        if leader:
            store.save_results(cell.id, results)
    except BaseException as error:  # recorded, then re-raised unless an ordinary exception
        record.update(
            status="failed",
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(limit=8),
            wall_seconds=record["wall_seconds"] + time.perf_counter() - start,
            finished=_now(),
        )
        if leader:
            store.write_record(cell.id, record)
        if not isinstance(error, Exception):
            raise
        return record["error"]
    record.update(status="done", wall_seconds=record["wall_seconds"] + time.perf_counter() - start, finished=_now())
    if leader:
        store.write_record(cell.id, record)
    if not keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return None


# ---------------------------------------------------------------------------------------------
# summaries


@dataclasses.dataclass(frozen=True)
class Target:
    """Queries until ``metric`` first reaches ``value`` (``direction`` ``below`` or ``above``)."""

    metric: str
    value: float
    direction: str = "below"

    @classmethod
    def parse(cls, text: str | Target) -> Target:
        """``metric<=value``, ``metric>=value``, or ``metric=value`` (below for ``*regret*``, else above)."""
        if isinstance(text, Target):
            return text
        match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|=)\s*([-+0-9.eE]+)\s*", str(text))
        try:
            value = float(match.group(3)) if match else None
        except ValueError:
            value = None
        if match is None or value is None:
            raise ValueError(
                f"target={text!r} is not allowed; expected METRIC<=VALUE, METRIC>=VALUE or METRIC=VALUE, "
                "e.g. 'bai_regret<=0.01'"
            )
        op = match.group(2)
        direction = {"<=": "below", ">=": "above"}.get(op, "below" if "regret" in match.group(1) else "above")
        return cls(match.group(1), value, direction)

    @property
    def label(self) -> str:
        return f"queries to {self.metric} {'<=' if self.direction == 'below' else '>='} {self.value:g}"


@dataclasses.dataclass
class Summary:
    """One row per experiment of a store (seed ranges merged), with merged ``Results``.

    ``frame`` is a ``pandas.DataFrame`` with ``experiment``, ``env``, ``agent``, one column per
    hyper-parameter, ``status`` (``done``, ``missing``, ``running``, ``failed``, or ``partial``
    when only some seed ranges are done), ``seeds``, ``wall_seconds``, and for each metric
    ``<metric>`` and ``<metric> se`` (the last value's mean and standard error over seeds) and
    for each target ``<label>``, ``<label> se`` and ``<label> reached``.
    """

    frame: Any
    results: dict[str, Results]
    target_queries: dict[tuple[str, str], TargetQueries]
    metrics: list[str]
    targets: list[Target]
    param_names: list[str]
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Experiments without complete results."""
        return [e for e, s in zip(self.frame["experiment"], self.frame["status"], strict=True) if s != "done"]

    def rows(self, decimals: Mapping[str, int] | None = None) -> list[dict[str, str]]:
        """Formatted rows: ``mean ± s.e.`` per metric (2 decimals for ``cumulative_*``, else 3,
        unless ``decimals`` says otherwise), queries to each target as ``mean ± s.e. (k/n seeds reached)``."""
        decimals = dict(decimals or {})
        out = []
        for _, row in self.frame.iterrows():
            text = {"experiment": row["experiment"], "env": row["env"], "agent": row["agent"]}
            params = self.params.get(row["experiment"], {})
            text.update({p: _fmt_param(params.get(p)) for p in self.param_names})
            text.update(status=row["status"], seeds=str(row["seeds"]), seconds=f"{row['wall_seconds']:.1f}")
            for metric in self.metrics:
                places = decimals.get(metric, 2 if metric.startswith("cumulative_") else 3)
                mean, se = row[metric], row[f"{metric} se"]
                text[metric] = "" if np.isnan(mean) else f"{mean:.{places}f} ± {se:.{places}f}"
            for target in self.targets:
                hit = self.target_queries.get((row["experiment"], target.label))
                text[target.label] = "" if hit is None else str(hit)
            out.append(text)
        return out

    def markdown(self, decimals: Mapping[str, int] | None = None) -> str:
        from cdb.report import markdown_table

        columns = ["env", "agent", *self.param_names, "status", "seeds", "seconds", *self.metrics]
        columns += [t.label for t in self.targets]
        return markdown_table(self.rows(decimals), columns)

    def plot(self, metrics: Sequence[str] | None = None, *, x: str = "round"):
        """One panel per (metric, environment), one mean ± s.e. curve per experiment; returns the figure."""
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing left open

        metrics = list(metrics or self.metrics)
        envs = list(dict.fromkeys(self.frame["env"]))
        fig = Figure(figsize=(5.5 * len(envs), 3.5 * len(metrics)))
        axes = fig.subplots(len(metrics), len(envs), squeeze=False)
        labels = dict(zip(self.frame["experiment"], self.frame["label"], strict=True))
        for row, metric in enumerate(metrics):
            for col, env in enumerate(envs):
                ax = axes[row, col]
                for experiment, res in self.results.items():
                    if experiment.split("/", 1)[0] == env:
                        try:
                            res.plot(metric, x=x, ax=ax, label=labels[experiment])
                        except KeyError:
                            continue
                ax.set_title(f"{env}: {metric.replace('_', ' ')}", fontsize=10)
        fig.tight_layout()
        return fig

    def write(self, out: str | os.PathLike, *, plot_metrics: Sequence[str] | None = None, stem: str = "summary"):
        """Writes ``<stem>.md`` (the table), ``<stem>.csv`` (the numbers) and ``<stem>.png`` (the curves)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.md").write_text(self.markdown() + "\n")
        self.frame.to_csv(out / f"{stem}.csv", index=False)
        if self.results:
            self.plot(plot_metrics).savefig(out / f"{stem}.png", dpi=120)
        return [out / f"{stem}.{ext}" for ext in ("md", "csv", "png")]


def _fmt_param(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def merge_seeds(parts: Sequence[Results]) -> Results:
    """Concatenates ``Results`` of consecutive seed ranges of one experiment along the seed axis.

    The config is the first part's with ``seed_range`` covering all parts, so the parts of a
    ``seeds``-seed run give exactly the ``Results`` of the whole run.
    """
    if not parts:
        raise ValueError("merge_seeds: parts=[] is not allowed; expected at least one Results")
    first = parts[0]
    if len(parts) == 1:
        return first
    for p in parts[1:]:
        if sorted(p.metrics) != sorted(first.metrics) or not np.array_equal(p.eval_rounds, first.eval_rounds):
            raise ValueError("merge_seeds: the parts have different metrics or evaluation rounds")
    config = dict(first.config)
    ranges = [p.config.get("seed_range") for p in parts]
    if all(r is not None for r in ranges):
        for (_, stop), (start, _) in itertools.pairwise(ranges):
            if stop != start:
                raise ValueError(f"merge_seeds: seed ranges {ranges} are not consecutive")
        config["seed_range"] = [ranges[0][0], ranges[-1][1]]
    return Results(
        {k: np.concatenate([p.metrics[k] for p in parts]) for k in first.metrics},
        np.asarray(first.eval_rounds),
        {k: np.concatenate([p.eval_metrics[k] for p in parts]) for k in first.eval_metrics},
        config,
    )


def summarize(
    store: Store | str | os.PathLike,
    sweep: Sweep | None = None,
    *,
    metrics: Sequence[str] | None = None,
    targets: Sequence[Target | str] = (),
) -> Summary:
    """The table of a store: one row per experiment, its seed ranges merged.

    The experiments listed are ``sweep``'s cells when given, else those of the store's manifest
    (the last sweep run into it) and the cells recorded there of any other experiment. ``metrics`` default to
    ``cumulative_regret`` and, where recorded, ``bai_regret``; ``targets`` (``Target`` or
    strings such as ``"bai_regret<=0.01"``) add queries-to-target columns
    (:func:`cdb.queries_to_target`: mean ± s.e. over the seeds that reached it).
    """
    import pandas as pd

    store = store if isinstance(store, Store) else Store(store)
    targets = [Target.parse(t) for t in targets]
    index = store.index()
    if sweep is not None:
        expected = [c.summary() for c in sweep.cells()]
    else:
        manifest = store.manifest()
        expected = list(manifest["cells"]) if manifest else []
        # a recorded cell of an experiment the manifest lists under other ids ran with another
        # configuration (an older sweep file, or an older description of the same one): left out
        listed = {c["experiment"] for c in expected}
        expected += [
            {k: r[k] for k in ("id", "name", "experiment", "env", "agent", "params", "seeds", "seed_range")}
            for cid, r in index.items()
            if r["experiment"] not in listed
        ]
    if not expected:
        raise ValueError(f"summarize: the store {str(store.root)!r} holds no cells and no sweep was given")
    experiments: dict[str, list[dict]] = {}
    for cell in expected:
        experiments.setdefault(cell["experiment"], []).append(cell)
    results: dict[str, Results] = {}
    rows = []
    param_names: list[str] = []
    for cells in experiments.values():
        for p in cells[0]["params"]:
            if p not in param_names:
                param_names.append(p)
    for experiment, cells in experiments.items():
        cells = sorted(cells, key=lambda c: c["seed_range"][0])
        records = [index.get(c["id"]) for c in cells]
        statuses = ["missing" if r is None else r["status"] for r in records]
        done = [s == "done" and store.results_path(c["id"]).exists() for s, c in zip(statuses, cells, strict=True)]
        if all(done):
            status = "done"
        elif any(done):
            status = "partial"
        else:
            status = next((s for s in ("failed", "running") if s in statuses), "missing")
        first = cells[0]
        params = first["params"]
        row = {
            "experiment": experiment,
            "env": first["env"],
            "agent": first["agent"],
            "label": first["agent"] + ("" if not params else " " + ",".join(f"{k}={v}" for k, v in params.items())),
            **{p: params.get(p) for p in param_names},
            "status": status,
            "seeds": 0,
            "wall_seconds": float(sum(r["wall_seconds"] for r in records if r is not None)),
        }
        res = merge_seeds([store.load_results(c["id"]) for c in cells]) if status == "done" else None
        if res is not None:
            results[experiment] = res
            row["seeds"] = res.num_seeds
        rows.append((row, res))
    if metrics is None:
        metrics = ["cumulative_regret"]
        if any("bai_regret" in r.eval_metrics for r in results.values()):
            metrics.append("bai_regret")
    metrics = list(metrics)
    target_queries: dict[tuple[str, str], TargetQueries] = {}
    table = []
    for row, res in rows:
        for metric in metrics:
            mean, se = _final(res, metric)
            row[metric], row[f"{metric} se"] = mean, se
        for target in targets:
            hit = None
            if res is not None:
                hit = _target(res, target)
                if hit is not None:
                    target_queries[row["experiment"], target.label] = hit
            row[target.label] = np.nan if hit is None else hit.mean
            row[f"{target.label} se"] = np.nan if hit is None else hit.stderr
            row[f"{target.label} reached"] = np.nan if hit is None else hit.reached
        table.append(row)
    frame = pd.DataFrame(table)
    params = {row["experiment"]: {p: row[p] for p in param_names if row[p] is not None} for row in table}
    return Summary(frame, results, target_queries, metrics, targets, param_names, params)


def _final(res: Results | None, metric: str) -> tuple[float, float]:
    if res is None:
        return float("nan"), float("nan")
    try:
        return res.final(metric)
    except KeyError:
        return float("nan"), float("nan")


def _target(res: Results, target: Target) -> TargetQueries | None:
    try:
        return queries_to_target(res, target.metric, target.value, target.direction)
    except KeyError:
        return None


# ---------------------------------------------------------------------------------------------
# configuration files and the command line


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Runs a Python sweep file and returns its ``SWEEP`` (a :class:`Sweep`)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"sweep config={str(path)!r} is not allowed; expected an existing .py file defining SWEEP")
    namespace = runpy.run_path(str(path), run_name=f"{SWEEP_FILE_MODULE}{_slug(path.stem)}")
    sweep = namespace.get("SWEEP")
    if not isinstance(sweep, Sweep):
        raise ValueError(
            f"sweep config={str(path)!r} defines SWEEP={type(sweep).__name__ if sweep is not None else 'nothing'}; "
            "expected SWEEP = cdb.sweep.Sweep(agents=..., envs=..., rounds=...)"
        )
    return sweep


def default_store(config: str | os.PathLike) -> Path:
    """``results/sweeps/<config file stem>``, where ``run`` writes without ``--store``."""
    return Path("results") / "sweeps" / Path(config).stem


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdb.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="run a sweep (or one shard of it) into a store")
    run_p.add_argument("config", help="a Python file defining SWEEP = cdb.sweep.Sweep(...)")
    run_p.add_argument("--store", help="results folder (default: results/sweeps/<config stem>)")
    run_p.add_argument("--shard", default=None, help="i/n: run only the cells j with j mod n == i")
    run_p.add_argument("--keep-checkpoints", action="store_true", help="keep a done cell's checkpoints")
    run_p.add_argument("--no-progress", action="store_true")
    run_p.add_argument("--coordinator", help="jax.distributed coordinator HOST:PORT (with the next two)")
    run_p.add_argument("--num-processes", type=int)
    run_p.add_argument("--process-id", type=int)
    run_p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() from the scheduler")
    sum_p = commands.add_parser("summary", help="print the table of a store and write its plots")
    sum_p.add_argument("source", help="a store folder, or a sweep config (then --store or its default store)")
    sum_p.add_argument("--store", help="results folder when SOURCE is a config")
    sum_p.add_argument("--metric", action="append", help="metric for 'final' columns (repeatable)")
    sum_p.add_argument("--target", action="append", default=[], help="METRIC<=V or METRIC>=V (repeatable)")
    sum_p.add_argument("--out", help="where to write summary.{md,csv,png} (default: the store)")
    args = parser.parse_args(argv)

    if args.command == "run":
        if args.coordinator or args.num_processes is not None or args.process_id is not None:
            if args.coordinator is None or args.num_processes is None or args.process_id is None:
                parser.error("--coordinator, --num-processes and --process-id go together")
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        elif args.distributed:
            jax.distributed.initialize()
        sweep = load_sweep(args.config)
        store = Store(args.store or default_store(args.config))
        report = run_sweep(
            sweep, store, shard=args.shard, progress=not args.no_progress, keep_checkpoints=args.keep_checkpoints
        )
        print(report)
        print(f"store: {store.root}")
        return 1 if report.failed else 0

    source = Path(args.source)
    if source.is_dir():
        sweep, store = None, Store(source)
    else:
        sweep = load_sweep(source)
        store = Store(args.store or default_store(source))
    if not store.root.is_dir():
        raise SystemExit(f"summary: store {str(store.root)!r} does not exist; run the sweep first")
    summary = summarize(store, sweep, metrics=args.metric, targets=args.target)
    print(summary.markdown())
    if summary.missing:
        print(f"\n{len(summary.missing)} experiments without complete results: {', '.join(summary.missing)}")
    paths = summary.write(args.out or store.root)
    print(f"\nwrote {', '.join(str(p) for p in paths if p.exists())}")
    return 0


if __name__ == "__main__":
    # ``python -m cdb.sweep`` runs this file as ``__main__``; a config's ``cdb.sweep.Sweep`` is the
    # class of the imported module, so the command line runs that module's ``main``
    from cdb.sweep import main as _main

    sys.exit(_main())
