"""Decisions per second: compiled, vmapped E&E-TS against the same algorithm as a NumPy loop.

Both sides run one algorithm: LinearDuel (K arms with features φ ~ N(0, I/d) drawn from a fixed
pool of 4096 contexts — ``LinearDuel(context_pool=4096)``, so a round costs B random indices
rather than B·K·d normals — θ* on the unit sphere, Bradley–Terry oracle), linear-Gaussian
ensemble heads by ensemble sampling with Sherman–Morrison updates (``cdb.ensemble.LinearEnsemble``),
and SEA's E&E-TS rule
(``cdb.selection.EETS``: a random member's argmax, then the argmax of the first further random
member that disagrees, else the first member's second best).

* JAX: ``cdb.run`` over all seeds at once (``lax.scan`` over rounds, ``vmap`` over seeds), timed
  on later calls that reuse the compiled program; the first call's compile time is printed too.
  With ``--devices N`` (default: 2, the cores of the reference machine) the host CPU is split
  into N XLA devices and ``cdb.run`` shards the seeds across them (DESIGN §7), one core each.
  Each device runs its seeds in chunks of ``cdb.run.CPU_SEED_CHUNK`` (``seed_chunk="auto"``, the
  default), and XLA compiles with ``cdb.run.CPU_COMPILER_OPTIONS`` (``compiler_options="auto"``).
  Timed alongside, their repeats interleaved with the default's: the same run with all of a
  device's seeds at once (``seed_chunk=None``) and with XLA's default options
  (``compiler_options=None``).
* NumPy: a plain per-seed, per-round loop (vectorized over the batch and the members inside a
  round, as a careful NumPy user would write it), timed on a subset of seeds; its cost is
  linear in the seeds, so decisions/s does not depend on the subset size. It is timed in one
  process (the plain loop the ratio is defined against), its repeats interleaved with the JAX
  repeats so that the machine's noise hits both alike, and, for a same-cores comparison, in
  ``--devices`` processes at once. Each side reports its best of ``--repeats``.

A decision is one duel (one pair chosen for one context). Prints both rates and their ratio,
and writes them to ``<out>/throughput.json``.

    python benchmarks/throughput.py            # d=16, K=32, E=8, 1024 seeds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

import numpy as np

POOL = 4096


def numpy_ee_ts(
    seed: int,
    rounds: int,
    arms: int,
    dim: int,
    batch: int,
    members: int,
    max_tries: int,
    scale: float,
    prior_scale: float,
    noise_scale: float,
    regularization: float,
    pool: np.ndarray,
) -> float:
    """One seed of E&E-TS with linear-Gaussian ensemble heads on LinearDuel, in NumPy.

    Returns the cumulative average regret (so the work cannot be optimised away).
    """
    rng = np.random.default_rng(seed)
    theta_star = rng.normal(size=dim)
    theta_star /= np.linalg.norm(theta_star)
    p_inv = np.eye(dim) / regularization
    theta = prior_scale * rng.normal(size=(members, dim))
    rows = np.arange(batch)
    regret = 0.0
    for _ in range(rounds):
        phi = pool[rng.integers(len(pool), size=batch)]
        scores = np.einsum("bkd,ed->bek", phi, theta)  # [B, E, K]
        first_member = rng.integers(members, size=batch)
        first_scores = scores[rows, first_member]  # [B, K]
        a1 = first_scores.argmax(axis=1)
        tries = rng.integers(members, size=(batch, max_tries))
        try_argmax = scores[rows[:, None], tries].argmax(axis=2)  # [B, tries]
        differs = try_argmax != a1[:, None]
        masked = first_scores.copy()
        masked[rows, a1] = -np.inf
        a2 = np.where(differs.any(axis=1), try_argmax[rows, differs.argmax(axis=1)], masked.argmax(axis=1))
        r = phi @ theta_star  # [B, K]
        r1, r2 = r[rows, a1], r[rows, a2]
        regret += float(np.sum(r.max(axis=1) - (r1 + r2) / 2))
        z = rng.random(batch) < 1.0 / (1.0 + np.exp(-scale * (r1 - r2)))
        x = phi[rows, a1] - phi[rows, a2]
        y = 2.0 * z - 1.0
        eps = noise_scale * rng.normal(size=(batch, members))
        for i in range(batch):  # recursive least squares, one pair at a time
            px = p_inv @ x[i]
            denom = 1.0 + x[i] @ px
            p_inv -= np.outer(px, px) / denom
            theta += np.outer(y[i] + eps[i] - theta @ x[i], px / denom)
    return regret


def _numpy_seeds(seeds: list[int], kwargs: dict) -> list[float]:
    return [numpy_ee_ts(s, **kwargs) for s in seeds]


def _use_host_devices(n: int) -> None:
    """Splits the host CPU into ``n`` XLA devices; only possible before JAX initialises."""
    if "jax" in sys.modules:
        import jax

        if jax.device_count() != n:
            print(f"warning: JAX is already initialised with {jax.device_count()} device(s); --devices={n} ignored")
        return
    flag = f"--xla_force_host_platform_device_count={n}"
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), flag]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--arms", type=int, default=32)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--numpy-seeds", type=int, default=32, help="seeds timed for the NumPy loop (per process)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each side, interleaved; the best is reported"
    )
    parser.add_argument("--devices", type=int, default=2, help="host CPU devices to shard the seeds over")
    parser.add_argument(
        "--seed-chunks", type=int, nargs="*", default=[], help="further seed_chunk sizes to time side by side"
    )
    parser.add_argument("--out", default="benchmarks/results/throughput")
    args = parser.parse_args(argv)
    _use_host_devices(args.devices)

    import jax

    import cdb
    from cdb.agents import ee_ts
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel
    from cdb.environments.feature_duel import make_context_pool
    from cdb.report import header, output_dir
    from cdb.run import resolve_compiler_options, resolve_seed_chunk

    print(header(), flush=True)
    print(f"JAX devices: {jax.device_count()} ({jax.devices()[0].platform})", flush=True)
    model = LinearEnsemble(num_members=args.members, prior_scale=1.0, noise_scale=0.5, regularization=1.0)
    agent = ee_ts(reward_model=model, max_tries=8)
    env = LinearDuel(
        num_arms=args.arms, feature_dim=args.dim, batch_size=args.batch, eval_batch_size=8, scale=8.0, context_pool=POOL
    )
    pool = make_context_pool(POOL, args.arms, args.dim, env.pool_seed).astype(np.float64)
    decisions = args.seeds * args.rounds * args.batch

    # the default (seeds in chunks of cdb.run.CPU_SEED_CHUNK per device, cdb.run's XLA options)
    # and, side by side with it, every seed of a device at once, XLA's default options and any
    # --seed-chunks; the repeats alternate so that noise hits all of them alike
    variants = {
        "default": {},
        "unchunked": {"seed_chunk": None},
        "xla_defaults": {"compiler_options": None},
        **{f"chunks of {c}": {"seed_chunk": c} for c in args.seed_chunks},
    }
    first_seconds, jax_seconds, results = {}, {v: [] for v in variants}, {}
    for name, kwargs in variants.items():
        start = time.perf_counter()
        results[name] = cdb.run(agent, env, rounds=args.rounds, seeds=args.seeds, progress=False, **kwargs)
        first_seconds[name] = time.perf_counter() - start
        # the same draws as the default (XLA's default options sum in another order: equal to
        # float rounding, not bit for bit)
        reference = results["default"].metrics["regret"]
        np.testing.assert_allclose(results[name].metrics["regret"], reference, rtol=1e-5, atol=1e-5)
    numpy_kwargs = dict(
        rounds=args.rounds,
        arms=args.arms,
        dim=args.dim,
        batch=args.batch,
        members=args.members,
        max_tries=8,
        scale=8.0,
        prior_scale=1.0,
        noise_scale=0.5,
        regularization=1.0,
        pool=pool,
    )
    # Both sides are timed `repeats` times, their repeats interleaved so that the machine's noise
    # hits them alike, and both report their best.
    numpy_seconds = []
    for _ in range(args.repeats):
        for name, kwargs in variants.items():
            start = time.perf_counter()
            res = cdb.run(agent, env, rounds=args.rounds, seeds=args.seeds, progress=False, **kwargs)
            jax_seconds[name].append(time.perf_counter() - start)
            np.testing.assert_array_equal(res.metrics["regret"], results[name].metrics["regret"])
        start = time.perf_counter()
        numpy_regrets = _numpy_seeds(list(range(args.numpy_seeds)), numpy_kwargs)
        numpy_seconds.append(time.perf_counter() - start)
    rates = {name: decisions / min(seconds) for name, seconds in jax_seconds.items()}
    jax_rate, unchunked_rate, xla_defaults_rate = rates["default"], rates["unchunked"], rates["xla_defaults"]
    res = results["default"]
    numpy_rate = args.numpy_seeds * args.rounds * args.batch / min(numpy_seconds)

    # the same loop on every core: each process takes numpy_seeds seeds
    chunks = [list(range(i * args.numpy_seeds, (i + 1) * args.numpy_seeds)) for i in range(args.devices)]
    with multiprocessing.get_context("spawn").Pool(args.devices) as workers:
        workers.map(abs, range(args.devices))  # the workers have started before the clock does
        parallel_seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            workers.starmap(_numpy_seeds, [(c, numpy_kwargs) for c in chunks])
            parallel_seconds.append(time.perf_counter() - start)
    numpy_parallel_rate = args.devices * args.numpy_seeds * args.rounds * args.batch / min(parallel_seconds)

    jax_regret = res.final("cumulative_regret")[0] / args.batch
    numpy_regret = float(np.mean(numpy_regrets)) / args.batch
    figures = {
        "seeds": args.seeds,
        "rounds": args.rounds,
        "arms": args.arms,
        "dim": args.dim,
        "batch": args.batch,
        "members": args.members,
        "jax_decisions_per_s": jax_rate,
        "numpy_decisions_per_s": numpy_rate,
        "ratio": jax_rate / numpy_rate,
        "devices": jax.device_count(),
        "numpy_processes": args.devices,
        "numpy_parallel_decisions_per_s": numpy_parallel_rate,
        "ratio_same_cores": jax_rate / numpy_parallel_rate,
        "seed_chunk": resolve_seed_chunk("auto"),
        "compiler_options": resolve_compiler_options("auto"),
        "jax_decisions_per_s_by_variant": rates,  # "default" is jax_decisions_per_s
        "jax_first_call_s": first_seconds["default"],
        "jax_best_s": min(jax_seconds["default"]),
        "numpy_seeds_timed": args.numpy_seeds,
        "numpy_best_s": min(numpy_seconds),
        "mean_cumulative_regret_per_context_jax": jax_regret,
        "mean_cumulative_regret_per_context_numpy": numpy_regret,
    }
    print(
        f"E&E-TS, LinearDuel d={args.dim} K={args.arms} B={args.batch}, E={args.members} linear-Gaussian heads, "
        f"{args.rounds} rounds"
    )
    print(
        f"JAX   ({args.seeds} seeds, compiled, vmapped, {jax.device_count()} device(s)): {jax_rate:,.0f} decisions/s "
        f"(best of {args.repeats}: {min(jax_seconds['default']):.2f}s; first call with compile "
        f"{first_seconds['default']:.2f}s)"
    )
    print(
        f"      the same, all of a device's seeds at once (seed_chunk=None): {unchunked_rate:,.0f} decisions/s "
        f"(chunks: {jax_rate / unchunked_rate:.2f}x)"
    )
    print(
        f"      the same with XLA's default options (compiler_options=None): {xla_defaults_rate:,.0f} decisions/s "
        f"(cdb.run's options {resolve_compiler_options('auto')}: {jax_rate / xla_defaults_rate:.2f}x)"
    )
    for name, rate in rates.items():
        if name.startswith("chunks of"):
            print(f"      the same in {name} seeds (--seed-chunks): {rate:,.0f} decisions/s")
    print(
        f"NumPy ({args.numpy_seeds} seeds, per-seed loop):   {numpy_rate:,.0f} decisions/s "
        f"(best of {args.repeats}: {min(numpy_seconds):.2f}s)"
    )
    print(f"NumPy ({args.devices} processes, same loop):  {numpy_parallel_rate:,.0f} decisions/s")
    print(
        f"ratio JAX / NumPy: {jax_rate / numpy_rate:,.0f}x (one process), "
        f"{jax_rate / numpy_parallel_rate:,.0f}x ({args.devices} processes)"
    )
    print(f"sanity: mean cumulative regret per context, JAX {jax_regret:.2f} vs NumPy {numpy_regret:.2f}")
    out = output_dir(args.out)
    (out / "throughput.json").write_text(json.dumps(figures, indent=2))
    print(f"wrote {out / 'throughput.json'}")
    return figures


if __name__ == "__main__":
    main()
