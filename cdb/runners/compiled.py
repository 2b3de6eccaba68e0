"""The compiled runner: blocks of rounds as one jitted ``vmap(scan)`` over seeds (pure-JAX environments)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cdb.keys import eval_keys, init_key, reset_key, round_keys
from cdb.runners.common import Carry, _state_is_finite
from cdb.runners.metrics import round_metrics, scalar_info
from cdb.types import Agent, Environment


def _make_functions(agent: Agent, env: Environment, params: Any, impl: str):
    """Pure per-seed functions: init, one round, one evaluation; ``impl`` names the PRNG."""

    def init(seed_key: jax.Array) -> Carry:
        raw = jax.random.key_data(seed_key)
        env_state, obs = env.reset(reset_key(seed_key), params)
        agent_state = agent.init(init_key(seed_key), env.spec)
        return Carry(env_state, agent_state, obs, raw)

    def one_round(carry: Carry, t: jax.Array):
        k_select, k_env, k_update = round_keys(carry.seed_key, t, impl)
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
        k_rec, k_eval = eval_keys(carry.seed_key, index, impl)
        obs = env.eval_observation(carry.env_state, params)
        arms = agent.recommend(k_rec, carry.agent_state, obs)
        return {
            k: jnp.mean(v).astype(jnp.float32)
            for k, v in env.evaluate(k_eval, carry.env_state, obs, arms, params).items()
        }

    return init, one_round, evaluation


def _in_chunks(batched: Callable, seeds: int, chunk: int | None, *, updates_carry: bool) -> Callable:
    """``batched(carry, ts)`` (vmapped over ``seeds``) run on chunks of at most ``chunk`` seeds.

    The seeds are split into ``n = ceil(seeds / chunk)`` equal chunks of ``s`` seeds (the last
    seed repeated to fill them: fewer than ``n`` copies, dropped from the output), and a
    ``lax.scan`` over the chunk index runs chunk ``i`` of the ``[n, s, ...]`` carry, so XLA runs
    every round of the block for one chunk before the next and that chunk's features, scores and
    state stay in cache.

    With ``updates_carry`` (the block, which returns ``(carry, *outputs)``) the scan's carry is the
    whole ``[n, s, ...]`` state, and each chunk's new state is written back into it with
    ``dynamic_update_index_in_dim``. Because the block's input is donated and a loop's carry is
    updated in place, the state of all seeds exists once, and the working memory beyond it is one
    chunk's; only the small outputs (metrics) are stacked. (A ``lax.map`` over the chunks would
    stack the new states into a second buffer of the whole state.) When the seeds do not divide
    into equal chunks, the padding is a copy. Without ``updates_carry`` (the evaluation) the carry
    is only read.
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
        def body(state, i):
            result = batched(jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), state), ts)
            if not updates_carry:
                return state, result
            state = jax.tree.map(lambda s, v: jax.lax.dynamic_update_index_in_dim(s, v, i, 0), state, result[0])
            return state, result[1:]

        state, outputs = jax.lax.scan(body, jax.tree.map(split, carry), jnp.arange(n_chunks))
        merged = jax.tree.map(merge, outputs)
        return (jax.tree.map(merge, state), *merged) if updates_carry else merged

    return chunked


def compiled_runner(agent, env, params, impl, seeds, shard_seeds, seed_chunk, compiler_options) -> CompiledRunner:
    """Reuses the jitted functions of an identical earlier configuration (no recompilation).

    The environment parameters are closed over as constants, so they are part of the cache key
    by value.
    """
    try:
        options = tuple(sorted(compiler_options.items()))
        key = (agent, env, _value_key(params), impl, seeds, shard_seeds, seed_chunk, options)
        hash(key)
    except TypeError:  # an unhashable agent, environment or option value: build afresh
        return CompiledRunner(agent, env, params, impl, seeds, shard_seeds, seed_chunk, compiler_options)
    return _cached_runner(key, params)


def _value_key(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [np.asarray(leaf) for leaf in leaves]
    return (treedef, tuple((a.shape, a.dtype.str, a.tobytes()) for a in arrays))


@functools.lru_cache(maxsize=64)
def _cached_runner_for_key(key) -> dict:
    return {}


def _cached_runner(key, params) -> CompiledRunner:
    slot = _cached_runner_for_key(key)
    if "runner" not in slot:
        agent, env, _, impl, seeds, shard_seeds, seed_chunk, options = key
        slot["runner"] = CompiledRunner(agent, env, params, impl, seeds, shard_seeds, seed_chunk, dict(options))
    return slot["runner"]


class CompiledRunner:
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
                # chunks of each device's own seeds: a loop over chunks of a sharded axis would gather it
                def per_device(fn, updates):
                    return jax.shard_map(
                        _in_chunks(fn, seeds // n_dev, seed_chunk, updates_carry=updates),
                        mesh=mesh,
                        in_specs=(seeds_spec, jax.sharding.PartitionSpec()),
                        out_specs=seeds_spec,
                    )

                batched_block, batched_eval = per_device(batched_block, True), per_device(batched_eval, False)
        else:
            self.sharding = None
            batched_block = _in_chunks(batched_block, seeds, seed_chunk, updates_carry=True)
            batched_eval = _in_chunks(batched_eval, seeds, seed_chunk, updates_carry=False)
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
