"""``Results``: per-round metrics of an experiment with a leading seed axis.

``metrics[name]`` is ``[seeds, rounds]`` (round ``t`` = after the t-th batch of duels, t = 1..T);
``eval_metrics[name]`` is ``[seeds, evals]`` taken at ``eval_rounds`` (0 = before any learning).
Curves are summarised over seeds as mean ± :func:`standard_error`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdb.atomic_write import write_atomic

_CUMULATIVE = "cumulative_"


def standard_error(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Standard error of the mean, ``std(ddof=1) / sqrt(n)``; zero for a single seed."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    if n < 2:
        return np.zeros(np.delete(x.shape, axis))
    return np.std(x, axis=axis, ddof=1) / np.sqrt(n)


@dataclasses.dataclass
class Results:
    metrics: dict[str, np.ndarray]
    eval_rounds: np.ndarray
    eval_metrics: dict[str, np.ndarray]
    config: dict[str, Any]

    @property
    def num_seeds(self) -> int:
        # an experiment without rounds of its own (e.g. the offline design) has only evaluations
        return next(iter(self.metrics.values() or self.eval_metrics.values())).shape[0]

    @property
    def num_rounds(self) -> int:
        return next(iter(self.metrics.values())).shape[1] if self.metrics else 0

    @property
    def rounds(self) -> np.ndarray:
        return np.arange(1, self.num_rounds + 1)

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(values [seeds, n], rounds [n])`` of a metric.

        ``metric`` is a per-round metric, ``cumulative_<per-round metric>``, ``rm_accuracy``
        (running accuracy of the reward model on the oracle pairs seen so far) or an eval metric.
        """
        if metric in self.metrics:
            return np.asarray(self.metrics[metric]), self.rounds
        if metric.startswith(_CUMULATIVE) and metric[len(_CUMULATIVE) :] in self.metrics:
            return np.cumsum(self.metrics[metric[len(_CUMULATIVE) :]], axis=1), self.rounds
        if metric == "rm_accuracy" and "rm_correct" in self.metrics:
            seen = np.cumsum(self.metrics["queries"], axis=1)
            return np.cumsum(self.metrics["rm_correct"], axis=1) / np.maximum(seen, 1), self.rounds
        if metric in self.eval_metrics:
            return np.asarray(self.eval_metrics[metric]), np.asarray(self.eval_rounds)
        known = sorted(self.metrics) + [_CUMULATIVE + k for k in sorted(self.metrics)] + sorted(self.eval_metrics)
        raise KeyError(f"unknown metric {metric!r}; known: {known}")

    def cumulative_queries_at(self, rounds: np.ndarray) -> np.ndarray:
        """Oracle queries made up to each of ``rounds`` (0 at round 0), ``[seeds, len(rounds)]``."""
        cum = np.concatenate([np.zeros((self.num_seeds, 1)), np.cumsum(self.metrics["queries"], axis=1)], axis=1)
        return cum[:, np.asarray(rounds, dtype=int)]

    def final(self, metric: str) -> tuple[float, float]:
        """Mean and standard error over seeds of the metric's last value."""
        values, _ = self.curve(metric)
        return float(values[:, -1].mean()), float(standard_error(values[:, -1]))

    def to_dataframe(self):
        """Long-format ``pandas.DataFrame``: one row per (seed, round), with cumulative regrets and
        queries, and eval metrics on the rounds where they were taken (NaN elsewhere)."""
        import pandas as pd

        seeds, rounds = np.meshgrid(np.arange(self.num_seeds), self.rounds, indexing="ij")
        columns = {"seed": seeds.ravel(), "round": rounds.ravel()}
        for name, values in self.metrics.items():
            columns[name] = np.asarray(values).ravel()
        for name in ("regret", "weak_regret", "strong_regret", "queries"):
            if name in self.metrics:
                columns[_CUMULATIVE + name] = np.cumsum(self.metrics[name], axis=1).ravel()
        frame = pd.DataFrame(columns)
        if self.eval_metrics:
            ev_seeds, ev_rounds = np.meshgrid(np.arange(self.num_seeds), self.eval_rounds, indexing="ij")
            ev = {"seed": ev_seeds.ravel(), "round": ev_rounds.ravel()}
            ev.update({k: np.asarray(v).ravel() for k, v in self.eval_metrics.items()})
            frame = frame.merge(pd.DataFrame(ev), on=["seed", "round"], how="outer").sort_values(["seed", "round"])
        return frame.reset_index(drop=True)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Writes one ``.npz`` file (arrays exactly, config as JSON). Returns the path.

        ``.npz`` is appended to a name that does not end in it (``"exp_lr0.1"`` → ``exp_lr0.1.npz``,
        never ``exp_lr0.npz``). An existing file is only replaced with ``overwrite=True``. The
        file is written whole or not at all (:func:`cdb.atomic_write.write_atomic`): a failed save
        (a full disk) keeps the old file and leaves no partial one, and of two processes saving
        the same new name with ``overwrite=False`` exactly one succeeds.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays = {f"metrics/{k}": np.asarray(v) for k, v in self.metrics.items()}
        arrays.update({f"eval/{k}": np.asarray(v) for k, v in self.eval_metrics.items()})
        arrays["eval_rounds"] = np.asarray(self.eval_rounds)
        arrays["config"] = np.asarray(json.dumps(self.config, default=str))
        try:
            return write_atomic(path, lambda f: np.savez(f, **arrays), overwrite=overwrite)
        except FileExistsError as err:
            raise FileExistsError(f"Results.save: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """Reads a file written by :meth:`save` (no pickle); a ``ValueError`` says what is wrong
        with a file that is not one (missing, empty, another program's, ragged arrays)."""
        path = Path(path)
        where = f"Results.load: {str(path)!r}"
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(
                f"{where} is not a Results file written by Results.save ({type(err).__name__}: {err})"
            ) from err
        if not hasattr(data, "files"):  # a bare .npy array
            raise ValueError(f"{where} holds a single array, not a Results file written by Results.save")
        with data:
            missing = [k for k in ("config", "eval_rounds") if k not in data.files]
            if missing:
                raise ValueError(
                    f"{where} is not a Results file written by Results.save: it has no {missing} "
                    f"(its arrays: {sorted(data.files)[:10]})"
                )
            try:
                metrics = {k[len("metrics/") :]: data[k] for k in data.files if k.startswith("metrics/")}
                evals = {k[len("eval/") :]: data[k] for k in data.files if k.startswith("eval/")}
                eval_rounds = data["eval_rounds"]
                config = json.loads(str(data["config"]))
            except Exception as err:
                raise ValueError(f"{where} cannot be read ({type(err).__name__}: {err})") from err
        _check_shapes(where, metrics, eval_rounds, evals)
        return cls(metrics, eval_rounds, evals, config)

    def plot(self, metric: str = "cumulative_regret", *, x: str = "round", ax=None, label: str | None = None):
        """Mean ± one standard error over seeds of ``metric`` against rounds or oracle queries.

        Returns the matplotlib figure. ``x`` is ``'round'`` or ``'queries'`` (mean cumulative queries).
        """
        from cdb.plotting import plot_curve

        return plot_curve(self, metric, x=x, ax=ax, label=label)

    @classmethod
    def merge_seeds(cls, parts: Sequence[Results]) -> Results:
        """Concatenates ``Results`` of consecutive seed ranges of one experiment along the seed axis.

        ``parts`` are runs of one experiment with ``cdb.run(seed_range=)`` ranges that follow each
        other (``[0, 2)``, ``[2, 5)``, ...); the config is the first part's with ``seed_range``
        covering all parts, so the parts of a ``seeds``-seed run give exactly the ``Results`` of
        the whole run. A ``ValueError`` when the parts have different metrics or evaluation rounds,
        or ranges that do not follow each other.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("Results.merge_seeds: parts=[] is not allowed; expected at least one Results")
        first = parts[0]
        if len(parts) == 1:
            return first
        for p in parts[1:]:
            if sorted(p.metrics) != sorted(first.metrics) or sorted(p.eval_metrics) != sorted(first.eval_metrics):
                raise ValueError(
                    f"Results.merge_seeds: the parts have different metrics ({sorted(first.metrics)} and "
                    f"{sorted(first.eval_metrics)} against {sorted(p.metrics)} and {sorted(p.eval_metrics)})"
                )
            if not np.array_equal(p.eval_rounds, first.eval_rounds):
                raise ValueError(
                    f"Results.merge_seeds: the parts have different evaluation rounds ({np.asarray(first.eval_rounds)} "
                    f"and {np.asarray(p.eval_rounds)})"
                )
        config = dict(first.config)
        ranges = [p.config.get("seed_range") for p in parts]
        if all(r is not None for r in ranges):
            for (_, stop), (start, _) in itertools.pairwise(ranges):
                if stop != start:
                    raise ValueError(
                        f"Results.merge_seeds: seed ranges {ranges} are not consecutive; expected each part to "
                        "start where the one before it stops"
                    )
            config["seed_range"] = [ranges[0][0], ranges[-1][1]]
        return cls(
            {k: np.concatenate([p.metrics[k] for p in parts]) for k in first.metrics},
            np.asarray(first.eval_rounds),
            {k: np.concatenate([p.eval_metrics[k] for p in parts]) for k in first.eval_metrics},
            config,
        )

    def truncated(self, rounds: int) -> Results:
        """The first ``rounds`` rounds (and the evaluations taken by then)."""
        keep = np.asarray(self.eval_rounds) <= rounds
        return Results(
            {k: np.asarray(v)[:, :rounds] for k, v in self.metrics.items()},
            np.asarray(self.eval_rounds)[keep],
            {k: np.asarray(v)[:, keep] for k, v in self.eval_metrics.items()},
            dict(self.config),
        )


def _check_shapes(where: str, metrics: dict, eval_rounds: np.ndarray, evals: dict) -> None:
    """Every metric ``[seeds, rounds]`` with the same shape, every evaluation ``[seeds, len(eval_rounds)]``."""
    if np.ndim(eval_rounds) != 1:
        raise ValueError(f"{where}: eval_rounds has shape {np.shape(eval_rounds)}; expected one axis")
    shapes = {k: np.shape(v) for k, v in metrics.items()}
    if any(len(shape) != 2 for shape in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"{where}: per-round metrics must all be [seeds, rounds] of one shape; got {shapes}")
    seeds = next(iter(shapes.values()))[0] if shapes else None
    for k, v in evals.items():
        want = (seeds if seeds is not None else np.shape(v)[0], len(eval_rounds))
        if np.ndim(v) != 2 or np.shape(v) != want:
            raise ValueError(f"{where}: eval metric {k!r} has shape {np.shape(v)}; expected [seeds, evals] = {want}")
