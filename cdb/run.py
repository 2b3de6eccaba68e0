"""``cdb.run``: the experiment loop (purejaxrl style).

For a pure-JAX environment the experiment is compiled: one round is a pure function, a block
of ``eval_every`` rounds is a ``lax.scan``, and seeds are a ``vmap``; the compiled block (and
the compiled evaluation) is reused for every block, so a thousand seeds cost about one
compilation. Between blocks the host records metrics, checks losses for NaN/inf, updates the
progress bar and writes checkpoints.
Seeds can be sharded across devices with ``jax.jit`` and ``NamedSharding`` (DESIGN §7). On a
CPU, each device runs its seeds in chunks (``seed_chunk``): all rounds of a block for one chunk,
then the next, so a round's working set stays in cache.

Otherwise (``env.pure_jax`` is False, e.g. an oracle on the host) a host loop calls the jitted
agent functions and the environment round by round.

Randomness: seed ``s`` gets ``k_s = split(key, seeds)[s]``; round ``t`` uses
``fold_in(k_s, t)``, so results do not depend on how the run is cut into blocks or resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm import tqdm

from cdb.metrics import round_metrics, scalar_info
from cdb.results import Results
from cdb.types import Agent, Environment

_RESET, _INIT, _ROUNDS, _EVAL = range(4)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; ``results`` holds every round completed before it."""

    def __init__(self, metric: str, round_: int, seed: int, results: Results):
        super().__init__(
            f"{metric} is not finite at round {round_} (seed index {seed}); the run stopped. "
            f"The {round_ - 1} rounds completed before it are in this error's `.results`."
        )
        self.metric, self.round, self.seed, self.results = metric, round_, seed, results


@struct.dataclass
class Carry:
    """Everything one seed's experiment carries from round to round."""

    env_state: Any
    agent_state: Any
    obs: Any
    seed_key: jax.Array  # raw uint32 key data, so checkpoints need no typed-key support


def describe(obj: Any) -> Any:
    """A JSON-friendly description of a (nested) frozen-dataclass configuration."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: describe(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
        return {"type": type(obj).__name__, **fields}
    if isinstance(obj, list | tuple):
        return [describe(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    if isinstance(obj, np.ndarray | jax.Array) and np.size(obj) <= 16:
        return np.asarray(obj).tolist()
    return repr(obj)


def _as_key(key: Any) -> jax.Array:
    if key is None:
        key = 0
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))


def _stage_key(seed_key: jax.Array, stage: int, index, impl: str) -> jax.Array:
    """The key of one stage (rounds / evaluation) at one index, from a seed's raw key data."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(seed_key, impl=impl), stage), index)


def _make_functions(agent: Agent, env: Environment, params: Any, impl: str):
    """Pure per-seed functions: init, one round, one evaluation; ``impl`` names the PRNG."""

    def init(seed_key: jax.Array) -> Carry:
        raw = jax.random.key_data(seed_key)
        k_reset, k_init = (jax.random.fold_in(seed_key, s) for s in (_RESET, _INIT))
        env_state, obs = env.reset(k_reset, params)
        agent_state = agent.init(k_init, env.spec)
        return Carry(env_state, agent_state, obs, raw)

    def one_round(carry: Carry, t: jax.Array):
        k_select, k_env, k_update = jax.random.split(_stage_key(carry.seed_key, _ROUNDS, t, impl), 3)
        duel, select_info = agent.select(k_select, carry.agent_state, carry.obs)
        # The environment steps only once the duel is complete. Agents that keep what they need
        # of ``obs`` in ``duel.aux`` leave the round's observation dead here, so XLA can draw the
        # next one into the same buffer instead of copying a [seeds, B, K, d] array every round.
        duel, env_state = jax.lax.optimization_barrier((duel, carry.env_state))
        env_state, next_obs, feedback, info = env.step(k_env, env_state, duel, params)
        agent_state, update_info = agent.update(k_update, carry.agent_state, carry.obs, duel, feedback)
        metrics = {**scalar_info(select_info), **scalar_info(update_info), **round_metrics(info, feedback)}
        return carry.replace(env_state=env_state, agent_state=agent_state, obs=next_obs), metrics

    def evaluation(carry: Carry, index: jax.Array) -> dict[str, jax.Array]:
        k_rec, k_eval = jax.random.split(_stage_key(carry.seed_key, _EVAL, index, impl))
        obs = env.eval_observation(carry.env_state, params)
        arms = agent.recommend(k_rec, carry.agent_state, obs)
        return {
            k: jnp.mean(v).astype(jnp.float32)
            for k, v in env.evaluate(k_eval, carry.env_state, obs, arms, params).items()
        }

    return init, one_round, evaluation


def run(
    agent: Agent,
    env: Environment,
    rounds: int,
    seeds: int = 1,
    *,
    key: Any = 0,
    env_params: Any = None,
    eval_every: int | None = None,
    progress: bool = True,
    shard_seeds: bool | None = None,
    seed_chunk: int | str | None = "auto",
    compiler_options: dict[str, Any] | str | None = "auto",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_block: Callable[[int, Results], None] | None = None,
    seed_range: tuple[int, int] | None = None,
) -> Results:
    """Runs ``agent`` on ``env`` for ``rounds`` rounds and ``seeds`` independent seeds.

    Args:
      agent, env: an :class:`~cdb.types.Agent` and an :class:`~cdb.types.Environment`.
      rounds: number of rounds T; each round plays ``env.spec.batch_size`` duels.
      seeds: number of independent seeds (problem instance and agent randomness).
      key: an int or a JAX key; the same key gives the same results. Every key the agent and
        the environment are handed is of the same PRNG as ``key`` (an int means JAX's default,
        threefry). In jax 0.10, ``"philox4x32"`` keys do not compile with seeds sharded over
        several devices (XLA cannot convert Philox's ``mulhi``); use them with one device.
      env_params: environment parameters (default: ``env.default_params``).
      eval_every: evaluate ``agent.recommend`` on held-out contexts (BAI regret and any other
        metric the environment reports) at round 0 and every ``eval_every`` rounds; must divide
        ``rounds``. ``None`` evaluates only at rounds 0 and T.
      progress: show a tqdm progress bar.
      shard_seeds: shard the seed axis across all local devices (default: when there is more
        than one device and ``seeds`` is divisible by the device count).
      seed_chunk: each device runs its seeds ``seed_chunk`` at a time (``lax.map`` over chunks of
        a ``vmap``), a whole block of rounds per chunk; results do not change, only speed and
        memory. ``"auto"``: chunks of about :data:`CPU_SEED_CHUNK` seeds on a CPU, where a round
        for all seeds at once falls out of cache (0.98–1.35× at 1024 seeds on two devices in
        ``benchmarks/throughput.py``, a noisy gain since copy insertion keeps the round's buffers
        in place; see :data:`CPU_COMPILER_OPTIONS`), and no chunking on accelerators, which want
        the whole batch; ``None``: no chunking. Ignored for host-loop environments.
      compiler_options: XLA options for the compiled programs (``jax.jit(compiler_options=)``).
        ``"auto"``: :data:`CPU_COMPILER_OPTIONS` on a CPU when this XLA accepts them, else none;
        ``None``: XLA's defaults; a dict: exactly those. Results agree to float rounding (the
        order of a sum may change), and the same options always give the same results.
        Ignored for host-loop environments.
      checkpoint_dir: with orbax, save the state after every block; with ``resume=True``
        continue from the last checkpoint there. Resumed runs give the same curves.
      on_block: called after every block with ``(rounds_done, results_so_far)``.
      seed_range: ``(start, stop)`` runs only seeds ``start, ..., stop - 1`` of the ``seeds``-seed
        experiment, each with exactly the key it has in the full run, so runs of consecutive
        ranges concatenated along the seed axis equal the full run (to split a sweep across
        processes or machines). ``None``: all seeds. The config records it.

    Returns:
      :class:`~cdb.results.Results` with ``[seeds, rounds]`` metrics (``[stop - start, rounds]``
      with ``seed_range``).

    Raises:
      NonFiniteLossError: a recorded ``*loss*`` metric became NaN/inf; its ``.results`` keeps
        the rounds completed before it.
    """
    _check_positive_int("rounds", rounds)
    _check_positive_int("seeds", seeds)
    eval_every = rounds if eval_every is None else eval_every
    _check_positive_int("eval_every", eval_every)
    if rounds % eval_every:
        raise ValueError(f"eval_every={eval_every} must divide rounds={rounds}")
    start, stop = _check_seed_range(seed_range, seeds)
    params = env.default_params if env_params is None else env_params
    config = {
        "agent": describe(agent),
        "env": describe(env),
        "env_params": describe(params),
        "rounds": rounds,
        "seeds": seeds,
        "eval_every": eval_every,
        "seed_range": [start, stop],
    }
    # the per-seed keys of the full run, so a range reproduces its seeds of the full run exactly
    seed_keys = jax.random.split(_as_key(key), seeds)[start:stop]
    impl = jax.random.key_impl(seed_keys)
    config["key_impl"] = str(impl)
    if getattr(env, "pure_jax", False):
        runner = _compiled_runner(
            agent,
            env,
            params,
            impl,
            stop - start,
            shard_seeds,
            resolve_seed_chunk(seed_chunk),
            resolve_compiler_options(compiler_options),
        )
    else:
        runner = _HostRunner(agent, env, params, impl, stop - start)
    return _drive(runner, seed_keys, rounds, eval_every, config, progress, checkpoint_dir, resume, on_block)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"run: {name}={value!r} is out of range; expected an integer >= 1")


def _check_seed_range(seed_range: Any, seeds: int) -> tuple[int, int]:
    """``(start, stop)`` of the seeds to run; ``(0, seeds)`` for ``None``."""
    if seed_range is None:
        return 0, int(seeds)
    ok = isinstance(seed_range, tuple | list) and len(seed_range) == 2
    ok = ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in seed_range)
    if not ok or not 0 <= seed_range[0] < seed_range[1] <= seeds:
        raise ValueError(
            f"run: seed_range={seed_range!r} is out of range; expected (start, stop) integers with "
            f"0 <= start < stop <= seeds={seeds}"
        )
    return int(seed_range[0]), int(seed_range[1])


CPU_SEED_CHUNK = 128
"""Seeds per chunk that ``seed_chunk="auto"`` aims for on a CPU (the fastest of 32, 64, 128 and 256
in runs of ``benchmarks/throughput.py --seed-chunks``, by 1–18%; all 512 seeds of a device were
slower: 128 seeds' features and scores fit in a core's 512 KiB L2 cache)."""


def resolve_seed_chunk(seed_chunk: int | str | None) -> int | None:
    """The seeds per chunk that ``run(..., seed_chunk=seed_chunk)`` uses (``None``: no chunks)."""
    if seed_chunk == "auto":
        return CPU_SEED_CHUNK if jax.default_backend() == "cpu" else None
    if seed_chunk is None:
        return None
    if isinstance(seed_chunk, bool) or not isinstance(seed_chunk, int | np.integer) or seed_chunk < 1:
        raise ValueError(f'run: seed_chunk={seed_chunk!r} is out of range; expected "auto", None or an integer >= 1')
    return int(seed_chunk)


CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
    "xla_cpu_copy_insertion_use_region_analysis": True,
}
"""XLA options that ``compiler_options="auto"`` sets on a CPU.

* YNNPACK for dot products only. XLA:CPU also hands reductions to YNNPACK by default; a bandit
  round's reductions are small and many (each member's argmax over K arms, for every context of
  every seed), and XLA's own loops run them faster.
* Copy insertion with region analysis. Without it XLA copies loop-carried buffers that a round
  overwrites (the round's ``[B, K, d]`` features, twice a round, and the counters of JAX's threefry
  loops); with it those copies go.

Together they make E&E-TS in ``benchmarks/throughput.py`` ×1.2–1.8 faster than XLA's defaults
(``compiler_options=None``), timed side by side there (the README has the figures)."""


def resolve_compiler_options(compiler_options: dict[str, Any] | str | None) -> dict[str, Any]:
    """The XLA options that ``run(..., compiler_options=compiler_options)`` compiles with."""
    if compiler_options == "auto":
        return _default_compiler_options(jax.default_backend())
    if compiler_options is None:
        return {}
    if not isinstance(compiler_options, dict):
        raise ValueError(f'run: compiler_options={compiler_options!r} is out of range; expected "auto", None or a dict')
    return dict(compiler_options)


@functools.cache
def _default_compiler_options(backend: str) -> dict[str, Any]:
    if backend != "cpu":
        return {}
    try:  # option names belong to one XLA version; another may not know them
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.float32(0)).compile()
    except jax.errors.JaxRuntimeError:
        return {}
    return dict(CPU_COMPILER_OPTIONS)


def _in_chunks(batched: Callable, seeds: int, chunk: int | None) -> Callable:
    """``batched(carry, ts)`` (vmapped over ``seeds``) run on chunks of at most ``chunk`` seeds.

    The chunks are a ``lax.map``: XLA runs every round of the block for one chunk before the
    next, so that chunk's features, scores and state stay in cache across rounds. The seeds are
    split into ``n = ceil(seeds / chunk)`` equal chunks, the last seed repeated to fill them
    (fewer than ``n`` copies, dropped from the output).
    """
    if chunk is None or chunk >= seeds:
        return batched
    n_chunks = -(-seeds // chunk)
    size = -(-seeds // n_chunks)
    pad = n_chunks * size - seeds

    def split(x):
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x.reshape(n_chunks, size, *x.shape[1:])

    def merge(x):
        return x.reshape(n_chunks * size, *x.shape[2:])[:seeds]

    def chunked(carry, ts):
        out = jax.lax.map(lambda c: batched(c, ts), jax.tree.map(split, carry))
        return jax.tree.map(merge, out)

    return chunked


def _compiled_runner(agent, env, params, impl, seeds, shard_seeds, seed_chunk, compiler_options) -> _CompiledRunner:
    """Reuses the jitted functions of an identical earlier configuration (no recompilation).

    The environment parameters are closed over as constants, so they are part of the cache key
    by value.
    """
    try:
        options = tuple(sorted(compiler_options.items()))
        key = (agent, env, _value_key(params), impl, seeds, shard_seeds, seed_chunk, options)
        hash(key)
    except TypeError:  # an unhashable agent, environment or option value: build afresh
        return _CompiledRunner(agent, env, params, impl, seeds, shard_seeds, seed_chunk, compiler_options)
    return _cached_runner(key, params)


def _value_key(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [np.asarray(leaf) for leaf in leaves]
    return (treedef, tuple((a.shape, a.dtype.str, a.tobytes()) for a in arrays))


@functools.lru_cache(maxsize=64)
def _cached_runner_for_key(key) -> dict:
    return {}


def _cached_runner(key, params) -> _CompiledRunner:
    slot = _cached_runner_for_key(key)
    if "runner" not in slot:
        agent, env, _, impl, seeds, shard_seeds, seed_chunk, options = key
        slot["runner"] = _CompiledRunner(agent, env, params, impl, seeds, shard_seeds, seed_chunk, dict(options))
    return slot["runner"]


class _CompiledRunner:
    """Blocks of rounds as one jitted ``vmap(scan)`` over seeds."""

    def __init__(self, agent, env, params, impl, seeds, shard_seeds, seed_chunk=None, compiler_options=None):
        init, one_round, evaluation = _make_functions(agent, env, params, impl)

        def block(carry: Carry, ts: jax.Array):
            return jax.lax.scan(one_round, carry, ts)

        n_dev = jax.device_count()
        if shard_seeds is None:
            shard_seeds = n_dev > 1 and seeds % n_dev == 0
        if shard_seeds and seeds % n_dev:
            raise ValueError(f"shard_seeds needs seeds divisible by the {n_dev} devices; got seeds={seeds}")
        jit_kwargs: dict[str, Any] = {"compiler_options": compiler_options or None}
        batched_block = jax.vmap(block, in_axes=(0, None))
        if shard_seeds:
            # Auto axes: agents and environments index host constants (e.g. a context pool) with
            # seed-sharded indices, which explicit-axis meshes reject.
            mesh = jax.make_mesh((n_dev,), ("seeds",), axis_types=(jax.sharding.AxisType.Auto,))
            seeds_spec = jax.sharding.PartitionSpec("seeds")
            self.sharding = jax.sharding.NamedSharding(mesh, seeds_spec)
            jit_kwargs["out_shardings"] = self.sharding
            if seed_chunk is not None and seed_chunk < seeds // n_dev:
                # chunks of each device's own seeds: a lax.map over a sharded axis would gather it
                batched_block = jax.shard_map(
                    _in_chunks(batched_block, seeds // n_dev, seed_chunk),
                    mesh=mesh,
                    in_specs=(seeds_spec, jax.sharding.PartitionSpec()),
                    out_specs=seeds_spec,
                )
        else:
            self.sharding = None
            batched_block = _in_chunks(batched_block, seeds, seed_chunk)
        self.init = jax.jit(jax.vmap(init), **jit_kwargs)
        self.block = jax.jit(batched_block, **jit_kwargs)
        self.evaluate = jax.jit(jax.vmap(evaluation, in_axes=(0, None)), **jit_kwargs)

    def start(self, seed_keys):
        if self.sharding is not None:
            seed_keys = jax.device_put(seed_keys, self.sharding)
        return self.init(seed_keys)

    def run_block(self, carry, start, length, eval_index):
        # the evaluation is its own compiled program, shared by round 0 and every block
        carry, metrics = self.block(carry, jnp.arange(start, start + length, dtype=jnp.int32))
        return carry, metrics, self.run_eval(carry, eval_index)

    def run_eval(self, carry, eval_index):
        return self.evaluate(carry, jnp.int32(eval_index))


class _HostRunner:
    """Round-by-round host loop for environments that cannot be traced (tier 3 oracles)."""

    def __init__(self, agent, env, params, impl, seeds):
        self.agent, self.env, self.params, self.impl = agent, env, params, impl
        self.select = jax.jit(jax.vmap(agent.select))
        self.update = jax.jit(jax.vmap(agent.update))
        self.recommend = jax.jit(jax.vmap(agent.recommend))
        self.agent_init = jax.jit(jax.vmap(agent.init, in_axes=(0, None)), static_argnums=1)

    def start(self, seed_keys):
        carries = []
        for k in seed_keys:
            env_state, obs = self.env.reset(jax.random.fold_in(k, _RESET), self.params)
            carries.append((env_state, obs))
        init_keys = jnp.stack([jax.random.fold_in(k, _INIT) for k in seed_keys])
        agent_state = self.agent_init(init_keys, self.env.spec)
        return Carry([c[0] for c in carries], agent_state, [c[1] for c in carries], jax.random.key_data(seed_keys))

    def run_block(self, carry, start, length, eval_index):
        rows = []
        for t in range(start, start + length):
            keys = [jax.random.split(_stage_key(k, _ROUNDS, t, self.impl), 3) for k in carry.seed_key]
            obs = _stack(carry.obs)
            duel, select_info = self.select(jnp.stack([k[0] for k in keys]), carry.agent_state, obs)
            steps = [
                self.env.step(keys[s][1], carry.env_state[s], jax.tree.map(lambda x, s=s: x[s], duel), self.params)
                for s in range(len(carry.env_state))
            ]
            feedback = _stack([st[2] for st in steps])
            agent_state, update_info = self.update(
                jnp.stack([k[2] for k in keys]), carry.agent_state, obs, duel, feedback
            )
            metrics = [round_metrics(st[3], st[2]) for st in steps]
            row = {**scalar_info_batched(select_info), **scalar_info_batched(update_info), **_stack(metrics)}
            rows.append(row)
            carry = Carry([st[0] for st in steps], agent_state, [st[1] for st in steps], carry.seed_key)
        metrics = {k: jnp.stack([r[k] for r in rows], axis=1) for k in rows[0]}
        return carry, metrics, self.run_eval(carry, eval_index)

    def run_eval(self, carry, eval_index):
        keys = [jax.random.split(_stage_key(k, _EVAL, eval_index, self.impl)) for k in carry.seed_key]
        obs = [self.env.eval_observation(s, self.params) for s in carry.env_state]
        arms = self.recommend(jnp.stack([k[0] for k in keys]), carry.agent_state, _stack(obs))
        out = [self.env.evaluate(keys[s][1], carry.env_state[s], obs[s], arms[s], self.params) for s in range(len(obs))]
        return {k: jnp.stack([jnp.mean(o[k]) for o in out]).astype(jnp.float32) for k in out[0]}


def scalar_info_batched(info):
    return {k: v for k, v in info.items() if jnp.ndim(v) == 1}


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _drive(runner, seed_keys, rounds, eval_every, config, progress, checkpoint_dir, resume, on_block) -> Results:
    from cdb import checkpoint as ckpt

    blocks: list[dict[str, np.ndarray]] = []
    evals: list[dict[str, np.ndarray]] = []
    carry = runner.start(seed_keys)
    done = 0
    manager = ckpt.RunCheckpointer(checkpoint_dir, config) if checkpoint_dir is not None else None
    if manager is not None and resume and manager.latest() is not None:
        carry, done, blocks, evals = manager.restore(carry)
    if not evals:
        evals.append(_to_numpy(runner.run_eval(carry, 0)))
    bar = tqdm(total=rounds, initial=done, disable=not progress, desc="cdb.run", unit="round", leave=False)
    try:
        while done < rounds:
            carry, metrics, evaluation = runner.run_block(carry, done, eval_every, done // eval_every + 1)
            metrics = _to_numpy(metrics)
            _check_finite(metrics, blocks, evals, done, eval_every, config)
            blocks.append(metrics)
            evals.append(_to_numpy(evaluation))
            done += eval_every
            bar.update(eval_every)
            if manager is not None:
                manager.save(done, carry, blocks, evals)
            if on_block is not None:
                on_block(done, _assemble(blocks, evals, eval_every, config))
    finally:
        bar.close()
    return _assemble(blocks, evals, eval_every, config)


def _to_numpy(tree):
    return {k: np.asarray(v) for k, v in tree.items()}


def _check_finite(metrics, blocks, evals, done, eval_every, config):
    for name, values in metrics.items():
        if "loss" not in name or not np.issubdtype(values.dtype, np.floating):
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            seed, offset = np.argwhere(bad)[np.argmin(np.argwhere(bad)[:, 1])]
            partial = {k: v[:, :offset] for k, v in metrics.items()}
            results = _assemble(blocks + [partial], evals, eval_every, config)
            raise NonFiniteLossError(name, done + int(offset) + 1, int(seed), results)


def _assemble(blocks, evals, eval_every, config) -> Results:
    metrics = {k: np.concatenate([b[k] for b in blocks], axis=1) for k in blocks[0]} if blocks else {}
    eval_metrics = {k: np.stack([e[k] for e in evals], axis=1) for k in evals[0]} if evals and evals[0] else {}
    # an evaluation metric named like a per-round metric keeps both, the evaluation one prefixed
    eval_metrics = {(f"eval_{k}" if k in metrics else k): v for k, v in eval_metrics.items()}
    eval_rounds = np.arange(len(evals)) * eval_every
    return Results(metrics, eval_rounds, eval_metrics, json.loads(json.dumps(config, default=str)))
