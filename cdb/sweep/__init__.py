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

and is run and summarised from the shell (:mod:`cdb.sweep.__main__`)::

    python -m cdb.sweep run sweeps/linear.py --store results/linear [--shard 0/4]
    python -m cdb.sweep summary results/linear --target 'bai_regret<=0.01'

or from Python: ``run_sweep(SWEEP, "results/linear")`` then ``summarize("results/linear")``.

The package holds one job per module:

* :mod:`cdb.sweep.grid` — :class:`Sweep`, its expansion into :class:`Cell` s (a cell is one
  environment × agent × the hyper-parameters its factories name, × a seed range with
  ``seed_splits``; its id digests its :func:`cdb.config.describe` description, so the same
  content gives the same id in every process and a changed lambda makes a new cell), and
  :func:`load_sweep`, which reads a sweep file. A cell whose configuration holds a callable that
  can be described neither by its name nor by its code runs, but is never taken as done or
  resumed (name it with :func:`cdb.config.named`).
* :mod:`cdb.sweep.execute` — :func:`run_sweep`: each cell a ``cdb.run`` into the store
  (:class:`cdb.store.Store`: results, orbax checkpoints while running, a record, a JSONL log),
  done cells skipped, interrupted ones resumed with the same results as an uninterrupted run,
  failed ones recorded; :class:`Shard` (``--shard i/n``) deals the cells to the jobs of a
  scheduler's job array; with ``jax.distributed``, every process runs a slice of every cell's
  seeds. Each cell's rounds are logged to its folder as they run (``log.jsonl``), and to the
  loggers a ``logger_factory`` builds for it (:func:`tensorboard_per_cell`, :func:`wandb_per_cell`).
* :mod:`cdb.sweep.summary` — :func:`summarize`: one row per experiment (seed ranges merged by
  :meth:`cdb.Results.merge_seeds`), final values as mean ± s.e., queries to each :class:`Target`
  (:class:`cdb.metrics.Target`, re-exported here), and the curves.
* :mod:`cdb.sweep.__main__` — the command line.
"""

from cdb.metrics import Target
from cdb.sweep.execute import LoggerFactory, Shard, SweepReport, run_sweep, tensorboard_per_cell, wandb_per_cell
from cdb.sweep.grid import Cell, Sweep, load_sweep
from cdb.sweep.summary import Summary, summarize

__all__ = [
    "Cell",
    "LoggerFactory",
    "Shard",
    "Summary",
    "Sweep",
    "SweepReport",
    "Target",
    "load_sweep",
    "run_sweep",
    "summarize",
    "tensorboard_per_cell",
    "wandb_per_cell",
]
