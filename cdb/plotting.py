"""Regret and learning curves: mean ± standard error across seeds (bsuite style)."""

from __future__ import annotations

from collections.abc import Mapping

from cdb.results import Results, standard_error


def plot_curve(results: Results, metric: str, *, x: str = "round", ax=None, label: str | None = None):
    """Draws one agent's curve with a one-standard-error band; returns the figure."""
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    values, rounds = results.curve(metric)
    if x == "round":
        xs = rounds
    elif x == "queries":
        xs = results.cumulative_queries_at(rounds).mean(axis=0)
    else:
        raise ValueError(f"x={x!r} is not allowed; expected 'round' or 'queries'")
    mean, se = values.mean(axis=0), standard_error(values)
    (line,) = ax.plot(xs, mean, label=label)
    ax.fill_between(xs, mean - se, mean + se, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel("oracle queries" if x == "queries" else "round")
    ax.set_ylabel(metric.replace("_", " "))
    if label is not None:
        ax.legend(frameon=False)
    return fig


def plot_comparison(
    results: Mapping[str, Results], metric: str, *, x: str = "round", ax=None, title: str | None = None
):
    """One curve per named ``Results`` on shared axes; returns the figure."""
    fig = None
    for name, res in results.items():
        fig = plot_curve(res, metric, x=x, ax=ax, label=name)
        ax = fig.axes[0]
    if title and ax is not None:
        ax.set_title(title)
    return fig
