"""What one round records, reduced inside the runners' loops (docs/design.md §1).

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

Both runners call these functions: the compiled runner on one seed's arrays inside its
``vmap(scan)``, the host runner on each seed's environment info and on the agent's info of all
seeds at once. The statistics of finished runs (queries to a target, bootstrap intervals) are
host-side analysis, in :mod:`cdb.metrics`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cdb.types import Feedback, Info

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


def scalar_info(info: Info, seed_axes: int = 0) -> dict[str, jax.Array]:
    """The entries of an agent's info dict that hold one number per seed (what ``cdb.run`` records per round).

    ``seed_axes`` is how many leading axes index seeds: 0 for one seed's info (the compiled
    runner, inside its ``vmap``), 1 for the info of all seeds at once, ``[seeds]`` per entry (the
    host runner). Entries with more axes (per-context or per-arm arrays) are dropped.
    """
    return {k: v for k, v in info.items() if jnp.ndim(v) == seed_axes}
