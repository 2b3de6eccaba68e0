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
  into N XLA devices and ``cdb.run`` shards the seeds across them (docs/design.md §8), one core each.
  Each device runs its seeds in chunks of ``cdb.xla_options.CPU_SEED_CHUNK`` (``seed_chunk="auto"``,
  the default), and XLA compiles with ``cdb.xla_options.CPU_COMPILER_OPTIONS`` (``compiler_options="auto"``).
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

* ``--compare PATH``: the JAX default run of the installed ``cdb`` (A) against the one in another
  checkout of the library at PATH (B: a folder holding its ``setup.cfg``, ``cdb/``, ``agents/``,
  ``environments/``, e.g. a ``git worktree`` of an older commit), with this script's settings and
  this script's benchmark code on both sides, under the same Python and JAX. Each side runs in its
  own worker process, started with the same XLA flags and compiled once; the timed runs then
  alternate A B B A A B ... (``--compare-repeats`` each), so that the machine's noise and drift
  hit both alike and neither always goes first. Written to ``throughput.json`` under ``compare``:
  each side's decisions/s (min / median / max and every run), its first call with compilation,
  where its ``cdb`` was imported from and its git commit, whether both reached the same regret,
  the ratio A / B of the medians and the median of the ratios of the A-B pairs, and the load
  average at the start and the end. ``--compare-only`` skips everything else.

    python benchmarks/throughput.py            # d=16, K=32, E=8, 1024 seeds
    python benchmarks/throughput.py --compare ../old --compare-only   # this checkout vs ../old
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def import_from_checkout(root: str | os.PathLike) -> None:
    """Makes ``import cdb`` load the library from the checkout at ``root`` rather than the installed one.

    The packages and their folders are the checkout's own ``setup.cfg`` ``package_dir`` (``cdb``,
    ``cdb.agents`` -> ``agents/``, ``cdb.environments`` -> ``environments/``). The finder goes first
    on the meta path, ahead of an editable install's finder, which would otherwise map
    ``cdb.agents`` to the installed checkout's folder. Call it before anything imports ``cdb``.
    """
    import configparser
    import importlib.util

    root = Path(root).resolve()
    config = configparser.ConfigParser()
    if not config.read(root / "setup.cfg"):
        raise ValueError(f"--compare {root}: no setup.cfg there; expected the root of a checkout of cdb")
    lines = config.get("options", "package_dir", fallback="cdb = cdb").strip().splitlines()
    folders = {
        name.strip(): root / folder.strip() for name, folder in (line.split("=") for line in lines if "=" in line)
    }
    folders.setdefault("cdb", root / "cdb")
    if not (folders["cdb"] / "__init__.py").is_file():
        raise ValueError(f"--compare {root}: no cdb/__init__.py there; expected the root of a checkout of cdb")

    class CheckoutFinder:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            folder = folders.get(fullname)
            if folder is None:
                return None  # submodules are found on their parent package's __path__, inside the checkout
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )

    sys.meta_path.insert(0, CheckoutFinder)


_REPLY = "throughput-worker: "


def _worker(args) -> None:
    """One side of ``--compare``: compiles the default run once, then times one run per line on stdin."""
    if args.worker != "installed":
        import_from_checkout(args.worker)
    import jax

    import cdb
    import cdb.agents
    from cdb.agents import ee_ts
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel

    model = LinearEnsemble(num_members=args.members, prior_scale=1.0, noise_scale=0.5, regularization=1.0)
    agent = ee_ts(reward_model=model, max_tries=8)
    env = LinearDuel(
        num_arms=args.arms, feature_dim=args.dim, batch_size=args.batch, eval_batch_size=8, scale=8.0, context_pool=POOL
    )

    def one_run():
        return cdb.run(agent, env, rounds=args.rounds, seeds=args.seeds, progress=False)

    def reply(**message):
        print(_REPLY + json.dumps(message), flush=True)

    start = time.perf_counter()
    first = one_run()
    reply(
        first_call_s=time.perf_counter() - start,
        cdb_file=cdb.__file__,
        agents_file=cdb.agents.__file__,
        devices=jax.device_count(),
        regret=np.asarray(first.metrics["regret"]).tolist(),
    )
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        res = one_run()
        seconds = time.perf_counter() - start
        np.testing.assert_array_equal(res.metrics["regret"], first.metrics["regret"])
        reply(seconds=seconds)


def _git_commit(folder: str | os.PathLike) -> str | None:
    """``folder``'s checkout's commit, with ``+changes`` if its tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty else "")


class _Side:
    """A worker process timing the default run of one checkout (``"installed"``: the installed cdb)."""

    def __init__(self, checkout: str, args, env: dict):
        settings = ["--seeds", "--rounds", "--arms", "--dim", "--batch", "--members"]
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", checkout]
        for flag in settings:
            argv += [flag, str(getattr(args, flag[2:]))]
        self.checkout = checkout
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()
        self.seconds: list[float] = []

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY) :])
        raise RuntimeError(f"the --compare worker for {self.checkout} exited with {self.process.wait()} (see above)")

    def time_one(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        self.seconds.append(self._read()["seconds"])
        return self.seconds[-1]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()

    def figures(self, decisions: int) -> dict:
        rates = sorted(decisions / s for s in self.seconds)
        cdb_file = Path(self.ready["cdb_file"])
        return {
            "checkout": str(cdb_file.parent.parent),
            "commit": _git_commit(cdb_file.parent.parent),
            "cdb_file": str(cdb_file),
            "agents_file": self.ready["agents_file"],
            "decisions_per_s": {"min": rates[0], "median": statistics.median(rates), "max": rates[-1]},
            "seconds": self.seconds,
            "first_call_s": self.ready["first_call_s"],
        }


def compare(other: str, args) -> dict:
    """The default run of the installed cdb (``a``) against the checkout at ``other`` (``b``), interleaved."""
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), flag]))
    decisions = args.seeds * args.rounds * args.batch
    load_start = os.getloadavg()
    sides = {}
    try:
        # one after the other, so that neither compiles while the other is timed
        sides["a"] = _Side("installed", args, env)
        sides["b"] = _Side(str(Path(other).resolve()), args, env)
        order = []
        for i in range(args.compare_repeats):
            for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
                sides[name].time_one()
                order.append(name)
    finally:
        for side in sides.values():
            side.close()
    a, b = (sides[name].figures(decisions) for name in ("a", "b"))
    pair_ratios = [tb / ta for ta, tb in zip(sides["a"].seconds, sides["b"].seconds, strict=True)]
    return {
        "a": a,
        "b": b,
        "ratio_a_over_b": a["decisions_per_s"]["median"] / b["decisions_per_s"]["median"],
        "median_pair_ratio_a_over_b": statistics.median(pair_ratios),
        "same_regret": sides["a"].ready["regret"] == sides["b"].ready["regret"],
        "repeats": args.compare_repeats,
        "order": "".join(order),
        "devices": sides["a"].ready["devices"],
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }


def _print_comparison(result: dict) -> None:
    for name in ("a", "b"):
        side = result[name]
        rate = side["decisions_per_s"]
        print(
            f"{name}: {side['checkout']} ({side['commit']}): {rate['median']:,.0f} decisions/s median of "
            f"{result['repeats']} (min {rate['min']:,.0f}, max {rate['max']:,.0f}; first call with compile "
            f"{side['first_call_s']:.1f}s)"
        )
    print(
        f"a / b: {result['ratio_a_over_b']:.3f} (medians), {result['median_pair_ratio_a_over_b']:.3f} (median of "
        f"A-B pairs); same regret: {result['same_regret']}; load average {result['load_average_start'][0]:.2f} "
        f"at the start, {result['load_average_end'][0]:.2f} at the end"
    )


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
    parser.add_argument("--compare", metavar="PATH", help="another checkout of cdb to time against this one")
    parser.add_argument("--compare-repeats", type=int, default=10, help="timed runs of each side of --compare")
    parser.add_argument("--compare-only", action="store_true", help="with --compare: time nothing else")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return {}
    if args.compare_only and not args.compare:
        parser.error("--compare-only needs --compare PATH")
    settings = {k: getattr(args, k) for k in ("seeds", "rounds", "arms", "dim", "batch", "members")}
    if args.compare_only:
        figures = {**settings, "compare": compare(args.compare, args)}
        _print_comparison(figures["compare"])
        return _write(figures, args.out)
    _use_host_devices(args.devices)

    import jax

    import cdb
    from cdb.agents import ee_ts
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel
    from cdb.environments.feature_duel import make_context_pool
    from cdb.report import header
    from cdb.xla_options import resolve_compiler_options, resolve_seed_chunk

    print(header(), flush=True)
    print(f"JAX devices: {jax.device_count()} ({jax.devices()[0].platform})", flush=True)
    model = LinearEnsemble(num_members=args.members, prior_scale=1.0, noise_scale=0.5, regularization=1.0)
    agent = ee_ts(reward_model=model, max_tries=8)
    env = LinearDuel(
        num_arms=args.arms, feature_dim=args.dim, batch_size=args.batch, eval_batch_size=8, scale=8.0, context_pool=POOL
    )
    pool = make_context_pool(POOL, args.arms, args.dim, env.pool_seed).astype(np.float64)
    decisions = args.seeds * args.rounds * args.batch

    # the default (seeds in chunks of CPU_SEED_CHUNK per device, cdb.xla_options's XLA options)
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
        **settings,
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
    if args.compare:
        figures["compare"] = compare(args.compare, args)
        _print_comparison(figures["compare"])
    return _write(figures, args.out)


def _write(figures: dict, out: str) -> dict:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "throughput.json").write_text(json.dumps(figures, indent=2))
    print(f"wrote {folder / 'throughput.json'}")
    return figures


if __name__ == "__main__":
    main()
