"""K-armed duels per second: compiled, vmapped DTS and RUCB against the same algorithms as NumPy loops.

Both sides run one algorithm on one problem: ``KArmedDuel(num_arms=16, preference_matrix=P)``
with the Bradley–Terry matrix ``P_ij = σ(u_i − u_j)``, ``u_i = −0.15 i`` (Condorcet winner arm
0), one duel per round, and

* Double Thompson Sampling (Wu & Liu 2016; ``cdb.agents.DoubleThompsonSampling``),
* RUCB (Zoghi et al. 2014; ``cdb.agents.RUCB``), both with ``α = 0.51``.

* JAX: ``cdb.run`` over all seeds at once (``lax.scan`` over rounds, ``vmap`` over seeds, seeds
  sharded over ``--devices`` XLA CPU devices, default 2), timed on calls that reuse the compiled
  program; the first call's time (compilation included) is printed too.
* NumPy: a plain per-seed, per-round loop (vectorised over the ``K × K`` matrices inside a
  round; DTS draws its Beta samples with ``Generator.beta``), timed in one process on
  ``--numpy-seeds`` seeds per repeat (its cost is linear in the seeds).

Repeats of the two sides are interleaved so that the machine's noise hits both alike; each side
reports its best and its range. Regret: the mean ± standard error over seeds of the cumulative
regret after ``--rounds`` rounds, for both sides (the NumPy seeds of all repeats pooled).

``--breakdown`` also times the pieces of one DTS round in isolation (one compiled ``lax.scan``
of ``--breakdown-rounds`` steps over a vmapped batch of 128 seeds each, on a random wins matrix), including
the ``jax.random.beta`` draws an implementation that samples ``θ¹`` and ``θ²`` directly would
need: that is where the time of such an implementation goes.

    python benchmarks/karmed_throughput.py --breakdown      # K=16, 256 seeds, 2000 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ALPHA = 0.51


def preference_matrix(num_arms: int, step: float = 0.15) -> np.ndarray:
    u = -step * np.arange(num_arms)
    return 1.0 / (1.0 + np.exp(-(u[:, None] - u[None, :])))


def _bounds(wins: np.ndarray, t: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    n = wins + wins.T
    played = n > 0
    safe = np.where(played, n, 1.0)
    mean = np.where(played, wins / safe, 1.0)
    radius = np.sqrt(np.where(played, alpha * np.log(t) / safe, 1.0))
    upper, lower = mean + radius, mean - radius
    np.fill_diagonal(upper, 0.5)
    np.fill_diagonal(lower, 0.5)
    return upper, lower


def numpy_dts(seed: int, rounds: int, p: np.ndarray, alpha: float = ALPHA) -> float:
    """One seed of Double Thompson Sampling (Wu & Liu 2016, Algorithm 1) in NumPy; returns cumulative regret."""
    rng = np.random.default_rng(seed)
    k = len(p)
    best = int(np.argmax(np.all((p > 0.5) | np.eye(k, dtype=bool), axis=1)))
    wins = np.zeros((k, k))
    iu = np.triu_indices(k, 1)
    eye = np.eye(k, dtype=bool)
    regret = 0.0
    for t in range(1, rounds + 1):  # one queried duel per round: t = queried duels + 1
        upper, lower = _bounds(wins, t, alpha)
        zeta = np.sum((upper > 0.5) & ~eye, axis=1)
        in_c = zeta == zeta.max()
        theta = rng.beta(wins[iu] + 1.0, wins.T[iu] + 1.0)
        above = np.zeros((k, k), bool)
        above[iu] = theta > 0.5
        above[iu[1], iu[0]] = theta <= 0.5
        score = np.where(in_c, above.sum(axis=1), -1)
        a1 = int(rng.choice(np.flatnonzero(score == score.max())))
        theta2 = rng.beta(wins[:, a1] + 1.0, wins[a1, :] + 1.0)
        theta2[a1] = 0.5
        a2 = int(np.argmax(np.where(lower[:, a1] <= 0.5, theta2, -np.inf)))
        regret += (p[best, a1] + p[best, a2] - 1.0) / 2.0
        if a1 != a2:
            if rng.random() < p[a1, a2]:
                wins[a1, a2] += 1.0
            else:
                wins[a2, a1] += 1.0
    return regret


def numpy_rucb(seed: int, rounds: int, p: np.ndarray, alpha: float = ALPHA) -> float:
    """One seed of RUCB (Zoghi et al. 2014) in NumPy; returns cumulative regret."""
    rng = np.random.default_rng(seed)
    k = len(p)
    best = int(np.argmax(np.all((p > 0.5) | np.eye(k, dtype=bool), axis=1)))
    wins = np.zeros((k, k))
    regret = 0.0
    for t in range(1, rounds + 1):
        upper, _ = _bounds(wins, t, alpha)
        candidates = np.all(upper >= 0.5, axis=1)
        c = int(rng.choice(np.flatnonzero(candidates) if candidates.any() else np.arange(k)))
        column = upper[:, c]
        d = int(rng.choice(np.flatnonzero(column >= column.max())))
        regret += (p[best, c] + p[best, d] - 1.0) / 2.0
        if c != d:
            if rng.random() < p[c, d]:
                wins[c, d] += 1.0
            else:
                wins[d, c] += 1.0
    return regret


NUMPY = {"dts": numpy_dts, "rucb": numpy_rucb}


def _use_host_devices(n: int) -> None:
    flag = f"--xla_force_host_platform_device_count={n}"
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), flag]))


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def breakdown(num_arms: int, rounds: int, seeds: int = 128) -> dict[str, float]:
    """Seconds for ``rounds`` steps over ``seeds`` vmapped seeds of each piece of a DTS round."""
    import jax
    import jax.numpy as jnp

    from cdb.agents import karmed

    k = num_arms
    wins0 = jax.random.randint(jax.random.key(0), (seeds, k, k), 0, 60).astype(jnp.float32)
    q0 = jax.vmap(karmed.beats_half)(wins0)

    def bounds_and_copeland(key, wins, t):
        upper, lower = karmed.confidence_bounds(wins, t, ALPHA)
        zeta = jnp.sum((upper > 0.5) & ~jnp.eye(k, dtype=bool), axis=1)
        return jnp.argmax(zeta) + jnp.argmax(lower[:, 0])

    def jax_beta_both(key, wins, t):  # θ¹ (all K² entries, as drawn by jax.random.beta) and θ²
        k1, k2 = jax.random.split(key)
        theta1 = jax.random.beta(k1, wins + 1.0, wins.T + 1.0)
        theta2 = jax.random.beta(k2, wins[:, 0] + 1.0, wins[0, :] + 1.0)
        return jnp.argmax(jnp.sum(theta1 > 0.5, axis=1)) + jnp.argmax(theta2)

    def theta1_signs(key, wins, t):  # the signs drawn directly from q (what the agent does)
        u = karmed.rng.uniform(key, (k, k))
        return jnp.argmax(jnp.sum(u < q0[0], axis=1))

    def theta2_gamma(key, wins, t):  # θ² by cdb's Marsaglia–Tsang draws
        return jnp.argmax(karmed.beta_integer(key, wins[:, 0] + 1.0, wins[0, :] + 1.0))

    def full_pair(key, wins, t):
        return jnp.sum(karmed.dts_pair(key, wins, t, ALPHA, q0[0]))

    pieces = {
        "bounds + upper Copeland (K x K)": bounds_and_copeland,
        "jax.random.beta: theta1 (K x K) + theta2 (K)": jax_beta_both,
        "theta1 signs from q (one uniform per pair)": theta1_signs,
        "theta2 by Marsaglia-Tsang (K)": theta2_gamma,
        "whole dts_pair (agent's select)": full_pair,
    }
    out = {}
    for name, fn in pieces.items():

        def body(carry, t, fn=fn):
            wins, acc = carry
            keys = jax.random.split(jax.random.fold_in(jax.random.key(1), t), seeds)
            r = jax.vmap(fn, in_axes=(0, 0, None))(keys, wins, t + 1)
            return (wins + (r[:, None, None] % 2).astype(jnp.float32) * 1e-3, acc + r), None

        run = jax.jit(lambda w, fn=body: jax.lax.scan(fn, (w, jnp.zeros(seeds, jnp.int32)), jnp.arange(rounds))[0])
        jax.block_until_ready(run(wins0))
        best = np.inf
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(run(wins0))
            best = min(best, time.perf_counter() - start)
        out[name] = best
        print(f"  {name:50s} {best:8.3f} s  ({seeds * rounds / best:,.0f} /s)")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--numpy-seeds", type=int, default=4, help="NumPy seeds timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--breakdown-rounds", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "karmed_throughput"))
    args = parser.parse_args(argv)
    _use_host_devices(args.devices)

    import jax

    import cdb
    from cdb.agents import RUCB, DoubleThompsonSampling
    from cdb.environments import KArmedDuel

    p = preference_matrix(args.arms)
    env = KArmedDuel(num_arms=args.arms, preference_matrix=p)
    agents = {"dts": DoubleThompsonSampling(alpha=ALPHA), "rucb": RUCB(alpha=ALPHA)}
    duels = args.seeds * args.rounds
    report: dict = {
        "date": "2026-11-30",
        "command": "python benchmarks/karmed_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, JAX {jax.__version__}, {jax.device_count()} XLA CPU devices",
        "arms": args.arms,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "rows": {},
    }
    jax_times = {n: [] for n in agents}
    np_rates = {n: [] for n in agents}
    jax_regret, np_regret = {}, {n: [] for n in agents}
    for name, agent in agents.items():
        start = time.perf_counter()
        res = cdb.run(agent, env, rounds=args.rounds, seeds=args.seeds, progress=False)
        print(f"{name}: first cdb.run (compilation included) {time.perf_counter() - start:.1f} s")
        jax_regret[name] = res.metrics["regret"].sum(axis=1)
    for rep in range(args.repeats):
        for name, agent in agents.items():
            start = time.perf_counter()
            cdb.run(agent, env, rounds=args.rounds, seeds=args.seeds, progress=False)
            jax_times[name].append(time.perf_counter() - start)
            numpy_seeds = range(rep * args.numpy_seeds, (rep + 1) * args.numpy_seeds)
            start = time.perf_counter()
            np_regret[name] += [NUMPY[name](1000 + s, args.rounds, p) for s in numpy_seeds]
            np_rates[name].append(args.numpy_seeds * args.rounds / (time.perf_counter() - start))
            print(
                f"repeat {rep}: {name} cdb.run {duels / jax_times[name][-1]:,.0f} duels/s, "
                f"NumPy {np_rates[name][-1]:,.0f} duels/s"
            )
    for name in agents:
        jax_rates = [duels / t for t in jax_times[name]]
        row = {
            "cdb_run_duels_per_s": max(jax_rates),
            "cdb_run_range": [min(jax_rates), max(jax_rates)],
            "numpy_duels_per_s": max(np_rates[name]),
            "numpy_range": [min(np_rates[name]), max(np_rates[name])],
            "ratio": max(jax_rates) / max(np_rates[name]),
            "cdb_run_regret_mean_se": _mean_se(jax_regret[name]),
            "numpy_regret_mean_se": _mean_se(np_regret[name]),
            "numpy_regret_seeds": len(np_regret[name]),
        }
        report["rows"][name] = row
        print(
            f"{name}: cdb.run {row['cdb_run_duels_per_s']:,.0f} duels/s (range {row['cdb_run_range'][0]:,.0f}-"
            f"{row['cdb_run_range'][1]:,.0f}), NumPy {row['numpy_duels_per_s']:,.0f} (range "
            f"{row['numpy_range'][0]:,.0f}-{row['numpy_range'][1]:,.0f}), ratio {row['ratio']:.0f}x; regret "
            f"cdb.run {row['cdb_run_regret_mean_se'][0]:.2f} ± {row['cdb_run_regret_mean_se'][1]:.2f}, NumPy "
            f"{row['numpy_regret_mean_se'][0]:.2f} ± {row['numpy_regret_mean_se'][1]:.2f} "
            f"({row['numpy_regret_seeds']} seeds)"
        )
    if args.breakdown:
        print(f"DTS round pieces, {args.breakdown_rounds} rounds x 128 vmapped seeds on one device:")
        report["breakdown_rounds"] = args.breakdown_rounds
        report["breakdown_seconds"] = breakdown(args.arms, args.breakdown_rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "karmed_throughput.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
