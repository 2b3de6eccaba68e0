"""A sweep's definition: :class:`Sweep` (agents × environments × hyper-parameters × seeds), its
expansion into :class:`Cell` s, and :func:`load_sweep`, which reads a sweep file.

An agent or environment is either an object or a factory (any callable that is not an agent /
environment). Factories are called with the keyword arguments they name among the grid's
hyper-parameters; an agent factory may also name ``env`` (the cell's environment object) and
``env_name``. A cell is one (environment, agent, hyper-parameters that its factories use) triple;
an agent that takes no hyper-parameter gives one cell per environment, not one per grid point.
With ``seed_splits=n`` a cell's ``seeds`` are cut into ``n`` contiguous ranges, each its own cell.

Each cell has a readable name (``env/agent/param=value,…[/seeds=a:b]``) and an id: the name's
slug and a SHA-256 digest (:func:`cdb.config.digest`) of the cell's description
(:func:`cdb.config.describe` of the agent, the environment, the hyper-parameters and the run's
settings), so the same content gives the same id in every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import re
import runpy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdb.config import SWEEP_FILE_MODULE, describe, digest
from cdb.results import Results

#: Names an agent factory may take besides the grid's keys (the cell's environment and its name).
RESERVED = ("env", "env_name")

#: ``cdb.run`` arguments that a sweep sets for each cell; ``Sweep.run_options`` may not hold them.
MANAGED_RUN_ARGS = (
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
    "loggers",
)


def slug(text: str, limit: int = 80) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._=-]`` replaced by ``_`` (a file name)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:limit]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
    """One experiment of a sweep: one ``cdb.run`` (or one seed range of it).

    Built by :meth:`Sweep.cells`; every field is passed by keyword. ``description`` is what the
    ``id`` digests and what the store's record keeps as ``config``.
    """

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

    def run(self, *, checkpoint_dir=None, progress: bool = False, on_block=None, loggers=(), runner=None) -> Results:
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
            loggers=loggers,
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
            if not isinstance(name, str) or not name.isidentifier() or name in RESERVED:
                raise ValueError(
                    f"Sweep: grid key {name!r} is not allowed; expected a Python identifier other than {RESERVED}"
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

        allowed = set(inspect.signature(run).parameters) - set(MANAGED_RUN_ARGS)
        unknown = sorted(set(self.run_options) - allowed)
        if unknown:
            raise ValueError(f"Sweep: run_options {unknown} are not allowed; expected keys among {sorted(allowed)}")
        if self.postprocess is not None and not callable(self.postprocess):
            raise ValueError(f"Sweep: postprocess={self.postprocess!r} is not allowed; expected a callable or None")

    def cells(self) -> list[Cell]:
        """Every cell, sorted by name (the order shards are dealt from)."""
        grid_keys = list(self.grid)
        points = [dict(zip(grid_keys, values, strict=True)) for values in itertools.product(*self.grid.values())]
        used_anywhere: set[str] = set()
        envs: dict[tuple, tuple[Any, set[str]]] = {}
        cells: dict[str, Cell] = {}
        for env_name, env_spec in self.envs.items():
            for agent_name, agent_spec in self.agents.items():
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
                    used = (env_used | agent_used) - set(RESERVED)
                    used_anywhere |= used
                    params = {k: point[k] for k in grid_keys if k in used}
                    for seed_range in _seed_ranges(self.seeds, self.seed_splits):
                        cell = self._cell(env_name, agent_name, params, agent, env, seed_range)
                        cells.setdefault(cell.id, cell)
        unused = [k for k in grid_keys if k not in used_anywhere]
        if unused:
            raise ValueError(
                f"Sweep: grid keys {unused} are named by no agent or environment factory; a factory takes a "
                "hyper-parameter as a keyword argument of the same name"
            )
        return sorted(cells.values(), key=lambda c: (c.name, c.id))

    def _cell(self, env_name, agent_name, params, agent, env, seed_range) -> Cell:
        experiment = f"{env_name}/{agent_name}"
        if params:
            experiment += "/" + ",".join(f"{k}={_short(v)}" for k, v in params.items())
        name = experiment if self.seed_splits == 1 else f"{experiment}/seeds={seed_range[0]}:{seed_range[1]}"
        run_options = dict(self.run_options)
        description = {
            "env_name": env_name,
            "agent_name": agent_name,
            "params": describe(params),
            "agent": describe(agent),
            "env": describe(env),
            "rounds": self.rounds,
            "seeds": self.seeds,
            "seed_range": list(seed_range),
            "eval_every": self.eval_every,
            "key": int(self.key),
            "run_options": describe(run_options),
            "postprocess": describe(self.postprocess),
        }
        return Cell(
            name=name,
            experiment=experiment,
            env_name=env_name,
            agent_name=agent_name,
            params=params,
            agent=agent,
            env=env,
            rounds=self.rounds,
            seeds=self.seeds,
            seed_range=seed_range,
            eval_every=self.eval_every,
            key=int(self.key),
            run_options=run_options,
            description=description,
            id=f"{slug(name)}-{digest(description)[:12]}",
            postprocess=self.postprocess,
        )


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


def _seed_ranges(seeds: int, splits: int) -> list[tuple[int, int]]:
    bounds = [round(i * seeds / splits) for i in range(splits + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(splits)]


def _short(value: Any) -> str:
    if isinstance(value, bool | int | float | str) or value is None:
        return str(value)
    text = json.dumps(describe(value), sort_keys=True, default=str)
    return text if len(text) <= 24 else hashlib.sha256(text.encode()).hexdigest()[:8]


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Runs a Python sweep file and returns its ``SWEEP`` (a :class:`Sweep`)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"sweep config={str(path)!r} is not allowed; expected an existing .py file defining SWEEP")
    namespace = runpy.run_path(str(path), run_name=f"{SWEEP_FILE_MODULE}{slug(path.stem)}")
    sweep = namespace.get("SWEEP")
    if not isinstance(sweep, Sweep):
        raise ValueError(
            f"sweep config={str(path)!r} defines SWEEP={type(sweep).__name__ if sweep is not None else 'nothing'}; "
            "expected SWEEP = cdb.sweep.Sweep(agents=..., envs=..., rounds=...)"
        )
    return sweep
