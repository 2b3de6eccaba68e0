"""A results store: one folder per experiment cell, each with its ``Results``, checkpoints and a record.

Layout of a store directory::

    DIR/sweep.json                      # the cells of the last sweep run into DIR (names, ids, configs)
    DIR/cells/<cell id>/record.json     # the cell's index entry (below), replaced atomically
    DIR/cells/<cell id>/results.npz     # its ``cdb.Results`` (``Results.save``) once it is done
    DIR/cells/<cell id>/checkpoints/    # orbax checkpoints while it runs (``cdb.run(checkpoint_dir=)``)
    DIR/cells/<cell id>/log.jsonl       # its rounds and evaluations as they ran (``cdb.loggers.JSONLLogger``)

A record is a JSON object: ``id``, ``name``, ``experiment`` (the name without the seed range),
``agent``, ``env``, ``params`` (the cell's hyper-parameters), ``seeds``, ``seed_range``,
``config`` (the cell's description), ``status`` (``running``, ``done`` or ``failed``), ``error``
(for ``failed``), ``wall_seconds`` (all attempts together), ``attempts``, ``resumed_from``
(rounds restored from a checkpoint by the last attempt), ``shard``, ``host``, ``pid``,
``started`` and ``finished`` (UTC, ISO 8601).

The index is one file per cell rather than one shared file so that processes running disjoint
shards into the same directory (a cluster job array on a shared file system) never write the
same file; each file is written to a temporary name, synced and renamed, so a reader never sees
half a record and a full disk never destroys one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cdb.atomic_write import write_atomic
from cdb.results import Results

STATUSES = ("running", "done", "failed")


def write_json_atomic(path: Path, value: Any) -> None:
    """Writes ``value`` as JSON to ``path``, whole or not at all (:func:`cdb.atomic_write.write_atomic`)."""
    text = json.dumps(value, indent=1, sort_keys=True, default=str) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


def checkpointed_rounds(directory: str | os.PathLike) -> int:
    """Rounds done in the latest checkpoint of a ``cdb.run(checkpoint_dir=)`` folder (0 if none):
    what a resumed run restores (each checkpoint's folder is named by its rounds and carries
    ``cdb.checkpoint``'s mark; other folders are not checkpoints)."""
    from cdb.checkpoint import is_run_checkpoint  # not at import: it imports orbax

    directory = Path(directory)
    if not directory.is_dir():
        return 0
    steps = (int(p.name) for p in directory.iterdir() if p.name.isdigit() and is_run_checkpoint(p))
    return max(steps, default=0)


class Store:
    """A results folder (see the module docstring for its layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"store: root={str(self.root)!r} exists and is not a directory")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def cell_dir(self, cell_id: str) -> Path:
        return self.root / "cells" / cell_id

    def record_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "record.json"

    def results_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "results.npz"

    def checkpoint_dir(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "checkpoints"

    def log_path(self, cell_id: str, *, process: int | None = None) -> Path:
        """The cell's JSONL log; ``process``: that ``jax.distributed`` process's log of its own seeds."""
        return self.cell_dir(cell_id) / ("log.jsonl" if process is None else f"log.process_{process}.jsonl")

    def record(self, cell_id: str) -> dict[str, Any] | None:
        """The cell's record, or ``None`` if the cell never started."""
        path = self.record_path(cell_id)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def write_record(self, cell_id: str, record: dict[str, Any]) -> None:
        if record.get("status") not in STATUSES:
            raise ValueError(f"store: status={record.get('status')!r} is not allowed; expected one of {STATUSES}")
        write_json_atomic(self.record_path(cell_id), record)

    def is_done(self, cell_id: str) -> bool:
        """The cell finished: its record says ``done`` and its results file exists."""
        record = self.record(cell_id)
        return record is not None and record["status"] == "done" and self.results_path(cell_id).exists()

    def index(self) -> dict[str, dict[str, Any]]:
        """Every cell record in the store, by cell id (sorted)."""
        cells = self.root / "cells"
        if not cells.is_dir():
            return {}
        out = {}
        for path in sorted(cells.glob("*/record.json")):
            out[path.parent.name] = json.loads(path.read_text())
        return out

    def save_results(self, cell_id: str, results: Results) -> Path:
        """Writes the cell's ``Results``, whole or not at all (``Results.save`` through a temporary file)."""
        return results.save(self.results_path(cell_id), overwrite=True)

    def load_results(self, cell_id: str) -> Results:
        return Results.load(self.results_path(cell_id))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.root / "sweep.json", manifest)

    def manifest(self) -> dict[str, Any] | None:
        path = self.root / "sweep.json"
        return json.loads(path.read_text()) if path.exists() else None
