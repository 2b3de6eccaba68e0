"""Running a sweep into a store: :func:`run_sweep`, the :class:`Shard` of the cells one job runs,
and the :class:`SweepReport` of what ran.

Each cell runs ``cdb.run(..., checkpoint_dir=<cell>/checkpoints, resume=True)`` and writes its
record (:mod:`cdb.store`): ``running`` while it runs, then ``done`` with its results or
``failed`` with the error. Running a sweep again skips ``done`` cells and resumes the others from
their last checkpoint, which gives the same results as an uninterrupted run. A failed cell does
not stop the sweep; it is recorded and reported at the end. While a cell runs, its rounds are
logged to ``<cell>/log.jsonl`` (:class:`cdb.loggers.JSONLLogger`) and to the loggers the
caller's ``logger_factory`` builds for it.

``--shard i/n`` runs the cells ``j`` with ``j mod n == i`` of the cell list sorted by name, so
``n`` jobs of a scheduler's job array run disjoint parts into one store. With ``jax.distributed``
initialised, every process runs every cell on its own contiguous slice of the seeds
(:mod:`cdb.distributed`), the slices are gathered, and process 0 writes the store.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from cdb.config import describe, digest, unidentified_callables, unidentified_error
from cdb.loggers import JSONLLogger, Logger, TensorBoardLogger, WandbLogger, check_loggers, require
from cdb.results import Results
from cdb.store import Store, checkpointed_rounds
from cdb.sweep.grid import Cell, Sweep, slug
from cdb.xla_options import release_compiled_programs

#: ``logger_factory(cell_name, cell_description) -> [Logger, ...]``: a cell's own loggers.
LoggerFactory = Callable[[str, dict[str, Any]], Sequence[Logger]]


def tensorboard_per_cell(root: str | os.PathLike) -> LoggerFactory:
    """A ``logger_factory`` giving each cell a :class:`cdb.loggers.TensorBoardLogger` in
    ``root/<cell name>`` (each part of the name a folder), so ``tensorboard --logdir root`` shows
    one run per cell, named after it (with several ``jax.distributed`` processes, one run per
    process in ``<cell name>/process_<p>``, each of that process's seeds)."""
    require("tensorboardX", "tensorboard", "tensorboard_per_cell")
    root = Path(root)

    def build(name: str, description: dict[str, Any]) -> list[Logger]:
        logdir = root.joinpath(*(slug(part) for part in name.split("/")))
        if jax.process_count() > 1:
            logdir = logdir / f"process_{jax.process_index()}"
        return [TensorBoardLogger(logdir)]

    return build


def wandb_per_cell(project: str | None = None, **init_kwargs: Any) -> LoggerFactory:
    """A ``logger_factory`` giving each cell a :class:`cdb.loggers.WandbLogger` run in ``project``,
    named after the cell, with its environment, agent and hyper-parameters in the run's config, and
    the id ``cell-<the digest of the cell's description>`` (the end of its store folder's name), so
    that a resumed cell goes on in its W&B run (with several ``jax.distributed`` processes, one
    run per process, ``-p<p>`` added to its id and name, each of that process's seeds).
    ``init_kwargs`` go to ``wandb.init``."""
    require("wandb", "wandb", "wandb_per_cell")

    def build(name: str, description: dict[str, Any]) -> list[Logger]:
        config = {"cell": name, **{k: description[k] for k in ("env_name", "agent_name", "params")}}
        run_id = f"cell-{digest(description)[:12]}"
        if jax.process_count() > 1:
            run_id, name = f"{run_id}-p{jax.process_index()}", f"{name}-p{jax.process_index()}"
        return [WandbLogger(project, name=name, id=run_id, config=config, **init_kwargs)]

    return build


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


@dataclasses.dataclass(frozen=True)
class _Options:
    """What every cell of one ``run_sweep`` call is run with."""

    store: Store
    shard: Shard
    progress: bool
    checkpoints: bool
    keep_checkpoints: bool
    on_block: Callable[[Cell, int, Results], None] | None
    logger_factory: LoggerFactory | None
    jsonl: bool
    multi: bool
    leader: bool


def run_sweep(
    sweep: Sweep,
    store: Store | str | os.PathLike,
    *,
    shard: Shard | str | None = None,
    progress: bool = True,
    keep_checkpoints: bool = False,
    on_block: Callable[[Cell, int, Results], None] | None = None,
    logger_factory: LoggerFactory | None = None,
    jsonl: bool = True,
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

    Logging: with ``jsonl`` each cell's rounds and evaluations go to ``<cell>/log.jsonl``
    (:meth:`cdb.store.Store.log_path`; a resumed cell appends to it without repeating a round),
    and ``logger_factory(cell.name, cell.description)`` (e.g. a W&B run per cell, named after the
    cell, with its description as the run's config) gives each cell further
    :class:`cdb.loggers.Logger` s. A cell's loggers are built when it starts and closed when it
    ends, failed or not; a factory that raises, or returns something that is not a list of
    loggers, fails that cell before it compiles anything. :func:`tensorboard_per_cell` and
    :func:`wandb_per_cell` build such factories. With several ``jax.distributed`` processes the
    factory is called in each, and each process's loggers get that process's seeds.

    With ``jax.distributed`` initialised over several processes, every process must call this
    with the same arguments: each cell's seeds are split across the processes
    (:func:`cdb.distributed.run`), and process 0 alone writes the store (each process logs its
    own seeds, to ``log.process_<p>.jsonl``). Which cells are done is process 0's view,
    broadcast to the others. A cell that fails in only some processes leaves the others waiting
    in the gather (a collective has no timeout of its own); the scheduler's time limit ends
    them, and the next run resumes from the checkpoints.
    """
    store = store if isinstance(store, Store) else Store(store)
    shard = Shard.parse(shard)
    if logger_factory is not None and not callable(logger_factory):
        raise ValueError(
            f"run_sweep: logger_factory={logger_factory!r} is not allowed; expected a callable "
            "(cell_name, cell_description) -> list of loggers, or None"
        )
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
    options = _Options(
        store, shard, progress, sweep.checkpoints, keep_checkpoints, on_block, logger_factory, jsonl, multi, leader
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
                error = _run_cell(cell, options)
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


def _cell_loggers(cell: Cell, options: _Options) -> list[Logger]:
    """The cell's loggers: its JSONL log in the store, then the factory's."""
    loggers: list[Logger] = []
    if options.jsonl:
        process = jax.process_index() if options.multi else None
        loggers.append(JSONLLogger(options.store.log_path(cell.id, process=process)))
    if options.logger_factory is not None:
        made = options.logger_factory(cell.name, cell.description)
        loggers += check_loggers(made, where=f"run_sweep: logger_factory({cell.name!r}, ...)")
    return loggers


def _run_cell(cell: Cell, options: _Options) -> str | None:
    store, leader = options.store, options.leader
    previous = store.record(cell.id) if leader else None
    record = {
        **cell.summary(),
        "config": cell.description,
        "status": "running",
        "error": None,
        "attempts": (previous or {}).get("attempts", 0) + 1,
        "wall_seconds": (previous or {}).get("wall_seconds", 0.0),
        "shard": str(options.shard),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "processes": jax.process_count(),
        "started": _now(),
        "finished": None,
    }
    checkpoint_dir = store.checkpoint_dir(cell.id)
    if options.multi:
        checkpoint_dir = checkpoint_dir / f"process_{jax.process_index()}"
    record["resumed_from"] = checkpointed_rounds(checkpoint_dir)
    if leader:
        store.write_record(cell.id, record)
    callback = None if options.on_block is None else functools.partial(options.on_block, cell)
    start = time.perf_counter()
    try:
        if options.multi:
            from cdb.distributed import run as runner
        else:
            runner = None
        results = cell.run(
            checkpoint_dir=checkpoint_dir if options.checkpoints else None,
            progress=options.progress,
            on_block=callback,
            loggers=_cell_loggers(cell, options),
            runner=runner,
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
    if not options.keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return None
