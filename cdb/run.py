"""``cdb.run``: the experiment loop (purejaxrl style).

For a pure-JAX environment the experiment is compiled: one round is a pure function, a block
of ``eval_every`` rounds is a ``lax.scan``, and seeds are a ``vmap``; the compiled block (and
the compiled evaluation) is reused for every block, so a thousand seeds cost about one
compilation. Between blocks the host records metrics, checks every floating metric and the
agent state for NaN/inf, updates the progress bar and writes checkpoints.
Seeds can be sharded across devices with ``jax.jit`` and ``NamedSharding`` (DESIGN §7). On a
CPU, each device runs its seeds in chunks (``seed_chunk``): all rounds of a block for one chunk,
then the next, so a round's working set stays in cache; the evaluation runs in the same chunks
and the block donates its input state, so memory beyond the carried state does not grow with
the seeds past one chunk (``benchmarks/memory.py``).

Otherwise (``env.pure_jax`` is False, e.g. an oracle on the host) a host loop calls the jitted
agent functions and the environment round by round, with the same checkpoints, a progress bar
that moves every round, and per-round wall seconds of the agent's select and update and of the
environment's step.

Randomness: seed ``s`` gets ``k_s = split(key, seeds)[s]``; round ``t`` uses
``fold_in(k_s, t)``, so results do not depend on how the run is cut into blocks or resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import re
import time
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
    """A recorded metric or the agent's state became NaN or infinite; ``results`` holds every
    round completed before it.

    Attributes:
      metric: the metric's name, or ``"agent_state"``.
      round: the round at which it was seen (for the agent state, the last round of the block
        after which it was seen: it went bad at that round or earlier in the block).
      seed: the index of the first seed affected.
      results: :class:`~cdb.results.Results` of the completed rounds.
    """

    def __init__(self, metric: str, round_: int, seed: int, results: Results, first_round: int | None = None):
        kept = results.num_rounds if results.metrics else 0
        if first_round is None:
            where = f"{metric} is not finite at round {round_} (seed index {seed})"
        else:
            where = (
                f"the agent state has a non-finite value after round {round_} (seed index {seed}); it went bad "
                f"in rounds {first_round}-{round_}"
            )
        super().__init__(
            f"{where}; the run stopped. The {kept} rounds completed before it are in this error's `.results`."
        )
        self.metric, self.round, self.seed, self.results = metric, round_, seed, results


@struct.dataclass
class Carry:
    """Everything one seed's experiment carries from round to round."""

    env_state: Any
    agent_state: Any
    obs: Any
    seed_key: jax.Array  # raw uint32 key data, so checkpoints need no typed-key support


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe(obj: Any) -> Any:
    """A JSON-friendly description of a (nested) frozen-dataclass configuration, the same in every process.

    * a dataclass: ``{"type": class name, field: description, ...}``, leaving out fields with
      ``repr=False`` or ``metadata={"describe": False}`` (what does not change the experiment,
      e.g. where a reference policy was cached);
    * a function, class or other named callable: ``"module.qualname"`` (a closure's captured
      values are not described); a bound method: ``{"type": "method", "self": ..., "name": ...}``;
      a ``functools.partial``: ``{"type": "functools.partial", "func", "args", "keywords"}``;
    * numbers, strings, lists, tuples and dicts as themselves; an array of at most 16 elements as a list;
    * a larger array or another pytree of arrays (e.g. model weights): its type, shapes, dtypes and
      the SHA-256 of its bytes, so two configurations match exactly when the values do;
    * anything else: its ``repr`` with memory addresses removed.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: describe(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.repr and f.metadata.get("describe", True)
        }
        return {"type": type(obj).__name__, **fields}
    if isinstance(obj, functools.partial):
        args = [describe(a) for a in obj.args]
        keywords = {str(k): describe(v) for k, v in obj.keywords.items()}
        return {"type": "functools.partial", "func": describe(obj.func), "args": args, "keywords": keywords}
    if isinstance(obj, list | tuple):
        return [describe(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    if isinstance(obj, np.generic) and not isinstance(obj, np.void):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array) and not jnp.issubdtype(obj.dtype, jax.dtypes.prng_key):
        if np.size(obj) <= 16:
            return np.asarray(obj).tolist()
        return {"type": "array", "shape": list(np.shape(obj)), "dtype": str(obj.dtype), "sha256": _digest([obj])}
    if inspect.ismethod(obj):
        return {"type": "method", "self": describe(obj.__self__), "name": obj.__name__}
    if callable(obj) and hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    leaves = jax.tree.leaves(obj)
    if leaves and not (len(leaves) == 1 and leaves[0] is obj):
        if all(isinstance(x, np.ndarray | jax.Array | np.generic | int | float | bool) for x in leaves):
            kind = type(obj)
            return {"type": f"{kind.__module__}.{kind.__qualname__}", "leaves": len(leaves), "sha256": _digest(leaves)}
    return _ADDRESS.sub("", repr(obj))


def _digest(leaves) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_KEY_DATA_SHAPE = (2,)  # jax.random.key_data(jax.random.key(0)).shape for JAX's default threefry


def _as_key(key: Any) -> jax.Array:
    """One typed PRNG key from ``run``'s ``key`` argument, or a ``ValueError`` naming ``key``."""
    allowed = (
        "expected an int in [0, 2**32), one typed JAX key (jax.random.key(n)) or the raw uint32 key "
        f"data of one key, shape {_KEY_DATA_SHAPE}"
    )
    if isinstance(key, bool | np.bool_):
        raise ValueError(f"run: key={key!r} is a bool; {allowed}")
    if isinstance(key, int | np.integer):
        # JAX without x64 keeps only the low 32 bits of a seed: 2**32 would silently be seed 0
        if not 0 <= int(key) < 2**32:
            raise ValueError(f"run: key={key!r} is out of range; {allowed}")
        return jax.random.key(int(key))
    if isinstance(key, np.ndarray | jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"run: key is a batch of keys of shape {key.shape}; {allowed}")
            return key
        if key.dtype == np.uint32 and key.shape == _KEY_DATA_SHAPE:
            return jax.random.wrap_key_data(jnp.asarray(key))
        raise ValueError(f"run: key is an array of shape {key.shape} and dtype {key.dtype}; {allowed}")
    raise ValueError(f"run: key={key!r} of type {type(key).__name__} is not a key; {allowed}")


_MAX_INT32 = 2**31 - 1


def _check_env_params(env: Environment, params: Any) -> None:
    """``params`` must have the tree structure, shapes and dtype kinds of ``env.default_params``.

    A Python number may stand for a scalar leaf (an int for a float leaf too): the programs are
    traced once for the default's shapes and dtypes, and a wrong leaf otherwise fails deep
    inside tracing, or is silently cast.
    """
    default = env.default_params
    name = f"{type(env).__name__}.default_params"
    got, got_def = jax.tree_util.tree_flatten_with_path(params)
    want, want_def = jax.tree_util.tree_flatten_with_path(default)
    if got_def != want_def:
        raise ValueError(
            f"run: env_params of type {type(params).__name__} does not have the structure of {name}; "
            f"got {got_def}, expected {want_def}"
        )
    allowed_kinds = {"b": "b", "i": "iu", "u": "iu", "f": "iuf", "c": "iufc"}
    for (path, value), (_, expected) in zip(got, want, strict=True):
        where = f"run: env_params{jax.tree_util.keystr(path)}"
        value_dtype, want_dtype = np.asarray(value).dtype, np.asarray(expected).dtype
        shape, want_shape = np.shape(value), np.shape(expected)
        if shape != want_shape or value_dtype.kind not in allowed_kinds.get(want_dtype.kind, want_dtype.kind):
            text = repr(value) if np.size(value) <= 4 else "an array"
            raise ValueError(
                f"{where}={text} has shape {shape} and dtype {value_dtype}; expected shape {want_shape} "
                f"and dtype {want_dtype} as in {name}"
            )


def _stage_key(seed_key: jax.Array, stage: int, index, impl: str) -> jax.Array:
    """The key of one stage (rounds / evaluation) at one index, from a seed's raw key data."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(seed_key, impl=impl), stage), index)


def _state_is_finite(agent_state: Any) -> jax.Array:
    """Whether every floating leaf of one seed's agent state is finite (a scalar bool)."""
    ok = jnp.bool_(True)
    for leaf in jax.tree.leaves(agent_state):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


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
      key: an int in ``[0, 2**32)``, one typed JAX key (``jax.random.key(n)``, any PRNG) or the
        raw ``uint32`` data of one default key; anything else (a float, a bool, a batch of keys,
        an int JAX would silently truncate) is a ``ValueError``. The same key gives the same
        results, and the config records it. Every key the agent and the environment are handed
        is of the same PRNG as ``key`` (an int means JAX's default, threefry). In jax 0.10,
        ``"philox4x32"`` keys do not compile with seeds sharded over several devices (XLA cannot
        convert Philox's ``mulhi``); use them with one device.
      env_params: environment parameters (default: ``env.default_params``); they must have the
        tree structure, shapes and dtype kinds of ``env.default_params`` (checked before tracing).
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
      checkpoint_dir: with orbax, save the state after every block (see :mod:`cdb.checkpoint` for
        what the folder holds); a folder that already holds checkpoints needs ``resume=True``.
      resume: continue from the last readable checkpoint in ``checkpoint_dir`` (or start afresh
        if there is none). The saved configuration must equal this run's except for ``rounds``:
        more rounds extend the run, fewer return its first ``rounds``. Resumed runs give the
        same curves. If a block fails (e.g. an oracle that gives up after its retries), the
        exception carries a note saying how many rounds are checkpointed and how to resume.
      on_block: called after every block with ``(rounds_done, results_so_far)``.
      seed_range: ``(start, stop)`` runs only seeds ``start, ..., stop - 1`` of the ``seeds``-seed
        experiment, each with exactly the key it has in the full run, so runs of consecutive
        ranges concatenated along the seed axis equal the full run (to split a sweep across
        processes or machines). ``None``: all seeds. The config records it.

    Returns:
      :class:`~cdb.results.Results` with ``[seeds, rounds]`` metrics (``[stop - start, rounds]``
      with ``seed_range``).

    Raises:
      NonFiniteLossError: a recorded floating per-round metric (a loss, a regret, an agent's own
        scalar) became NaN/inf, or a floating leaf of the agent's state did (checked after every
        block); its ``.results`` keeps the rounds completed before it.
      ValueError: an argument out of range (the message names it), or a checkpoint folder of
        another configuration.
    """
    _check_positive_int("rounds", rounds)
    _check_positive_int("seeds", seeds)
    eval_every = rounds if eval_every is None else eval_every
    _check_positive_int("eval_every", eval_every)
    if rounds % eval_every:
        raise ValueError(f"eval_every={eval_every} must divide rounds={rounds}")
    start, stop = _check_seed_range(seed_range, seeds)
    root_key = _as_key(key)
    if env_params is None:
        params = env.default_params
    else:
        _check_env_params(env, env_params)
        params = env_params
    if not isinstance(resume, bool):
        raise ValueError(f"run: resume={resume!r} is not allowed; expected True or False")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise ValueError(f"run: checkpoint_dir={str(checkpoint_dir)!r} is a file; expected a folder (or a new path)")
    # the per-seed keys of the full run, so a range reproduces its seeds of the full run exactly
    seed_keys = jax.random.split(root_key, seeds)[start:stop]
    impl = jax.random.key_impl(seed_keys)
    config = {
        "agent": describe(agent),
        "env": describe(env),
        "env_params": describe(params),
        "rounds": rounds,
        "seeds": seeds,
        "eval_every": eval_every,
        "seed_range": [start, stop],
        # the key itself (its raw data), so that a checkpoint of another key is never continued
        "key": np.asarray(jax.random.key_data(root_key)).tolist(),
        "key_impl": str(impl),
    }
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
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= _MAX_INT32:
        # rounds are counted (and keyed) with int32 inside the compiled loop
        raise ValueError(f"run: {name}={value!r} is out of range; expected an integer in [1, 2**31 - 1]")


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
    """Blocks of rounds as one jitted ``vmap(scan)`` over seeds.

    The block donates its input carry (``donate_argnums``), so the state of all seeds is held
    once, not twice; the evaluation runs in the same seed chunks as the block, so its working
    memory does not grow with the seeds beyond one chunk.
    """

    ticks_per_round = False

    def __init__(self, agent, env, params, impl, seeds, shard_seeds, seed_chunk=None, compiler_options=None):
        init, one_round, evaluation = _make_functions(agent, env, params, impl)

        def block(carry: Carry, ts: jax.Array):
            carry, metrics = jax.lax.scan(one_round, carry, ts)
            return carry, metrics, _state_is_finite(carry.agent_state)

        n_dev = jax.device_count()
        if shard_seeds is None:
            shard_seeds = n_dev > 1 and seeds % n_dev == 0
        if shard_seeds and seeds % n_dev:
            raise ValueError(f"shard_seeds needs seeds divisible by the {n_dev} devices; got seeds={seeds}")
        jit_kwargs: dict[str, Any] = {"compiler_options": compiler_options or None}
        batched_block = jax.vmap(block, in_axes=(0, None))
        batched_eval = jax.vmap(evaluation, in_axes=(0, None))
        if shard_seeds:
            # Auto axes: agents and environments index host constants (e.g. a context pool) with
            # seed-sharded indices, which explicit-axis meshes reject.
            mesh = jax.make_mesh((n_dev,), ("seeds",), axis_types=(jax.sharding.AxisType.Auto,))
            seeds_spec = jax.sharding.PartitionSpec("seeds")
            self.sharding = jax.sharding.NamedSharding(mesh, seeds_spec)
            jit_kwargs["out_shardings"] = self.sharding
            if seed_chunk is not None and seed_chunk < seeds // n_dev:
                # chunks of each device's own seeds: a lax.map over a sharded axis would gather it
                def per_device(fn):
                    return jax.shard_map(
                        _in_chunks(fn, seeds // n_dev, seed_chunk),
                        mesh=mesh,
                        in_specs=(seeds_spec, jax.sharding.PartitionSpec()),
                        out_specs=seeds_spec,
                    )

                batched_block, batched_eval = per_device(batched_block), per_device(batched_eval)
        else:
            self.sharding = None
            batched_block = _in_chunks(batched_block, seeds, seed_chunk)
            batched_eval = _in_chunks(batched_eval, seeds, seed_chunk)
        self.init = jax.jit(jax.vmap(init), **jit_kwargs)
        self.block = jax.jit(batched_block, donate_argnums=0, **jit_kwargs)
        self.evaluate = jax.jit(batched_eval, **jit_kwargs)

    def start(self, seed_keys):
        if self.sharding is not None:
            seed_keys = jax.device_put(seed_keys, self.sharding)
        return self.init(seed_keys)

    def place(self, carry):
        """A carry restored from a checkpoint, laid out as :meth:`start` lays it out."""
        return carry if self.sharding is None else jax.device_put(carry, self.sharding)

    def run_block(self, carry, start, length, eval_index, tick=None):
        """``(carry, metrics [seeds, length], state_finite [seeds], evaluation)``; ``carry`` is donated."""
        # the evaluation is its own compiled program, shared by round 0 and every block
        carry, metrics, finite = self.block(carry, jnp.arange(start, start + length, dtype=jnp.int32))
        return carry, metrics, finite, self.run_eval(carry, eval_index)

    def run_eval(self, carry, eval_index):
        return self.evaluate(carry, jnp.int32(eval_index))


class _HostRunner:
    """Round-by-round host loop for environments that cannot be traced (tier 3 oracles).

    The agent's functions are jitted and vmapped over seeds; the environment is called seed by
    seed. The carry stacks the seeds' environment states and observations (each a pytree of
    arrays) along a leading seed axis, as the compiled runner does, so checkpoints are the same.
    Each round records its wall seconds in ``seconds_select`` (the agent's ``select`` for all
    seeds), ``seconds_env`` (``env.step`` for every seed) and ``seconds_update`` (``update``),
    the same value for every seed, each timed after ``jax.block_until_ready`` of its results.
    """

    ticks_per_round = True

    def __init__(self, agent, env, params, impl, seeds):
        self.agent, self.env, self.params, self.impl = agent, env, params, impl
        self.select = jax.jit(jax.vmap(agent.select))
        self.update = jax.jit(jax.vmap(agent.update))
        self.recommend = jax.jit(jax.vmap(agent.recommend))
        self.agent_init = jax.jit(jax.vmap(agent.init, in_axes=(0, None)), static_argnums=1)
        self.finite = jax.jit(jax.vmap(_state_is_finite))

        def stage_keys(seed_keys, stage, index, parts):
            return jax.vmap(lambda k: jax.random.split(_stage_key(k, stage, index, impl), parts))(seed_keys)

        self.stage_keys = jax.jit(stage_keys, static_argnums=(1, 3))

    def start(self, seed_keys):
        resets = [self.env.reset(jax.random.fold_in(k, _RESET), self.params) for k in seed_keys]
        init_keys = jnp.stack([jax.random.fold_in(k, _INIT) for k in seed_keys])
        agent_state = self.agent_init(init_keys, self.env.spec)
        env_state, obs = _stack([r[0] for r in resets]), _stack([r[1] for r in resets])
        return Carry(env_state, agent_state, obs, jax.random.key_data(seed_keys))

    def place(self, carry):
        return carry

    def run_block(self, carry, start, length, eval_index, tick=None):
        rows = []
        seeds = carry.seed_key.shape[0]
        for t in range(start, start + length):
            keys = self.stage_keys(carry.seed_key, _ROUNDS, jnp.int32(t), 3)
            clock = time.perf_counter()
            duel, select_info = jax.block_until_ready(self.select(keys[:, 0], carry.agent_state, carry.obs))
            after_select = time.perf_counter()
            steps = [
                self.env.step(keys[s, 1], _index(carry.env_state, s), _index(duel, s), self.params)
                for s in range(seeds)
            ]
            env_state, next_obs, feedback = (_stack([st[i] for st in steps]) for i in range(3))
            jax.block_until_ready((env_state, next_obs, feedback))
            after_env = time.perf_counter()
            agent_state, update_info = jax.block_until_ready(
                self.update(keys[:, 2], carry.agent_state, carry.obs, duel, feedback)
            )
            after_update = time.perf_counter()
            timings = {
                "seconds_select": after_select - clock,
                "seconds_env": after_env - after_select,
                "seconds_update": after_update - after_env,
            }
            rows.append(
                {
                    **scalar_info_batched(select_info),
                    **scalar_info_batched(update_info),
                    **_stack([round_metrics(st[3], st[2]) for st in steps]),
                    **{k: np.full(seeds, v, np.float32) for k, v in timings.items()},
                }
            )
            carry = Carry(env_state, agent_state, next_obs, carry.seed_key)
            if tick is not None:
                tick(1)
        metrics = {k: np.stack([np.asarray(r[k]) for r in rows], axis=1) for k in rows[0]}
        return carry, metrics, self.finite(carry.agent_state), self.run_eval(carry, eval_index)

    def run_eval(self, carry, eval_index):
        keys = self.stage_keys(carry.seed_key, _EVAL, jnp.int32(eval_index), 2)
        seeds = carry.seed_key.shape[0]
        obs = [self.env.eval_observation(_index(carry.env_state, s), self.params) for s in range(seeds)]
        arms = self.recommend(keys[:, 0], carry.agent_state, _stack(obs))
        out = [
            self.env.evaluate(keys[s, 1], _index(carry.env_state, s), obs[s], arms[s], self.params)
            for s in range(seeds)
        ]
        return {k: jnp.stack([jnp.mean(o[k]) for o in out]).astype(jnp.float32) for k in out[0]}


def scalar_info_batched(info):
    return {k: v for k, v in info.items() if jnp.ndim(v) == 1}


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _index(tree, s: int):
    return jax.tree.map(lambda x: x[s], tree)


def _drive(runner, seed_keys, rounds, eval_every, config, progress, checkpoint_dir, resume, on_block) -> Results:
    from cdb import checkpoint as ckpt

    manager = ckpt.RunCheckpointer(checkpoint_dir, config) if checkpoint_dir is not None else None
    try:
        return _drive_with(manager, runner, seed_keys, rounds, eval_every, config, progress, resume, on_block)
    finally:
        if manager is not None:
            manager.close()  # an open manager keeps a thread that blocks the process's exit


def _drive_with(manager, runner, seed_keys, rounds, eval_every, config, progress, resume, on_block) -> Results:
    blocks: list[dict[str, np.ndarray]] = []
    evals: list[dict[str, np.ndarray]] = []
    carry = runner.start(seed_keys)
    done = 0
    if manager is not None and manager.latest() is not None:
        if not resume:
            raise ValueError(
                f"run: checkpoint_dir={str(manager.directory)!r} holds checkpoints of a run (rounds "
                f"{manager.steps()} done); pass resume=True to continue it, or an empty folder"
            )
        restored = manager.restore(carry)
        if restored is not None:
            carry, done, blocks, evals = restored
            carry = runner.place(carry)
    if done >= rounds:  # a finished run resumed with as many rounds or fewer: its first ``rounds``
        return _assemble(blocks, evals, eval_every, config).truncated(rounds)
    if not evals:
        evals.append(_to_numpy(runner.run_eval(carry, 0)))
    bar = tqdm(total=rounds, initial=done, disable=not progress, desc="cdb.run", unit="round", leave=False)
    tick = bar.update if runner.ticks_per_round else None
    try:
        while done < rounds:
            try:
                carry, metrics, finite, evaluation = runner.run_block(
                    carry, done, eval_every, done // eval_every + 1, tick
                )
            except Exception as err:
                err.add_note(_resume_note(manager, done))
                raise
            metrics = _to_numpy(metrics)
            _check_finite(metrics, np.asarray(finite), blocks, evals, done, eval_every, config)
            blocks.append(metrics)
            evals.append(_to_numpy(evaluation))
            done += eval_every
            if tick is None:
                bar.update(eval_every)
            if manager is not None:
                manager.save(done, carry, blocks, evals)
            if on_block is not None:
                on_block(done, _assemble(blocks, evals, eval_every, config))
    finally:
        bar.close()
    return _assemble(blocks, evals, eval_every, config)


def _resume_note(manager, done: int) -> str:
    if manager is None:
        return f"cdb.run: interrupted after {done} completed rounds; pass checkpoint_dir= to be able to resume a run"
    if manager.latest() is None:
        return f"cdb.run: interrupted before the first checkpoint in {str(manager.directory)!r}; nothing to resume"
    return (
        f"cdb.run: the {manager.latest()} rounds completed before this error are checkpointed in "
        f"{str(manager.directory)!r}; call cdb.run again with checkpoint_dir={str(manager.directory)!r} and "
        "resume=True to continue from there"
    )


def _to_numpy(tree):
    return {k: np.asarray(v) for k, v in tree.items()}


def _check_finite(metrics, state_finite, blocks, evals, done, eval_every, config):
    """Stops the run at the first non-finite per-round metric, or an agent state that is not finite.

    Every floating per-round metric is watched (losses, regrets, the agent's own scalars, the
    host loop's timings): a NaN or inf in any makes the rest of its curve meaningless. The agent
    state's floating leaves are checked at the end of each block, which guards agents that
    report no loss (e.g. the K-armed ones).
    """
    first = None
    for name, values in metrics.items():
        if not np.issubdtype(values.dtype, np.floating):
            continue
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            seed, offset = bad[np.argmin(bad[:, 1])]
            if first is None or offset < first[2]:
                first = (name, int(seed), int(offset))
    if first is not None:
        name, seed, offset = first
        partial = {k: v[:, :offset] for k, v in metrics.items()}
        results = _assemble(blocks + [partial], evals, eval_every, config)
        raise NonFiniteLossError(name, done + offset + 1, seed, results)
    if not np.all(state_finite):
        seed = int(np.argmin(state_finite))
        results = _assemble(blocks, evals, eval_every, config)
        length = next(iter(metrics.values())).shape[1]
        raise NonFiniteLossError("agent_state", done + length, seed, results, first_round=done + 1)


def _assemble(blocks, evals, eval_every, config) -> Results:
    metrics = {k: np.concatenate([b[k] for b in blocks], axis=1) for k in blocks[0]} if blocks else {}
    eval_metrics = {k: np.stack([e[k] for e in evals], axis=1) for k in evals[0]} if evals and evals[0] else {}
    # an evaluation metric named like a per-round metric keeps both, the evaluation one prefixed
    eval_metrics = {(f"eval_{k}" if k in metrics else k): v for k, v in eval_metrics.items()}
    eval_rounds = np.arange(len(evals)) * eval_every
    return Results(metrics, eval_rounds, eval_metrics, json.loads(json.dumps(config, default=str)))
