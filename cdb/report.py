"""Text helpers for benchmark and sweep reports: a header naming the command and machine, markdown
tables, and paired comparisons of agents against a baseline on the same seeds."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax

from cdb import metrics
from cdb.results import Results


def header() -> str:
    """The command line, the machine and the JAX backend, printed first by every benchmark."""
    cpu = platform.processor() or platform.machine()
    lines = [
        f"command: python {' '.join(sys.argv)}",
        f"machine: {platform.node()} | {cpu} | {os.cpu_count()} cores | python {platform.python_version()}",
        f"jax {jax.__version__} | backend {jax.default_backend()} | devices {jax.devices()}",
    ]
    return "\n".join(lines)


def output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, created with its parents if missing."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` (dicts) with the given ``columns``, in that order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def paired_comparisons(
    results: Mapping[str, Results],
    baseline: str,
    targets: Sequence[tuple],
    *,
    auc_metric: str = "win_rate",
    resamples: int = 10_000,
    labels: Mapping[str, str] | None = None,
) -> tuple[str, list[str]]:
    """Every agent of ``results`` against ``baseline`` on the same seeds: a markdown table and one
    sentence per agent saying whether it wins, ties or loses.

    The runs must be paired: seed ``s`` of every agent shares its key (hence prompts and oracle
    coins). On the pair's common query budget ``Q`` (:func:`cdb.metrics.common_query_budget`, the
    fewest queries any seed of either made) the statistics per seed are

    * for each ``(target, label)`` of ``targets`` (``target`` with ``metric``, ``value`` and
      ``direction``, e.g. a :class:`cdb.metrics.Target`): the queries until the metric first reaches
      the target, capped at ``Q`` for a seed that never does
      (:func:`cdb.metrics.capped_queries_to_target`; lower is better);
    * the area under ``auc_metric`` against queries over ``[0, Q]``
      (:func:`cdb.metrics.auc_against_queries`; higher is better);

    and each row holds both agents' means and the paired difference ``d_s = agent_s − baseline_s``
    with its 95 % bootstrap interval over seeds (:func:`cdb.metrics.paired_bootstrap`, ``resamples``
    resamples, seed 0). An agent *wins* on a statistic when the whole interval favours it, *loses*
    when the whole interval favours the baseline, and *ties* when it holds 0.
    """
    labels = dict(labels or {})
    name_of = lambda n: labels.get(n, n)  # noqa: E731
    rows, sentences = [], []
    for name, result in results.items():
        if name == baseline:
            continue
        pair = (result, results[baseline])
        seeds = result.num_seeds
        if results[baseline].num_seeds != seeds:
            raise ValueError(
                f"{name!r} has {seeds} seeds and {baseline!r} {results[baseline].num_seeds}; "
                "a paired comparison needs the same seeds"
            )
        budget = metrics.common_query_budget(*pair)
        stats = []
        for target, label in targets:
            (a, reached_a), (b, reached_b) = (
                metrics.capped_queries_to_target(r, target.metric, target.value, target.direction, budget) for r in pair
            )
            reached = f"{int(reached_a.sum())}/{seeds} vs {int(reached_b.sum())}/{seeds} seeds reached it"
            stats.append((f"queries to {label} ≥ {target.value}", a, b, "lower", reached))
        a, b = (metrics.auc_against_queries(r, auc_metric, budget) for r in pair)
        stats.append((f"AUC of the {auc_metric} against queries", a, b, "higher", ""))
        verdicts = []
        for statistic, a, b, better, note in stats:
            diff = metrics.paired_bootstrap(a, b, resamples=resamples, seed=0)
            verdict = diff.verdict(better)
            verdicts.append(f"{verdict} on the {statistic}")
            rows.append(
                {
                    "agent": name_of(name),
                    "statistic (Q = common query budget)": f"{statistic} ({better} is better), Q = {budget:.0f}",
                    "agent mean": f"{a.mean():.4g}",
                    f"{name_of(baseline)} mean": f"{b.mean():.4g}",
                    f"agent − {name_of(baseline)} [95% CI]": str(diff),
                    "verdict": verdict,
                    "note": note,
                }
            )
        sentences.append(
            f"**{name_of(name)}** against {name_of(baseline)}, {seeds} paired seeds, 95% paired bootstrap intervals: "
            + "; ".join(verdicts)
            + " (wins: the whole interval favours it; ties: the interval holds 0)."
        )
    return (markdown_table(rows, list(rows[0])) if rows else ""), sentences
