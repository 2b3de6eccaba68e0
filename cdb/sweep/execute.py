"""Running a sweep into a store: :func:`run_sweep`, the :class:`Shard` of the cells one job runs,
and the :class:`SweepReport` of what ran.

Each cell runs ``cdb.run(..., checkpoint_dir=<cell>/checkpoints, resume=True)`` and writes its
record (:mod:`cdb.store`): ``running`` while it runs, then ``done`` with its results or
``failed`` with the error. Running a sweep again skips ``done`` cells and resumes the others from
their last checkpoint, which gives the same results as an uninterrupted run. A failed cell does
not stop the sweep; it is recorded and reported at the end.

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
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from cdb.config import describe, unidentified_callables, unidentified_error
from cdb.results import Results
from cdb.store import Store, checkpointed_rounds
from cdb.sweep.grid import Cell, Sweep
from cdb.xla_options import release_compiled_programs


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
    (:func:`cdb.distributed.run`), and process 0 alone writes the store. Which cells are done is process 0's view,
    broadcast to the others. A cell that fails in only some processes leaves the others waiting
    in the gather (a collective has no timeout of its own); the scheduler's time limit ends
    them, and the next run resumes from the checkpoints.
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
    options = _Options(store, shard, progress, sweep.checkpoints, keep_checkpoints, on_block, multi, leader)
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
