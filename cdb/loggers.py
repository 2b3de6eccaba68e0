"""Loggers: a run's per-round metrics and evaluations streamed while it runs, ``cdb.run(..., loggers=[...])``.

A logger is any object with four methods (:class:`Logger`)::

    open(config, start_round)        # before the first round is played
    log_rounds(rounds, metrics)      # rounds [n] (1-based), metrics {name: [seeds, n]}
    log_eval(round, metrics)         # after the evaluation at ``round``, metrics {name: [seeds]}
    close(error)                     # always: error is None on success, else the exception

``cdb.run`` calls ``log_rounds`` every round from the host loop (tier 3) and once per block of
``eval_every`` rounds from the compiled runner, then ``log_eval``, and only then saves the block's
checkpoint, so a log always holds every checkpointed round. Every round played is logged, the
rounds of a block in which the NaN guard stops the run included (JSON writes a non-finite value
as ``null``). ``close`` is called on success, on an error and on ``KeyboardInterrupt``.

**Resume.** A resumed run opens its loggers with ``start_round`` = the rounds restored from the
checkpoint: everything a log holds for rounds ``1..start_round`` (and the evaluations up to that
round) was written by the earlier run and stays; anything after it (rounds a crash left after the
last checkpoint) is dropped, and the resumed run writes it again, with the same values, since
resumed runs reproduce the uninterrupted run. ``start_round == 0`` is a new run: its log starts
afresh.

Built in, each checking at construction (before ``cdb.run`` compiles anything) that it can write
where it is told and that its library is installed:

* :class:`JSONLLogger` — one JSON line per round, flushed; always available.
* :class:`TensorBoardLogger` — TensorBoard event files through ``tensorboardX`` (no TensorFlow,
  no torch): ``pip install 'cdb-jax[tensorboard]'``.
* :class:`WandbLogger` — a Weights & Biases run: ``pip install 'cdb-jax[wandb]'``.

The three report each metric's mean over seeds (the JSONL log also each seed's values with
``per_seed=True``), under the metric's name for rounds and under ``eval/<name>`` for
evaluations (the JSONL log: under ``"metrics"`` and ``"eval"``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cdb.atomic_write import write_atomic
from cdb.config import config_differences

_METHODS = ("open", "log_rounds", "log_eval", "close")


@runtime_checkable
class Logger(Protocol):
    """What ``cdb.run`` calls on each of its ``loggers`` (see the module docstring for when)."""

    def open(self, config: Mapping[str, Any], start_round: int) -> None:
        """The run's configuration (JSON, as ``Results.config``) and the rounds already logged by
        the run it resumes (0 for a new run)."""

    def log_rounds(self, rounds: np.ndarray, metrics: Mapping[str, np.ndarray]) -> None:
        """Rounds ``rounds`` ``[n]`` (1-based, consecutive), ``metrics[name]`` ``[seeds, n]``."""

    def log_eval(self, round: int, metrics: Mapping[str, np.ndarray]) -> None:
        """The evaluation after ``round`` rounds (0: before any), ``metrics[name]`` ``[seeds]``."""

    def close(self, error: BaseException | None = None) -> None:
        """The run ended: ``error`` is ``None`` on success, else what stopped it."""


def check_loggers(loggers: Any, *, where: str = "run") -> list[Logger]:
    """``loggers`` as a list, or a ``ValueError`` naming the item that is not a :class:`Logger`."""
    if loggers is None:
        return []
    if isinstance(loggers, str | bytes | Mapping) or not isinstance(loggers, Sequence):
        raise ValueError(
            f"{where}: loggers={loggers!r:.120} is not allowed; expected a list of loggers (cdb.loggers.Logger: "
            "JSONLLogger, TensorBoardLogger, WandbLogger or any object with open, log_rounds, log_eval and close)"
        )
    for i, logger in enumerate(loggers):
        missing = [m for m in _METHODS if not callable(getattr(logger, m, None))]
        if missing:
            raise ValueError(
                f"{where}: loggers[{i}]={logger!r:.120} is not a logger: it has no {missing}; expected an object with "
                "open(config, start_round), log_rounds(rounds, metrics), log_eval(round, metrics) and close(error)"
            )
    return list(loggers)


def kept(step: int, start_round: int) -> bool:
    """Whether a log's entry at ``step`` (a round, or an evaluation's round) written by an earlier
    run stays when a run opens the log at ``start_round``: the entries up to a resumed round do,
    nothing does for a new run (its round-0 evaluation comes again)."""
    return 0 < start_round and step <= start_round


def means(metrics: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each metric's mean over seeds (axis 0), in float64: ``[seeds, ...] -> [...]``."""
    return {name: np.asarray(values, dtype=np.float64).mean(axis=0) for name, values in metrics.items()}


def writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """Creates ``folder`` (and its parents) if needed and checks that files can be written in it;
    else a ``ValueError`` naming ``what``, the folder and what to do."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{what}: the folder {str(folder)!r} cannot be created ({type(err).__name__}: {err.strerror or err}); "
            "pass a path in a folder you can write"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: the folder {str(folder)!r} is not writable; pass a path in a folder you can write")
    return folder


def require(package: str, extra: str, what: str) -> types.ModuleType:
    """Imports ``package``, or an ``ImportError`` saying that ``what`` needs it and how to install it
    (``pip install 'cdb-jax[<extra>]'``)."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"{what} needs the {package!r} package, which is not installed; install it with "
            f"pip install 'cdb-jax[{extra}]' (or pip install {package})"
        ) from None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class JSONLLogger:
    """One JSON object per line, flushed after every call, so ``tail -f`` follows a run.

    The first line is ``{"config": <the run's configuration>}``; then, for each round ``t`` and
    each evaluation::

        {"round": t, "metrics": {"regret": 0.41, "queries": 2.0, ...}}
        {"round": t, "eval": {"bai_regret": 0.31, ...}}

    with each metric's mean over seeds, and with ``per_seed=True`` also
    ``"per_seed": {"regret": [0.2, 0.62, ...], ...}`` (a list over seeds) on each line. A value
    that is not finite is ``null``. ``pandas.read_json(path, lines=True)`` reads it.

    A resumed run (see :mod:`cdb.loggers`) keeps the file's lines up to the resumed round, drops
    the rest (a line half written by a crash too) and appends; the file must then hold the log
    of the same configuration (``rounds`` may differ), else a ``ValueError``. A new run
    (``start_round == 0``) replaces the file; a log first opened by a resumed run begins after
    the resumed round (the run's ``Results`` hold every round).

    Args:
      path: the file; its folder is created (and checked for writing) at construction.
      per_seed: also write every seed's value.
    """

    def __init__(self, path: str | os.PathLike, *, per_seed: bool = False):
        self.path = Path(path)
        if not isinstance(per_seed, bool):
            raise ValueError(f"JSONLLogger: per_seed={per_seed!r} is not allowed; expected True or False")
        if self.path.is_dir():
            raise ValueError(f"JSONLLogger: path={str(self.path)!r} is a folder; expected a file name")
        writable_folder(self.path.parent, f"JSONLLogger(path={str(self.path)!r})")
        self.per_seed = per_seed
        self._file = None

    def __repr__(self) -> str:
        return f"JSONLLogger({str(self.path)!r}, per_seed={self.per_seed})"

    def open(self, config: Mapping[str, Any], start_round: int) -> None:
        writable_folder(self.path.parent, f"JSONLLogger(path={str(self.path)!r})")
        config = json.loads(json.dumps(config, default=str))
        lines = [json.dumps({"config": config}, sort_keys=True, allow_nan=False)]
        if start_round > 0 and self.path.exists():
            lines = self._lines_before(config, start_round) or lines
        write_atomic(self.path, lambda f: f.write("".join(line + "\n" for line in lines).encode()))
        self._file = self.path.open("a", encoding="utf-8")

    def _lines_before(self, config: dict[str, Any], start_round: int) -> list[str]:
        """The file's header and its lines for rounds up to ``start_round`` (checked to be this run's)."""
        kept_lines: list[str] = []
        with self.path.open(encoding="utf-8") as f:
            for text in f:
                try:
                    entry = json.loads(text)
                except ValueError:  # a line a crash left half written: nothing after it counts
                    break
                if not kept_lines:
                    saved = entry.get("config") if isinstance(entry, dict) else None
                    differences = config_differences(_without_rounds(saved), _without_rounds(config))
                    if saved is None or differences:
                        raise ValueError(
                            f"JSONLLogger: {str(self.path)!r} holds the log of another run "
                            f"({'; '.join(differences) if saved is not None else 'no config line'}), so this run, "
                            f"resumed after round {start_round}, cannot continue it; pass another path, or remove it"
                        )
                else:
                    round_ = entry.get("round") if isinstance(entry, dict) else None
                    if isinstance(round_, bool) or not isinstance(round_, int):
                        break  # not a line of this logger's: nothing after it counts either
                    if not kept(round_, start_round):
                        continue
                kept_lines.append(text.rstrip("\n"))
        return kept_lines

    def log_rounds(self, rounds: np.ndarray, metrics: Mapping[str, np.ndarray]) -> None:
        mean = means(metrics)
        lines = []
        for i, t in enumerate(np.asarray(rounds)):
            entry: dict[str, Any] = {"round": int(t), "metrics": {k: _finite(float(v[i])) for k, v in mean.items()}}
            if self.per_seed:
                entry["per_seed"] = {k: _per_seed(v[:, i]) for k, v in metrics.items()}
            lines.append(json.dumps(entry, allow_nan=False))
        self._write(lines)

    def log_eval(self, round: int, metrics: Mapping[str, np.ndarray]) -> None:
        entry: dict[str, Any] = {"round": int(round), "eval": {k: _finite(float(v)) for k, v in means(metrics).items()}}
        if self.per_seed:
            entry["per_seed"] = {k: _per_seed(v) for k, v in metrics.items()}
        self._write([json.dumps(entry, allow_nan=False)])

    def _write(self, lines: list[str]) -> None:
        if self._file is None:
            raise RuntimeError(f"{self!r} is not open; cdb.run opens it (logger.open(config, start_round))")
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()

    def close(self, error: BaseException | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _per_seed(values: np.ndarray) -> list[float | None]:
    return [_finite(float(v)) for v in np.asarray(values, dtype=np.float64).ravel()]


def _without_rounds(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    return {k: v for k, v in config.items() if k != "rounds"}


class TensorBoardLogger:
    """TensorBoard event files in ``logdir`` (written by ``tensorboardX``, which needs neither
    TensorFlow nor torch): a scalar per metric and round (the mean over seeds), tagged with the
    metric's name, evaluations as ``eval/<name>``, and the run's configuration as text.

    A resumed run writes a new event file that starts with TensorBoard's purge marker at round
    ``start_round + 1``, so TensorBoard drops what an earlier file holds after the resumed round
    and shows every round once (a new run's marker, at step 0, hides all of an earlier run's).

    Args:
      logdir: the folder (created, and checked for writing, at construction).
      flush_secs: how often the writer flushes on its own; it also flushes after every call.

    Raises:
      ImportError: ``tensorboardX`` is not installed (``pip install 'cdb-jax[tensorboard]'``).
    """

    def __init__(self, logdir: str | os.PathLike, *, flush_secs: int = 10):
        self._writer_class = require("tensorboardX", "tensorboard", "TensorBoardLogger").SummaryWriter
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, int) or flush_secs < 1:
            raise ValueError(f"TensorBoardLogger: flush_secs={flush_secs!r} is out of range; expected an integer >= 1")
        self.logdir = writable_folder(logdir, f"TensorBoardLogger(logdir={str(logdir)!r})")
        self.flush_secs = flush_secs
        self._writer = None

    def __repr__(self) -> str:
        return f"TensorBoardLogger({str(self.logdir)!r})"

    def open(self, config: Mapping[str, Any], start_round: int) -> None:
        writable_folder(self.logdir, f"TensorBoardLogger(logdir={str(self.logdir)!r})")
        self._writer = self._writer_class(
            str(self.logdir),
            purge_step=start_round + 1 if start_round > 0 else 0,
            flush_secs=self.flush_secs,
            # one file per start, so a resumed run in the same second does not write over the file before it
            filename_suffix=f".cdb{start_round:010d}",
        )
        if start_round == 0:
            text = json.dumps(json.loads(json.dumps(config, default=str)), indent=1, sort_keys=True)
            self._writer.add_text("config", f"```\n{text}\n```", 0)
        self._writer.flush()

    def log_rounds(self, rounds: np.ndarray, metrics: Mapping[str, np.ndarray]) -> None:
        mean = means(metrics)
        for i, t in enumerate(np.asarray(rounds)):
            for name, values in mean.items():
                self._writer.add_scalar(name, float(values[i]), int(t))
        self._writer.flush()

    def log_eval(self, round: int, metrics: Mapping[str, np.ndarray]) -> None:
        for name, value in means(metrics).items():
            self._writer.add_scalar(f"eval/{name}", float(value), int(round))
        self._writer.flush()

    def close(self, error: BaseException | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbLogger:
    """A Weights & Biases run: ``wandb.log`` of each round's means over seeds at ``step`` = the
    round, evaluations as ``eval/<name>``, the run's configuration (and ``config``) as its config.

    To append a resumed ``cdb.run`` to the same W&B run, pass the same ``id`` (e.g. a sweep
    cell's name, see :func:`cdb.sweep.run_sweep`'s ``logger_factory``): ``wandb.init`` resumes it
    (``resume="allow"``), and W&B ignores the rounds it already has (it keeps no step twice; the
    resumed run's values for those rounds are the same). Without ``id`` each ``cdb.run`` is a new
    W&B run. The run finishes with exit code 0 on success, 1 on an error. ``WANDB_MODE=offline``
    writes it to ``dir`` for a later ``wandb sync``.

    Args:
      project, name, id, dir, tags, group, mode: as in ``wandb.init`` (``name`` is the run's display name).
      config: more entries for the W&B config, besides the run's configuration.
      **init_kwargs: any other ``wandb.init`` argument.

    Raises:
      ImportError: ``wandb`` is not installed (``pip install 'cdb-jax[wandb]'``).
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        config: Mapping[str, Any] | None = None,
        dir: str | os.PathLike | None = None,
        **init_kwargs: Any,
    ):
        self._wandb = require("wandb", "wandb", "WandbLogger")
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"WandbLogger: config={config!r:.80} is not allowed; expected a dict or None")
        if dir is not None:
            dir = str(writable_folder(dir, f"WandbLogger(dir={str(dir)!r})"))
        self.project, self.name, self.id, self.dir = project, name, id, dir
        self.config = dict(config or {})
        self.init_kwargs = init_kwargs
        self._run = None

    def __repr__(self) -> str:
        return f"WandbLogger(project={self.project!r}, name={self.name!r}, id={self.id!r})"

    def open(self, config: Mapping[str, Any], start_round: int) -> None:
        options: dict[str, Any] = dict(project=self.project, name=self.name, dir=self.dir, **self.init_kwargs)
        if self.id is not None:
            options.update(id=self.id, resume="allow")
        run_config = {**json.loads(json.dumps(config, default=str)), **self.config}
        self._run = self._wandb.init(config=run_config, **options)

    def log_rounds(self, rounds: np.ndarray, metrics: Mapping[str, np.ndarray]) -> None:
        mean = means(metrics)
        for i, t in enumerate(np.asarray(rounds)):
            self._run.log({name: float(values[i]) for name, values in mean.items()}, step=int(t))

    def log_eval(self, round: int, metrics: Mapping[str, np.ndarray]) -> None:
        self._run.log({f"eval/{name}": float(value) for name, value in means(metrics).items()}, step=int(round))

    def close(self, error: BaseException | None = None) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if error is None else 1)
            self._run = None
