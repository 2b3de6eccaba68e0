"""Peak memory of ``cdb.run`` against the number of seeds, for the MLP and the linear ensemble.

Each setting runs in a fresh Python process (so one setting's allocations never count towards
another's) and reports that process's peak resident set size (``ru_maxrss``): imports, JAX's
runtime, compilation and the run itself. Settings:

* ``mlp``: ``ee_ts()`` with its default ``MLPEnsemble`` (8 members, two hidden layers of 32,
  a 4096-pair replay buffer) on ``LinearDuel()`` (K = 10 arms, d = 8, B = 1, 64 held-out contexts);
* ``linear``: ``ee_ts(reward_model=LinearEnsemble(num_members=8))`` on the same environment;
* ``mlp_unchunked``: the MLP setting with ``seed_chunk=None`` (every seed of a device at once),
  the layout whose evaluation made memory grow by about 7.5 MB a seed (run up to
  ``--max-unchunked-seeds``, 256 by default).

The per-seed cost is the slope between the two largest seed counts; the carried state itself
(agent state, environment state, observation) is printed alongside, from ``jax.eval_shape``.

    python benchmarks/memory.py                       # seeds 64 256 1024, all three settings
    python benchmarks/memory.py --seeds 64 256 --settings mlp linear
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys
import jax
import numpy as np
import cdb
from cdb.agents import ee_ts
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel

setting, seeds, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = LinearDuel()
agent = ee_ts(reward_model=LinearEnsemble(num_members=8)) if setting == "linear" else ee_ts()
chunk = None if setting == "mlp_unchunked" else "auto"
state = jax.eval_shape(lambda k: (agent.init(k, env.spec), env.reset(k, env.default_params)), jax.random.key(0))
carry_mb = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)) / 2**20
results = cdb.run(agent, env, rounds=rounds, seeds=seeds, eval_every=rounds // 2, progress=False, seed_chunk=chunk)
assert np.all(np.isfinite(results.metrics["regret"]))
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
print(json.dumps({"setting": setting, "seeds": seeds, "peak_mb": peak_mb, "carry_mb_per_seed": carry_mb}))
"""


def measure(setting: str, seeds: int, rounds: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, setting, str(seeds), str(rounds)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{setting} with {seeds} seeds failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--settings", nargs="+", default=["mlp", "linear", "mlp_unchunked"])
    # about 7.5 MB a seed: 1024 unchunked seeds would hold some 8 GB of a shared machine
    parser.add_argument("--max-unchunked-seeds", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory")
    args = parser.parse_args()

    rows = []
    for setting in args.settings:
        for seeds in args.seeds:
            if setting == "mlp_unchunked" and seeds > args.max_unchunked_seeds:
                continue
            row = measure(setting, seeds, args.rounds)
            print(f"{setting:>14} {seeds:>6} seeds: peak {row['peak_mb']:8.1f} MB", flush=True)
            rows.append(row)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "memory.csv", "w") as f:
        f.write("setting,seeds,peak_mb,carry_mb_per_seed\n")
        for r in rows:
            f.write(f"{r['setting']},{r['seeds']},{r['peak_mb']:.1f},{r['carry_mb_per_seed']:.4f}\n")

    table = ["| setting | " + " | ".join(f"{s} seeds" for s in args.seeds) + " | MB a seed (slope) | carry MB a seed |"]
    table.append("|---" * (len(args.seeds) + 3) + "|")
    for setting in args.settings:
        mine = sorted((r for r in rows if r["setting"] == setting), key=lambda r: r["seeds"])
        by_seeds = {r["seeds"]: f"{r['peak_mb']:.0f} MB" for r in mine}
        peaks = [by_seeds.get(s, "not run") for s in args.seeds]
        a, b = mine[-2], mine[-1]
        slope = (b["peak_mb"] - a["peak_mb"]) / (b["seeds"] - a["seeds"])
        table.append(f"| {setting} | " + " | ".join(peaks) + f" | {slope:.3f} | {mine[0]['carry_mb_per_seed']:.4f} |")
    command = "python benchmarks/memory.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    (args.out / "table.md").write_text(
        f"command: `{command.strip()}`  \nmachine: {machine}  \n"
        f"date: {datetime.date.today().isoformat()}  \nrounds: {args.rounds}\n\n" + "\n".join(table) + "\n"
    )
    print("\n".join(table))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for setting in args.settings:
            mine = sorted((r for r in rows if r["setting"] == setting), key=lambda r: r["seeds"])
            ax.plot([r["seeds"] for r in mine], [r["peak_mb"] for r in mine], marker="o", label=setting)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("seeds")
        ax.set_ylabel("peak RSS (MB)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "memory.png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
