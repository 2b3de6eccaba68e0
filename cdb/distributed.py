"""One experiment across processes with ``jax.distributed`` (docs/design.md §8: JAX's own multi-host runtime).

Every process calls :func:`run` with the same arguments after ``jax.distributed.initialize``.
Process ``p`` of ``n`` runs the contiguous seed slice :func:`seed_slice` ``(seeds, n, p)`` with
``cdb.run(seed_range=...)`` — exactly the per-seed keys of the one-process run — and the slices
are gathered with ``jax.experimental.multihost_utils.process_allgather`` (padded to equal
length, since the gather stacks one array per process), so every process returns the
``Results`` a one-process ``cdb.run`` gives.

Each process runs its seeds on its own devices with ``shard_seeds=False``: after
``jax.distributed.initialize``, ``jax.device_count()`` counts every process's devices, and
``cdb.run``'s seed sharding builds its mesh from that global count, which would make each block a
program over all processes' devices. Checkpoints (``checkpoint_dir``) go to one folder per process.

    # on each of N hosts (or N local processes with JAX_PLATFORMS=cpu):
    jax.distributed.initialize("10.0.0.1:1234", num_processes=N, process_id=i)
    results = cdb.distributed.run(agent, env, rounds=200, seeds=64)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from cdb.results import Results


def seed_slice(seeds: int, num_processes: int, process_id: int) -> tuple[int, int]:
    """Seeds ``[start, stop)`` of process ``process_id``: ``start = ⌊p·S/n⌉``, contiguous, sizes differ by ≤ 1."""
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} is out of range; expected 0 <= process_id < {num_processes}")
    if seeds < num_processes:
        raise ValueError(f"seeds={seeds} is out of range; expected at least one seed per process ({num_processes})")
    return round(process_id * seeds / num_processes), round((process_id + 1) * seeds / num_processes)


def run(agent: Any, env: Any, rounds: int, seeds: int = 1, **run_kwargs: Any) -> Results:
    """``cdb.run`` with the seeds split across the ``jax.distributed`` processes; every process
    returns the whole experiment's ``Results``.

    ``run_kwargs`` are ``cdb.run``'s (not ``seed_range`` or ``shard_seeds``). With one process
    this is ``cdb.run``.
    """
    from cdb.run import run as cdb_run

    for name in ("seed_range", "shard_seeds"):
        if run_kwargs.get(name) is not None:
            raise ValueError(
                f"distributed.run: {name}={run_kwargs[name]!r} is not allowed; the processes split the seeds"
            )
        run_kwargs.pop(name, None)
    n, p = jax.process_count(), jax.process_index()
    if n == 1:
        return cdb_run(agent, env, rounds, seeds, **run_kwargs)
    start, stop = seed_slice(seeds, n, p)
    if run_kwargs.get("checkpoint_dir") is not None and Path(run_kwargs["checkpoint_dir"]).name != f"process_{p}":
        run_kwargs["checkpoint_dir"] = Path(run_kwargs["checkpoint_dir"]) / f"process_{p}"
    part = cdb_run(agent, env, rounds, seeds, seed_range=(start, stop), shard_seeds=False, **run_kwargs)
    return gather(part, seeds)


def gather(part: Results, seeds: int) -> Results:
    """The whole experiment from each process's ``Results`` of its :func:`seed_slice` (a collective)."""
    from jax.experimental import multihost_utils

    n = jax.process_count()
    slices = [seed_slice(seeds, n, q) for q in range(n)]
    width = max(stop - start for start, stop in slices)

    def pad(x):
        x = np.asarray(x)
        return np.concatenate([x, np.repeat(x[-1:], width - x.shape[0], axis=0)]) if x.shape[0] < width else x

    local = {
        "metrics": {k: pad(v) for k, v in part.metrics.items()},
        "eval": {k: pad(v) for k, v in part.eval_metrics.items()},
    }
    stacked = multihost_utils.process_allgather(local)  # every leaf [n, width, ...]

    def unpad(x):
        x = np.asarray(x)
        return np.concatenate([x[q, : stop - start] for q, (start, stop) in enumerate(slices)])

    config = dict(part.config)
    config["seed_range"] = [0, seeds]
    return Results(
        {k: unpad(v) for k, v in stacked["metrics"].items()},
        np.asarray(part.eval_rounds),
        {k: unpad(v) for k, v in stacked["eval"].items()},
        config,
    )
