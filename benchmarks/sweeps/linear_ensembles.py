"""Example sweep: SEA's Thompson-sampling rules with linear-Gaussian heads of different sizes and
prior scales, against passive exploration, on two LinearDuel problems.

    python -m cdb.sweep run benchmarks/sweeps/linear_ensembles.py --store results/sweeps/linear_ensembles
    python -m cdb.sweep run benchmarks/sweeps/linear_ensembles.py --shard 0/4   # one job of a job array
    python -m cdb.sweep summary results/sweeps/linear_ensembles --target 'bai_regret<=0.01'

2 environments × (2 Thompson-sampling rules × 3 ensemble sizes × 2 prior scales + passive) = 26 cells,
each 200 rounds × 8 seeds. ``members`` and ``prior_scale`` reach the agents through the factories'
keyword arguments; ``passive`` names neither, so it is one cell per environment.
"""

from cdb.agents import bai_ts, ee_ts, passive
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel
from cdb.sweep import Sweep


def heads(members: int, prior_scale: float) -> LinearEnsemble:
    return LinearEnsemble(num_members=members, prior_scale=prior_scale, noise_scale=0.5)


SWEEP = Sweep(
    agents={
        "ee_ts": lambda members, prior_scale: ee_ts(reward_model=heads(members, prior_scale)),
        "bai_ts": lambda members, prior_scale: bai_ts(reward_model=heads(members, prior_scale)),
        "passive": passive(reward_model=heads(8, 1.0)),
    },
    envs={
        "K16_d8": LinearDuel(num_arms=16, feature_dim=8, batch_size=4, eval_batch_size=128, scale=8.0),
        "K64_d16": LinearDuel(num_arms=64, feature_dim=16, batch_size=4, eval_batch_size=128, scale=8.0),
    },
    grid={"members": [4, 8, 16], "prior_scale": [0.3, 1.0]},
    rounds=200,
    seeds=8,
    eval_every=20,
    key=0,
)
