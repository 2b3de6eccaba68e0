"""``cdb.run``: the experiment loop (purejaxrl style).

For a pure-JAX environment the experiment is compiled: one round is a pure function, a block
of ``eval_every`` rounds is a ``lax.scan``, and seeds are a ``vmap``; the compiled block (and
the compiled evaluation) is reused for every block, so a thousand seeds cost about one
compilation. Between blocks the host records metrics, checks every floating metric and the
agent state for NaN/inf, updates the progress bar, hands the block to the run's loggers
(:mod:`cdb.loggers`) and writes checkpoints.
Seeds can be sharded across devices with ``jax.jit`` and ``NamedSharding`` (docs/design.md §8). On a
CPU, each device runs its seeds in chunks (``seed_chunk``): all rounds of a block for one chunk,
then the next, so a round's working set stays in cache; the evaluation runs in the same chunks
and the block donates its input state, so memory beyond the carried state does not grow with
the seeds past one chunk (``benchmarks/memory.py``).

Otherwise (``env.pure_jax`` is False, e.g. an oracle on the host) a host loop calls the jitted
agent functions and the environment round by round, with the same checkpoints, a progress bar
that moves every round, loggers that get every round as it ends, and per-round wall seconds of
the agent's select and update and of the environment's step.

Randomness (:mod:`cdb.keys`): seed ``s`` gets ``k_s = split(key, seeds)[s]``; round ``t`` uses
``split(fold_in(fold_in(k_s, ROUNDS), t), 3)`` (select, step, update) and evaluation ``i``
``split(fold_in(fold_in(k_s, EVAL), i), 2)`` (recommend, evaluate), so results do not depend on
how the run is cut into blocks or resumed.

This module holds :func:`run` (argument checks, the configuration, the loop over blocks with
its NaN guard and checkpoints); the compiled and the host runner are in :mod:`cdb.runners`, the
key schedule in :mod:`cdb.keys`, the XLA options and seed chunks in :mod:`cdb.xla_options`.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from cdb.config import describe
from cdb.keys import as_key
from cdb.loggers import Logger, check_loggers
from cdb.results import Results
from cdb.runners.compiled import compiled_runner
from cdb.runners.host import HostRunner
from cdb.types import Agent, Environment
from cdb.xla_options import resolve_compiler_options, resolve_seed_chunk

__all__ = ["NonFiniteLossError", "run"]


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
    loggers: Sequence[Logger] = (),
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
      seed_chunk: each device runs its seeds ``seed_chunk`` at a time (a ``lax.scan`` over chunks
        of a ``vmap`` that updates the donated state in place), a whole block of rounds per chunk;
        results do not change, only speed and memory. ``"auto"``: chunks of about
        :data:`cdb.xla_options.CPU_SEED_CHUNK` seeds on a CPU, where a round for all seeds at once
        falls out of cache (a noisy gain, since copy insertion keeps the round's buffers in place:
        ``benchmarks/throughput.py`` measures it; see :data:`cdb.xla_options.CPU_COMPILER_OPTIONS`),
        and no chunking on accelerators, which want the whole batch; ``None``: no chunking. Ignored
        for host-loop environments.
      compiler_options: XLA options for the compiled programs (``jax.jit(compiler_options=)``).
        ``"auto"``: :data:`cdb.xla_options.CPU_COMPILER_OPTIONS` on a CPU when this XLA accepts
        them, else none; ``None``: XLA's defaults; a dict: exactly those. Results agree to float
        rounding (the order of a sum may change), and the same options always give the same
        results. Ignored for host-loop environments.
      checkpoint_dir: with orbax, save the state after every block, synchronously (see
        :mod:`cdb.checkpoint` for what the folder holds); a folder that already holds checkpoints
        needs ``resume=True``. Only the folder's checkpoints are read or removed, never other
        files or folders in it.
      resume: continue from the last readable checkpoint in ``checkpoint_dir`` (or start afresh
        if there is none). The saved configuration must equal this run's except for ``rounds``,
        and the saved state must have the layout this code's ``init`` builds: more rounds extend
        the run, fewer return its first ``rounds`` with a warning naming the rounds dropped.
        Functions in the configuration are compared by name, or by code and captured values
        where the name does not identify them (lambdas, closures); a callable that can be
        described neither way does not resume (see :func:`cdb.config.describe`; name it with
        :func:`cdb.config.named`). Resumed runs give the same curves.
      on_block: called after every block with ``(rounds_done, results_so_far)``.
      seed_range: ``(start, stop)`` runs only seeds ``start, ..., stop - 1`` of the ``seeds``-seed
        experiment, each with exactly the key it has in the full run, so runs of consecutive
        ranges concatenated along the seed axis equal the full run (to split a sweep across
        processes or machines). ``None``: all seeds. The config records it.
      loggers: :class:`cdb.loggers.Logger` s (``JSONLLogger``, ``TensorBoardLogger``,
        ``WandbLogger``, or any object with their four methods) that get the per-round metrics and
        the evaluations while the run goes: every round from the host loop, every block from the
        compiled runner, each before the block's checkpoint is saved. They are opened with the
        configuration and the round the run starts from (a resumed run's loggers append after the
        resumed round, without repeating one), and closed however the run ends (success, error,
        ``KeyboardInterrupt``). A run resumed with all its rounds done plays none and leaves
        them unopened.

    Returns:
      :class:`~cdb.results.Results` with ``[seeds, rounds]`` metrics (``[stop - start, rounds]``
      with ``seed_range``).

    Raises:
      NonFiniteLossError: a recorded floating per-round metric (a loss, a regret, an agent's own
        scalar) became NaN/inf, or a floating leaf of the agent's state did (checked after every
        block); its ``.results`` keeps the rounds completed before it.
      ValueError: an argument out of range (the message names it), or a checkpoint folder of
        another configuration, another state layout or unidentifiable callables.
      Exception: any other error of a block (e.g. an oracle that gives up after its retries) or of
        a checkpoint's save propagates with the rounds completed before it in its ``.results``
        and a note saying so and how many rounds are checkpointed and how to resume.
    """
    _check_positive_int("rounds", rounds)
    _check_positive_int("seeds", seeds)
    eval_every = rounds if eval_every is None else eval_every
    _check_positive_int("eval_every", eval_every)
    if rounds % eval_every:
        raise ValueError(f"eval_every={eval_every} must divide rounds={rounds}")
    start, stop = _check_seed_range(seed_range, seeds)
    loggers = check_loggers(loggers)
    root_key = as_key(key)
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
        runner = compiled_runner(
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
        runner = HostRunner(agent, env, params, impl, stop - start)
    return _drive(runner, seed_keys, rounds, eval_every, config, progress, checkpoint_dir, resume, on_block, loggers)


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


def _drive(
    runner, seed_keys, rounds, eval_every, config, progress, checkpoint_dir, resume, on_block, loggers
) -> Results:
    from cdb import checkpoint as ckpt

    manager = ckpt.RunCheckpointer(checkpoint_dir, config) if checkpoint_dir is not None else None
    opened: list[Logger] = []
    error = None
    try:
        return _drive_with(
            manager, runner, seed_keys, rounds, eval_every, config, progress, resume, on_block, loggers, opened
        )
    except BaseException as err:
        error = err
        raise
    finally:
        try:
            _close_loggers(opened, error)
        finally:
            if manager is not None:
                manager.close()  # an open manager keeps a thread that blocks the process's exit


def _close_loggers(opened: list[Logger], error: BaseException | None) -> None:
    """Closes every opened logger. A logger that fails to close does not keep the others open; its
    error is raised after the others closed, or noted on ``error`` when the run already failed."""
    failures = []
    for logger in opened:
        try:
            logger.close(error)
        except Exception as err:  # noqa: BLE001 - every logger is closed before one error is reported
            failures.append((logger, err))
    if not failures:
        return
    if error is not None:
        for logger, err in failures:
            error.add_note(f"cdb.run: closing the logger {logger!r:.80} failed too ({type(err).__name__}: {err})")
        return
    raise failures[0][1]


def _drive_with(
    manager, runner, seed_keys, rounds, eval_every, config, progress, resume, on_block, loggers, opened
) -> Results:
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
        if done > rounds:
            warnings.warn(
                f"cdb.run: resumed with rounds={rounds} from the checkpoint of {done} rounds in "
                f"{str(manager.directory)!r}: rounds {rounds + 1}-{done} of the checkpointed run are dropped from "
                f"these results (the checkpoint keeps them; resume with rounds={done} or more to get them)",
                UserWarning,
                stacklevel=4,
            )
        return _assemble(blocks, evals, eval_every, config).truncated(rounds)
    plain_config = json.loads(json.dumps(config, default=str))
    for logger in loggers:
        logger.open(plain_config, done)
        opened.append(logger)
    if not evals:
        evals.append(_to_numpy(runner.run_eval(carry, 0)))
        _log_eval(opened, 0, evals[-1])
    bar = tqdm(total=rounds, initial=done, disable=not progress, desc="cdb.run", unit="round", leave=False)
    tick = bar.update if runner.ticks_per_round else None
    # the host loop hands over every round as it ends; the compiled runner's rounds come with the block
    streams = bool(opened) and getattr(runner, "streams_rounds", False)
    stream = {"on_round": functools.partial(_log_round, opened)} if streams else {}
    try:
        while done < rounds:
            try:
                carry, metrics, finite, evaluation = runner.run_block(
                    carry, done, eval_every, done // eval_every + 1, tick, **stream
                )
                metrics = _to_numpy(metrics)
                if opened and not streams:
                    _log_rounds(opened, np.arange(done + 1, done + eval_every + 1), metrics)
            except BaseException as err:
                _keep_completed_rounds(err, manager, blocks, evals, eval_every, config)
                raise
            _check_finite(metrics, np.asarray(finite), blocks, evals, done, eval_every, config)
            blocks.append(metrics)
            evals.append(_to_numpy(evaluation))
            done += eval_every
            if tick is None:
                bar.update(eval_every)
            try:
                _log_eval(opened, done, evals[-1])  # before the checkpoint: a log holds every checkpointed round
                if manager is not None:
                    manager.save(done, carry, blocks, evals)
            except BaseException as err:
                _keep_completed_rounds(err, manager, blocks, evals, eval_every, config)
                raise
            if on_block is not None:
                on_block(done, _assemble(blocks, evals, eval_every, config))
    finally:
        bar.close()
    return _assemble(blocks, evals, eval_every, config)


def _log_rounds(loggers: list[Logger], rounds: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
    for logger in loggers:
        logger.log_rounds(rounds, metrics)


def _log_round(loggers: list[Logger], round_: int, metrics: dict[str, Any]) -> None:
    """One round of the host loop (``metrics[name]`` ``[seeds]``) to every logger."""
    _log_rounds(loggers, np.asarray([round_]), {k: np.asarray(v)[:, None] for k, v in metrics.items()})


def _log_eval(loggers: list[Logger], round_: int, evaluation: dict[str, np.ndarray]) -> None:
    for logger in loggers:
        logger.log_eval(round_, evaluation)


def _keep_completed_rounds(err: BaseException, manager, blocks, evals, eval_every, config) -> None:
    """Puts the rounds completed before ``err`` in ``err.results`` and says so, and how to resume, in a note."""
    results = _assemble(blocks, evals, eval_every, config)
    try:
        err.results = results
        kept = f"the {results.num_rounds} rounds completed before this error are in its `.results`"
    except (AttributeError, TypeError):  # an exception type that takes no attributes
        kept = f"{results.num_rounds} rounds were completed before this error"
    err.add_note(f"cdb.run: {kept}; {_resume_note(manager)}")


def _resume_note(manager) -> str:
    if manager is None:
        return "pass checkpoint_dir= to be able to resume a run"
    if manager.latest() is None:
        return f"none is checkpointed in {str(manager.directory)!r}, so there is nothing to resume"
    return (
        f"the first {manager.latest()} rounds are checkpointed in {str(manager.directory)!r}; call cdb.run again with "
        f"checkpoint_dir={str(manager.directory)!r} and resume=True to continue from there"
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
