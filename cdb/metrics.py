"""Statistics of finished runs, computed on the host from :class:`cdb.Results` (numpy only).

* sample efficiency — :func:`queries_to_target` (:class:`TargetQueries`: the oracle queries until
  a metric first reaches a :class:`Target`), :func:`capped_queries_to_target`,
  :func:`auc_against_queries` and :func:`common_query_budget`, the budget two runs compare on;
* comparisons on the same seeds — :func:`paired_bootstrap` (:class:`PairedDifference`);
* regret growth — :func:`log_log_slope`.

The mean ± standard error over seeds of a curve is :func:`cdb.results.standard_error`. What a run
records per round inside its loop (batch sums of regrets, query counts) is reduced by
:mod:`cdb.runners.metrics`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from cdb.results import Results, standard_error


def log_log_slope(cumulative: np.ndarray, start_fraction: float = 0.25) -> float:
    """Least-squares slope of ``log R_t`` against ``log t`` over the last rounds.

    A slope clearly below one means sub-linear regret growth (``R_t = O(t^slope)``).
    ``cumulative`` is ``[T]``; the first ``start_fraction`` of rounds are skipped.
    """
    cumulative = np.asarray(cumulative, dtype=np.float64)
    t = np.arange(1, cumulative.shape[0] + 1)
    keep = (t >= max(2, int(start_fraction * len(t)))) & (cumulative > 0)
    slope, _ = np.polyfit(np.log(t[keep]), np.log(cumulative[keep]), 1)
    return float(slope)


@dataclasses.dataclass(frozen=True)
class TargetQueries:
    """Oracle queries needed to reach a target, per seed (``inf`` where never reached)."""

    per_seed: np.ndarray
    mean: float
    stderr: float
    reached: int

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.stderr:.1f} ({self.reached}/{len(self.per_seed)} seeds reached)"


@dataclasses.dataclass(frozen=True)
class Target:
    """Queries until ``metric`` first reaches ``value`` (``direction`` ``below`` or ``above``):
    the target of :func:`queries_to_target`, a column of :func:`cdb.sweep.summarize`."""

    metric: str
    value: float
    direction: str = "below"

    @classmethod
    def parse(cls, text: str | Target) -> Target:
        """``metric<=value``, ``metric>=value``, or ``metric=value`` (below for ``*regret*``, else above)."""
        if isinstance(text, Target):
            return text
        match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|=)\s*([-+0-9.eE]+)\s*", str(text))
        try:
            value = float(match.group(3)) if match else None
        except ValueError:
            value = None
        if match is None or value is None:
            raise ValueError(
                f"target={text!r} is not allowed; expected METRIC<=VALUE, METRIC>=VALUE or METRIC=VALUE, "
                "e.g. 'bai_regret<=0.01'"
            )
        op = match.group(2)
        direction = {"<=": "below", ">=": "above"}.get(op, "below" if "regret" in match.group(1) else "above")
        return cls(match.group(1), value, direction)

    @property
    def label(self) -> str:
        return f"queries to {self.metric} {'<=' if self.direction == 'below' else '>='} {self.value:g}"


def queries_to_target(results: Results, metric: str, target: float, direction: str = "below") -> TargetQueries:
    """Cumulative oracle queries at the first round where ``metric`` crosses ``target``.

    ``direction='below'`` for metrics that should fall (BAI regret), ``'above'`` for metrics
    that should rise (win rate). ``metric`` may be a per-round metric (``cumulative_*`` too) or
    an evaluation metric; for the latter the query count at the evaluation round is used.
    The mean and standard error are over the seeds that reached the target; ``reached`` says how many.
    """
    if direction not in ("below", "above"):
        raise ValueError(f"direction={direction!r} is not allowed; expected 'below' or 'above'")
    values, rounds = results.curve(metric)
    queries = results.cumulative_queries_at(rounds)
    hit = values <= target if direction == "below" else values >= target
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    per_seed = np.where(first >= 0, queries[np.arange(len(first)), np.maximum(first, 0)], np.inf)
    reached = per_seed[np.isfinite(per_seed)]
    mean = float(reached.mean()) if reached.size else float("inf")
    stderr = float(standard_error(reached)) if reached.size else float("nan")
    return TargetQueries(per_seed=per_seed.astype(np.float64), mean=mean, stderr=stderr, reached=int(reached.size))


def _query_axis(results: Results, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, queries)`` ``[seeds, n]``: a metric and the cumulative oracle queries where it was taken."""
    values, rounds = results.curve(metric)
    return np.asarray(values, np.float64), results.cumulative_queries_at(rounds).astype(np.float64)


def common_query_budget(*results: Results) -> float:
    """The largest query count that every seed of every run reached: min over runs and seeds of the total."""
    if not results:
        raise ValueError("common_query_budget needs at least one Results")
    return float(min(np.sum(r.metrics["queries"], axis=1).min() for r in results))


def auc_against_queries(results: Results, metric: str = "win_rate", max_queries: float | None = None) -> np.ndarray:
    """Normalised area under a metric-against-queries curve, per seed: ``[seeds]``.

    For seed s, let ``(q_i, w_i)`` be the metric ``w`` (e.g. the evaluation ``win_rate``) at its
    evaluation rounds against the cumulative oracle queries ``q`` made by then (``q = 0`` at round 0),
    and ``w_s(q)`` their piecewise-linear interpolation. With Q = ``max_queries``::

        AUC_s = (1/Q) ∫_0^Q w_s(q) dq      (the trapezoid rule on the points with q ≤ Q, plus w_s(Q))

    the mean value of the curve over the first Q queries: a win rate's AUC lies in [0, 1], and an
    agent whose curve rises with fewer queries has the larger one. Runs compare on the same Q,
    e.g. :func:`common_query_budget` of all of them. Points at equal query counts (rounds without
    queries) add no width. ``max_queries=None`` is this run's :func:`common_query_budget`. The
    curve must start at 0 queries (an evaluation at round 0) and reach Q on every seed.
    """
    values, queries = _query_axis(results, metric)
    budget = common_query_budget(results) if max_queries is None else float(max_queries)
    if not budget > 0:
        raise ValueError(f"auc_against_queries max_queries={max_queries!r} gives Q={budget}; expected Q > 0")
    if np.any(queries[:, 0] != 0):
        raise ValueError(f"auc_against_queries: {metric!r} is first taken after queries; expected a value at 0")
    if np.any(queries[:, -1] < budget):
        raise ValueError(
            f"auc_against_queries max_queries={budget:g} exceeds the queries of some seed "
            f"(fewest: {queries[:, -1].min():g}); expected at most that"
        )
    out = np.empty(values.shape[0])
    for s, (w, q) in enumerate(zip(values, queries, strict=True)):
        end = int(np.argmax(q >= budget))  # first point at or past Q
        w_end = w[end] if q[end] == budget else np.interp(budget, q[end - 1 : end + 1], w[end - 1 : end + 1])
        xs, ys = np.append(q[:end], budget), np.append(w[:end], w_end)
        out[s] = np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / budget
    return out


def capped_queries_to_target(
    results: Results, metric: str, target: float, direction: str = "above", max_queries: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Queries to reach a target per seed, capped at a common budget: ``(values [seeds], reached [seeds])``.

    ``values`` is :func:`queries_to_target`'s per-seed count where it is at most Q = ``max_queries``
    and Q where the target was not reached within Q queries (``reached`` False): the restricted mean
    of the time to the event, so that seeds that never reach the target still count (by a lower
    bound) and two runs with different query totals compare on the same budget.
    ``max_queries=None`` is this run's :func:`common_query_budget`.
    """
    per_seed = queries_to_target(results, metric, target, direction).per_seed
    budget = common_query_budget(results) if max_queries is None else float(max_queries)
    reached = per_seed <= budget
    return np.where(reached, per_seed, budget), reached


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """The mean of per-seed differences ``a − b`` with a bootstrap confidence interval.

    Attributes:
      per_seed: ``[n]`` the differences.
      mean: their mean.
      low, high: the percentile bootstrap interval of the mean at ``confidence``.
      confidence: e.g. 0.95.
    """

    per_seed: np.ndarray
    mean: float
    low: float
    high: float
    confidence: float

    def verdict(self, better: str) -> str:
        """``'wins'`` when the whole interval favours ``a`` (below 0 for ``better='lower'``, above 0
        for ``'higher'``), ``'loses'`` when it all favours ``b``, else ``'ties'`` (it holds 0)."""
        if better not in ("lower", "higher"):
            raise ValueError(f"PairedDifference.verdict better={better!r} is not allowed; expected 'lower' or 'higher'")
        sign = -1.0 if better == "lower" else 1.0
        low, high = sorted((sign * self.low, sign * self.high))
        return "wins" if low > 0 else "loses" if high < 0 else "ties"

    def __str__(self) -> str:
        return f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> PairedDifference:
    """Paired bootstrap confidence interval of ``mean(a − b)`` over seeds (Efron & Tibshirani 1993).

    ``a[s]`` and ``b[s]`` are two agents' values on the same seed s (same key, same prompts). The
    n differences ``d_s = a_s − b_s`` are resampled with replacement ``resamples`` times by
    ``numpy.random.default_rng(seed)``; the interval is the ``(1 − confidence)/2`` and
    ``(1 + confidence)/2`` quantiles of the resampled means (the percentile interval).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_bootstrap: a has shape {a.shape}, b {b.shape}; expected two equal shapes [seeds]")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired_bootstrap: a or b holds NaN/inf; expected finite per-seed values (cap them first)")
    if not 0 < confidence < 1:
        raise ValueError(f"paired_bootstrap confidence={confidence!r} is out of range; expected 0 < confidence < 1")
    if resamples < 1:
        raise ValueError(f"paired_bootstrap resamples={resamples!r} is out of range; expected an integer >= 1")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, (resamples, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedDifference(diff, float(diff.mean()), float(low), float(high), confidence)
