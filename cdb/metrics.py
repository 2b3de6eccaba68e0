"""Regret and sample-efficiency metrics (DESIGN §1).

Per round the environment reports, for each of the B contexts, the exact per-duel regrets

* average  ``r*(x, y*) − (r*(x, y) + r*(x, y')) / 2``,
* weak     ``r*(x, y*) − max(r*(x, y), r*(x, y'))``  (the better arm's regret),
* strong   ``r*(x, y*) − min(r*(x, y), r*(x, y'))``  (the worse arm's regret),

and :func:`round_metrics` sums them over the batch, so that ``cumsum`` over rounds gives the
cumulative regret of all ``rounds × B`` duels. The BAI (anytime) regret
``E_x[r*(x, y*) − r*(x, recommend(x))]`` is averaged over held-out contexts by :func:`cdb.run`.

Tier-3 environments (``LLMDuel``) have no exact regret, since nobody knows a real oracle's best
response: their info carries win rates and oracle rewards instead, and :func:`round_metrics`
records whichever regrets are present.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from cdb.types import Feedback, Info

if TYPE_CHECKING:
    from cdb.results import Results

REGRET_KEYS = ("regret", "weak_regret", "strong_regret")


def round_metrics(info: Info, feedback: Feedback) -> dict[str, jax.Array]:
    """Reduces one round's per-context truth to scalars: batch sums of regrets and the query count.

    The regrets of :data:`REGRET_KEYS` that ``info`` holds are summed over the batch (tier 3 holds
    none); every other entry is averaged over the batch (scalars are kept as they are).
    """
    out = {k: jnp.sum(info[k]).astype(jnp.float32) for k in REGRET_KEYS if k in info}
    out["queries"] = jnp.sum(feedback.queried).astype(jnp.int32)
    out["duels"] = jnp.asarray(feedback.queried.shape[0], jnp.int32)
    for k, v in info.items():
        if k not in out and k not in ("reward_first", "reward_second", "best_reward"):
            out[k] = jnp.mean(v).astype(jnp.float32) if jnp.ndim(v) else jnp.asarray(v, jnp.float32)
    return out


def scalar_info(info: Info) -> dict[str, jax.Array]:
    """Keeps the scalar entries of an agent's info dict (what ``cdb.run`` records per round)."""
    return {k: v for k, v in info.items() if jnp.ndim(v) == 0}


def standard_error(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Standard error of the mean, ``std(ddof=1) / sqrt(n)``; zero for a single seed."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    if n < 2:
        return np.zeros(np.delete(x.shape, axis))
    return np.std(x, axis=axis, ddof=1) / np.sqrt(n)


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
