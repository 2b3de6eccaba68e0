"""``benchmarks/throughput.py``: its NumPy loop is the algorithm ``cdb.run`` runs, and the script runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import throughput  # noqa: E402

KW = dict(
    arms=8, dim=4, batch=2, members=4, max_tries=8, scale=8.0, prior_scale=1.0, noise_scale=0.5, regularization=1.0
)


@pytest.mark.slow
def test_numpy_reference_reaches_the_regret_of_cdb_run():
    """Both sides run E&E-TS with linear-Gaussian heads on the same pooled LinearDuel, with
    different random streams: their mean cumulative regrets must agree within sampling error."""
    import cdb
    from cdb.agents import ee_ts
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel
    from cdb.environments.feature_duel import make_context_pool

    rounds, pool_size = 40, 64
    env = LinearDuel(
        num_arms=KW["arms"],
        feature_dim=KW["dim"],
        batch_size=KW["batch"],
        eval_batch_size=2,
        scale=KW["scale"],
        context_pool=pool_size,
    )
    model = LinearEnsemble(
        num_members=KW["members"],
        prior_scale=KW["prior_scale"],
        noise_scale=KW["noise_scale"],
        regularization=KW["regularization"],
    )
    res = cdb.run(ee_ts(reward_model=model, max_tries=KW["max_tries"]), env, rounds=rounds, seeds=64, progress=False)
    jax_regret = res.metrics["regret"].sum(axis=1)

    pool = make_context_pool(pool_size, KW["arms"], KW["dim"], env.pool_seed).astype(np.float64)
    numpy_regret = np.array([throughput.numpy_ee_ts(s, rounds=rounds, pool=pool, **KW) for s in range(64)])

    se = np.sqrt(jax_regret.var(ddof=1) / len(jax_regret) + numpy_regret.var(ddof=1) / len(numpy_regret))
    assert abs(jax_regret.mean() - numpy_regret.mean()) < 4 * se, (jax_regret.mean(), numpy_regret.mean(), se)
    # and not trivially: both learn, far below the regret of a uniformly random pair
    passive = cdb.run(cdb.agents.passive(), env, rounds=rounds, seeds=64, progress=False)
    assert numpy_regret.mean() < 0.6 * passive.metrics["regret"].sum(axis=1).mean()


@pytest.mark.slow
def test_throughput_script_writes_consistent_figures(tmp_path):
    argv = "--seeds 4 --rounds 6 --arms 8 --dim 4 --members 4 --numpy-seeds 2 --repeats 2 --devices 1".split()
    argv += ["--out", str(tmp_path)]
    figures = throughput.main(argv)
    written = json.loads((tmp_path / "throughput.json").read_text())
    assert written == json.loads(json.dumps(figures))
    assert figures["ratio"] == pytest.approx(figures["jax_decisions_per_s"] / figures["numpy_decisions_per_s"])
    decisions = 2 * 6 * 4  # numpy seeds × rounds × batch
    assert figures["numpy_decisions_per_s"] == pytest.approx(decisions / figures["numpy_best_s"])
    assert set(figures["jax_decisions_per_s_by_variant"]) == {"default", "unchunked", "xla_defaults"}
    assert figures["jax_decisions_per_s_by_variant"]["default"] == figures["jax_decisions_per_s"]
    assert figures["jax_decisions_per_s"] == pytest.approx(4 * 6 * 4 / figures["jax_best_s"])  # JAX seeds × rounds × B
