"""The default experiment: SEA's E&E Thompson sampling against baselines on tier-1 problems.

Runs every agent × {LinearDuel, NeuralDuel} × seeds with ``cdb.run`` (one compiled program per
pair), then writes

* ``<out>/regret_curves.csv``  — per (env, agent, seed, round): cumulative regrets, queries, BAI regret;
* ``<out>/regret_curves.png``  — cumulative regret and BAI regret, mean ± s.e. over seeds;
* ``<out>/<env>_<agent>.npz``  — each ``Results`` (``cdb.Results.load``),

and prints a table of final cumulative regret and BAI regret (mean ± s.e.).

    python benchmarks/regret_curves.py                 # the README's default experiment
    python benchmarks/regret_curves.py --rounds 50 --seeds 2 --agents ee_ts passive
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cdb  # noqa: E402
from benchmarks.common import header, markdown_table, output_dir  # noqa: E402
from cdb import agents  # noqa: E402
from cdb.ensemble import LinearEnsemble, MLPEnsemble  # noqa: E402
from cdb.environments import LinearDuel, NeuralDuel  # noqa: E402


def make_envs(num_arms: int, feature_dim: int, batch_size: int, scale: float) -> dict:
    kwargs = dict(num_arms=num_arms, feature_dim=feature_dim, batch_size=batch_size, eval_batch_size=128, scale=scale)
    return {"LinearDuel": LinearDuel(**kwargs), "NeuralDuel": NeuralDuel(**kwargs)}


def reward_model_for(env_name: str, members: int):
    """Linear-Gaussian heads where the reward is linear (realizable), MLP heads with priors otherwise."""
    if env_name == "LinearDuel":
        return LinearEnsemble(num_members=members, prior_scale=1.0, noise_scale=0.5)
    return MLPEnsemble(num_members=members, hidden_sizes=(32, 32), prior_scale=1.0, steps_per_update=2, batch_size=32)


AGENTS = {
    "ee_ts (SEA)": lambda env_name, m: agents.ee_ts(reward_model=reward_model_for(env_name, m)),
    "bai_ts (SEA)": lambda env_name, m: agents.bai_ts(reward_model=reward_model_for(env_name, m)),
    "double_ts": lambda env_name, m: agents.double_ts(reward_model=reward_model_for(env_name, m)),
    "infomax": lambda env_name, m: agents.infomax(reward_model=reward_model_for(env_name, m)),
    "passive": lambda env_name, m: agents.passive(reward_model=reward_model_for(env_name, m)),
}
AGENTS.update(
    {
        "maxinp": lambda env_name, m: agents.MaxInP(),
        "colstim": lambda env_name, m: agents.CoLSTIM(),
    }
)
DEFAULT_AGENTS = list(AGENTS)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--arms", type=int, default=16)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--scale", type=float, default=8.0, help="BT inverse temperature of the oracle")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--agents", nargs="+", default=DEFAULT_AGENTS, choices=list(AGENTS), metavar="AGENT")
    parser.add_argument("--envs", nargs="+", default=["LinearDuel", "NeuralDuel"], choices=["LinearDuel", "NeuralDuel"])
    parser.add_argument("--out", default="benchmarks/results/regret_curves")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    print(header(), flush=True)
    out = output_dir(args.out)
    envs = make_envs(args.arms, args.dim, args.batch, args.scale)

    frames, rows, all_results = [], [], {}
    for env_name in args.envs:
        for agent_name in args.agents:
            start = time.perf_counter()
            agent = AGENTS[agent_name](env_name, args.members)
            res = cdb.run(
                agent,
                envs[env_name],
                rounds=args.rounds,
                seeds=args.seeds,
                eval_every=args.eval_every,
                key=0,
                progress=not args.no_progress,
            )
            seconds = time.perf_counter() - start
            all_results[env_name, agent_name] = res
            res.save(out / f"{env_name}_{agent_name.split()[0]}.npz", overwrite=True)  # a rerun replaces its files
            frame = res.to_dataframe()
            frame.insert(0, "agent", agent_name)
            frame.insert(0, "env", env_name)
            frames.append(frame)
            regret, regret_se = res.final("cumulative_regret")
            bai, bai_se = res.final("bai_regret")
            rows.append(
                {
                    "env": env_name,
                    "agent": agent_name,
                    "cumulative regret": f"{regret:.2f} ± {regret_se:.2f}",
                    "BAI regret": f"{bai:.3f} ± {bai_se:.3f}",
                    "seconds": f"{seconds:.1f}",
                }
            )
            print(
                f"{env_name:10s} {agent_name:14s} regret {regret:8.2f} ± {regret_se:.2f}  "
                f"BAI {bai:.3f} ± {bai_se:.3f}  ({seconds:.1f}s)",
                flush=True,
            )

    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "regret_curves.csv", index=False)
    fig, axes = plt.subplots(2, len(args.envs), figsize=(5.5 * len(args.envs), 7), squeeze=False)
    for col, env_name in enumerate(args.envs):
        for agent_name in args.agents:
            res = all_results[env_name, agent_name]
            res.plot("cumulative_regret", ax=axes[0, col], label=agent_name)
            res.plot("bai_regret", ax=axes[1, col], label=agent_name)
        axes[0, col].set_title(f"{env_name}: K={args.arms}, d={args.dim}, B={args.batch}, {args.seeds} seeds")
    fig.tight_layout()
    fig.savefig(out / "regret_curves.png", dpi=120)
    print()
    print(f"{args.rounds} rounds × B={args.batch} duels, {args.seeds} seeds; mean ± s.e. at the last round")
    table = markdown_table(rows, ["env", "agent", "cumulative regret", "BAI regret", "seconds"])
    print(table)
    (out / "regret_curves.md").write_text(table + "\n")
    print(f"\nwrote {out / 'regret_curves.csv'} and {out / 'regret_curves.png'}")
    return table


if __name__ == "__main__":
    main()
