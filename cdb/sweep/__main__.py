"""The command line of :mod:`cdb.sweep`::

    python -m cdb.sweep run CONFIG [--store DIR] [--shard i/n] [--keep-checkpoints] [--no-progress]
                                   [--tensorboard DIR] [--wandb PROJECT]
    python -m cdb.sweep summary (DIR | CONFIG [--store DIR]) [--metric M] [--target 'bai_regret<=0.01'] [--out DIR]

``run`` takes a Python file defining ``SWEEP = cdb.sweep.Sweep(...)``; ``--coordinator``,
``--num-processes`` and ``--process-id`` (or ``--distributed``, for a scheduler JAX detects)
initialise ``jax.distributed`` first; every cell's rounds go to ``log.jsonl`` in its store folder,
and with ``--tensorboard`` / ``--wandb`` to TensorBoard (one run per cell) and W&B too.
``summary`` prints the table and writes ``summary.{md,csv,png}`` to ``--out`` (default: the store).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cdb.store import Store
from cdb.sweep.execute import LoggerFactory, run_sweep, tensorboard_per_cell, wandb_per_cell
from cdb.sweep.grid import load_sweep
from cdb.sweep.summary import summarize


def default_store(config: str | os.PathLike) -> Path:
    """``results/sweeps/<config file stem>``, where ``run`` writes without ``--store``."""
    return Path("results") / "sweeps" / Path(config).stem


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m cdb.sweep", description="Run a sweep of cdb experiments into a store, or summarise a store."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="run a sweep (or one shard of it) into a store")
    run_p.add_argument("config", help="a Python file defining SWEEP = cdb.sweep.Sweep(...)")
    run_p.add_argument("--store", help="results folder (default: results/sweeps/<config stem>)")
    run_p.add_argument("--shard", default=None, help="i/n: run only the cells j with j mod n == i")
    run_p.add_argument("--keep-checkpoints", action="store_true", help="keep a done cell's checkpoints")
    run_p.add_argument("--no-progress", action="store_true")
    run_p.add_argument("--tensorboard", metavar="DIR", help="also log each cell to TensorBoard in DIR/<cell name>")
    run_p.add_argument("--wandb", metavar="PROJECT", help="also log each cell to a W&B run in PROJECT")
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
        return _run(parser, args)
    return _summary(args)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import jax

    if args.coordinator or args.num_processes is not None or args.process_id is not None:
        if args.coordinator is None or args.num_processes is None or args.process_id is None:
            parser.error("--coordinator, --num-processes and --process-id go together")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()
    factories = []
    if args.tensorboard:
        factories.append(tensorboard_per_cell(args.tensorboard))
    if args.wandb:
        factories.append(wandb_per_cell(args.wandb))
    sweep = load_sweep(args.config)
    store = Store(args.store or default_store(args.config))
    report = run_sweep(
        sweep,
        store,
        shard=args.shard,
        progress=not args.no_progress,
        keep_checkpoints=args.keep_checkpoints,
        logger_factory=_chain(factories) if factories else None,
    )
    print(report)
    print(f"store: {store.root}")
    return 1 if report.failed else 0


def _chain(factories: list[LoggerFactory]) -> LoggerFactory:
    """One ``logger_factory`` giving each cell the loggers of every factory in ``factories``."""
    return lambda name, description: [logger for make in factories for logger in make(name, description)]


def _summary(args: argparse.Namespace) -> int:
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
    sys.exit(main())
