"""A store's summary: one row per experiment, its seed ranges merged (:func:`summarize`), as a
table, a CSV and mean ± s.e. curves (:class:`Summary`), with queries-to-target columns
(:class:`cdb.metrics.Target`, e.g. ``"bai_regret<=0.01"``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdb.metrics import Target, TargetQueries, queries_to_target
from cdb.results import Results
from cdb.store import Store
from cdb.sweep.grid import Sweep

#: The fields of a cell's summary (``Cell.summary``) that its record holds too.
_CELL_FIELDS = ("id", "name", "experiment", "env", "agent", "params", "seeds", "seed_range")


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


def summarize(
    store: Store | str | os.PathLike,
    sweep: Sweep | None = None,
    *,
    metrics: Sequence[str] | None = None,
    targets: Sequence[Target | str] = (),
) -> Summary:
    """The table of a store: one row per experiment, its seed ranges merged (:meth:`Results.merge_seeds`).

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
    experiments: dict[str, list[dict]] = {}
    for cell in _listed_cells(store, sweep, index):
        experiments.setdefault(cell["experiment"], []).append(cell)
    param_names = list(dict.fromkeys(p for cells in experiments.values() for p in cells[0]["params"]))
    rows = [_experiment_row(store, index, experiment, cells, param_names) for experiment, cells in experiments.items()]
    results = {row["experiment"]: res for row, res in rows if res is not None}
    if metrics is None:
        metrics = ["cumulative_regret"]
        if any("bai_regret" in r.eval_metrics for r in results.values()):
            metrics.append("bai_regret")
    metrics = list(metrics)
    target_queries: dict[tuple[str, str], TargetQueries] = {}
    for row, res in rows:
        for metric in metrics:
            row[metric], row[f"{metric} se"] = _final(res, metric)
        for target in targets:
            hit = None if res is None else _target(res, target)
            if hit is not None:
                target_queries[row["experiment"], target.label] = hit
            row[target.label] = np.nan if hit is None else hit.mean
            row[f"{target.label} se"] = np.nan if hit is None else hit.stderr
            row[f"{target.label} reached"] = np.nan if hit is None else hit.reached
    table = [row for row, _ in rows]
    params = {row["experiment"]: {p: row[p] for p in param_names if row[p] is not None} for row in table}
    return Summary(pd.DataFrame(table), results, target_queries, metrics, targets, param_names, params)


def _listed_cells(store: Store, sweep: Sweep | None, index: dict[str, dict]) -> list[dict[str, Any]]:
    """The summaries (``Cell.summary``) of the cells a summary lists: ``sweep``'s, else the manifest's
    and the recorded cells of experiments the manifest does not list."""
    if sweep is not None:
        return [c.summary() for c in sweep.cells()]
    manifest = store.manifest()
    listed = list(manifest["cells"]) if manifest else []
    # a recorded cell of an experiment the manifest lists under other ids ran with another
    # configuration (an older sweep file, or an older description of the same one): left out
    experiments = {c["experiment"] for c in listed}
    listed += [{k: r[k] for k in _CELL_FIELDS} for r in index.values() if r["experiment"] not in experiments]
    if not listed:
        raise ValueError(f"summarize: the store {str(store.root)!r} holds no cells and no sweep was given")
    return listed


def _experiment_row(
    store: Store, index: dict[str, dict], experiment: str, cells: list[dict], param_names: list[str]
) -> tuple[dict[str, Any], Results | None]:
    """One experiment's row (without metric columns) and its merged ``Results`` (``None`` unless every part is done)."""
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
    res = Results.merge_seeds([store.load_results(c["id"]) for c in cells]) if status == "done" else None
    row = {
        "experiment": experiment,
        "env": first["env"],
        "agent": first["agent"],
        "label": first["agent"] + ("" if not params else " " + ",".join(f"{k}={v}" for k, v in params.items())),
        **{p: params.get(p) for p in param_names},
        "status": status,
        "seeds": 0 if res is None else res.num_seeds,
        "wall_seconds": float(sum(r["wall_seconds"] for r in records if r is not None)),
    }
    return row, res


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
