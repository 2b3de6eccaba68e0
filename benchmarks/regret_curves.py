"""The default experiment: SEA's E&E Thompson sampling against baselines on tier-1 problems.

A sweep (``cdb.sweep``) of every agent × {LinearDuel, NeuralDuel}, ``--seeds`` seeds per cell, run
into the results store ``--store`` (default ``results/sweeps/regret_curves``, one folder per
cell; running the script again skips the cells that are done and resumes interrupted ones from
their checkpoints; ``--fresh`` starts over). Then it writes, from the store,

* ``<out>/regret_curves.csv``  — per (env, agent, seed, round): cumulative regrets, queries, BAI regret;
* ``<out>/regret_curves.png``  — cumulative regret and BAI regret, mean ± s.e. over seeds;
* ``<out>/regret_curves.md``   — the table it prints: final cumulative regret and BAI regret
  (mean ± s.e., from ``cdb.sweep.summarize``) and each cell's wall seconds.

    python benchmarks/regret_curves.py                 # the README's default experiment
    python benchmarks/regret_curves.py --rounds 50 --seeds 2 --agents ee_ts passive

The file also defines ``SWEEP`` (the default settings), so the same cells run as a job array::

    python -m cdb.sweep run benchmarks/regret_curves.py --store DIR --shard $TASK_ID/$TASK_COUNT
    python -m cdb.sweep summary DIR
"""

from __future__ import annotations

import argparse
import functools
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cdb import agents  # noqa: E402
from cdb.ensemble import LinearEnsemble, MLPEnsemble  # noqa: E402
from cdb.environments import LinearDuel, NeuralDuel  # noqa: E402
from cdb.report import header, markdown_table  # noqa: E402
from cdb.store import Store  # noqa: E402
from cdb.sweep import Sweep, run_sweep, summarize  # noqa: E402


def make_envs(num_arms: int, feature_dim: int, batch_size: int, scale: float) -> dict:
    kwargs = dict(num_arms=num_arms, feature_dim=feature_dim, batch_size=batch_size, eval_batch_size=128, scale=scale)
    return {"LinearDuel": LinearDuel(**kwargs), "NeuralDuel": NeuralDuel(**kwargs)}


def reward_model_for(env_name: str, members: int):
    """Linear-Gaussian heads where the reward is linear (realizable), MLP heads with priors otherwise."""
    if env_name == "LinearDuel":
        return LinearEnsemble(num_members=members, prior_scale=1.0, noise_scale=0.5)
    return MLPEnsemble(num_members=members, hidden_sizes=(32, 32), prior_scale=1.0, steps_per_update=2, batch_size=32)


AGENTS = {
    "ee_ts (SEA)": lambda env_name, members: agents.ee_ts(reward_model=reward_model_for(env_name, members)),
    "bai_ts (SEA)": lambda env_name, members: agents.bai_ts(reward_model=reward_model_for(env_name, members)),
    "ensemble_double_ts": lambda env_name, members: agents.ensemble_double_ts(
        reward_model=reward_model_for(env_name, members)
    ),
    "infomax": lambda env_name, members: agents.infomax(reward_model=reward_model_for(env_name, members)),
    "passive": lambda env_name, members: agents.passive(reward_model=reward_model_for(env_name, members)),
    "maxinp": lambda env_name, members: agents.MaxInP(),
    "colstim": lambda env_name, members: agents.CoLSTIM(),
}
DEFAULT_AGENTS = list(AGENTS)
ENVS = ["LinearDuel", "NeuralDuel"]


def make_sweep(
    rounds: int = 200,
    seeds: int = 8,
    eval_every: int = 20,
    arms: int = 16,
    dim: int = 8,
    batch: int = 4,
    scale: float = 8.0,
    members: int = 8,
    agent_names: list[str] | None = None,
    env_names: list[str] | None = None,
) -> Sweep:
    """The sweep of agents × environments (``key=0`` for every cell: common random numbers)."""
    envs = make_envs(arms, dim, batch, scale)
    return Sweep(
        agents={name: functools.partial(AGENTS[name], members=members) for name in agent_names or DEFAULT_AGENTS},
        envs={name: envs[name] for name in env_names or ENVS},
        rounds=rounds,
        seeds=seeds,
        eval_every=eval_every,
        key=0,
        # a cell takes seconds: running one again costs less than orbax saves after every block,
        # and the seconds column then times cdb.run alone, as the README's figures do
        checkpoints=False,
    )


SWEEP = make_sweep()


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
    parser.add_argument("--envs", nargs="+", default=ENVS, choices=ENVS)
    parser.add_argument("--out", default="benchmarks/results/regret_curves")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--store", default="results/sweeps/regret_curves", help="the sweep's results store")
    parser.add_argument("--fresh", action="store_true", help="empty the store first instead of reusing done cells")
    args = parser.parse_args(argv)
    print(header(), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(args.store)
    if args.fresh:
        shutil.rmtree(store.root, ignore_errors=True)
    sweep = make_sweep(
        args.rounds,
        args.seeds,
        args.eval_every,
        args.arms,
        args.dim,
        args.batch,
        args.scale,
        args.members,
        args.agents,
        args.envs,
    )
    report = run_sweep(sweep, store, progress=not args.no_progress)
    print(report, flush=True)
    summary = summarize(store, sweep, metrics=["cumulative_regret", "bai_regret"])
    if summary.missing:
        raise SystemExit(f"cells without results: {summary.missing} (see {store.root})")
    formatted = {row["experiment"]: row for row in summary.rows()}

    frames, rows, all_results = [], [], {}
    for env_name in args.envs:
        for agent_name in args.agents:
            experiment = f"{env_name}/{agent_name}"
            res = all_results[env_name, agent_name] = summary.results[experiment]
            frame = res.to_dataframe()
            frame.insert(0, "agent", agent_name)
            frame.insert(0, "env", env_name)
            frames.append(frame)
            row = formatted[experiment]
            rows.append(
                {
                    "env": env_name,
                    "agent": agent_name,
                    "cumulative regret": row["cumulative_regret"],
                    "BAI regret": row["bai_regret"],
                    "seconds": row["seconds"],
                }
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
    print(f"\nwrote {out / 'regret_curves.csv'}, {out / 'regret_curves.png'} and {out / 'regret_curves.md'}")
    return table


if __name__ == "__main__":
    main()
