"""The host runner: round by round, for environments whose oracle runs on the host (tier 3)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from cdb import keys
from cdb.runners.common import Carry, _state_is_finite, split_arrays
from cdb.runners.metrics import round_metrics, scalar_info


class _Same:
    """An object compared by identity (alignment agents hold arrays, so they have no value hash)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


@functools.lru_cache(maxsize=8)
def _jitted_agent(agent: _Same, impl: str) -> dict:
    """The jitted, seed-vmapped functions of one agent object, shared by every run of it in this process.

    A new ``jax.jit`` wrapper would trace and compile again: for a 135M-parameter policy that is
    minutes per run, paid again by each ``seed_range`` part or resumed run of the same agent.

    The agent's own arrays (π_ref's parameters, a frozen encoder's) are arguments of every program
    (:func:`~cdb.runners.common.split_arrays`), never constants: one copy in memory, shared by
    ``select``, ``update``, ``recommend`` and ``init``. ``update`` donates the agent state it is
    given, so the new state (π_θ and its optimiser's moments, 1.6 GB for SmolLM2-135M in float32)
    is written over the old one instead of beside it.

    The functions are vmapped over the seed axis only when a run has more than one seed: a tier-3
    run usually holds one seed (each vmapped seed holds its own π_θ and optimiser state), and
    then the seed axis is dropped and put back around the unbatched function, which traces
    faster and runs as written (a batched ``while_loop`` or sampler would otherwise be batched
    for nothing).
    """
    arrays, rebuild = split_arrays(agent.obj)

    def method(name, in_axes):
        def run(held, *args):
            fn = functools.partial(getattr(rebuild(held), name))
            seeds = {
                jnp.shape(leaf)[0]
                for a, ax in zip(args, in_axes, strict=True)
                if ax == 0
                for leaf in jax.tree.leaves(a)
            }
            if seeds == {1}:
                drop = [jax.tree.map(lambda x: x[0], a) if ax == 0 else a for a, ax in zip(args, in_axes, strict=True)]
                return jax.tree.map(lambda x: x[None], fn(*drop))
            return jax.vmap(fn, in_axes=in_axes)(*args)

        return run

    def seed_stage_keys(schedule):
        return lambda seed_keys, index: jax.vmap(lambda k: schedule(k, index, impl))(seed_keys)

    def bind(fn):
        return functools.partial(fn, arrays)

    return {
        "select": bind(jax.jit(method("select", (0, 0, 0)))),
        "update": bind(jax.jit(method("update", (0, 0, 0, 0, 0)), donate_argnums=2)),
        "recommend": bind(jax.jit(method("recommend", (0, 0, 0)))),
        "init": bind(jax.jit(method("init", (0, None)), static_argnums=2)),
        "finite": jax.jit(jax.vmap(_state_is_finite)),
        "round_keys": jax.jit(seed_stage_keys(keys.round_keys)),
        "eval_keys": jax.jit(seed_stage_keys(keys.eval_keys)),
    }


class HostRunner:
    """Round-by-round host loop for environments that cannot be traced (tier 3 oracles).

    The agent's functions are jitted and vmapped over seeds; the environment is called seed by
    seed. The carry stacks the seeds' environment states and observations (each a pytree of
    arrays) along a leading seed axis, as the compiled runner does, so checkpoints are the same.
    Each round records its wall seconds in ``seconds_select`` (the agent's ``select`` for all
    seeds), ``seconds_env`` (``env.step`` for every seed) and ``seconds_update`` (``update``),
    the same value for every seed, each timed after ``jax.block_until_ready`` of its results.
    ``run_block`` hands each round's metrics to ``on_round`` as soon as the round ends, so a
    run's loggers follow a slow tier-3 run round by round.
    """

    ticks_per_round = True
    streams_rounds = True

    def __init__(self, agent, env, params, impl, seeds):
        self.agent, self.env, self.params, self.impl = agent, env, params, impl
        jitted = _jitted_agent(_Same(agent), impl)
        self.select, self.update, self.recommend = jitted["select"], jitted["update"], jitted["recommend"]
        self.agent_init, self.finite = jitted["init"], jitted["finite"]
        self.round_keys, self.eval_keys = jitted["round_keys"], jitted["eval_keys"]

    def start(self, seed_keys):
        resets = [self.env.reset(keys.reset_key(k), self.params) for k in seed_keys]
        init_keys = jnp.stack([keys.init_key(k) for k in seed_keys])
        agent_state = self.agent_init(init_keys, self.env.spec)
        env_state, obs = _stack([r[0] for r in resets]), _stack([r[1] for r in resets])
        return Carry(env_state, agent_state, obs, jax.random.key_data(seed_keys))

    def place(self, carry):
        return carry

    def run_block(self, carry, start, length, eval_index, tick=None, on_round=None):
        """``(carry, metrics [seeds, length], state_finite [seeds], evaluation)`` of rounds
        ``start + 1 .. start + length``; after each, ``tick(1)`` and ``on_round(round, metrics
        {name: [seeds]})``."""
        rows = []
        seeds = carry.seed_key.shape[0]
        for t in range(start, start + length):
            round_keys = self.round_keys(carry.seed_key, jnp.int32(t))
            clock = time.perf_counter()
            duel, select_info = jax.block_until_ready(self.select(round_keys[:, 0], carry.agent_state, carry.obs))
            after_select = time.perf_counter()
            steps = [
                self.env.step(round_keys[s, 1], _index(carry.env_state, s), _index(duel, s), self.params)
                for s in range(seeds)
            ]
            env_state, next_obs, feedback = (_stack([st[i] for st in steps]) for i in range(3))
            jax.block_until_ready((env_state, next_obs, feedback))
            after_env = time.perf_counter()
            agent_state, update_info = jax.block_until_ready(
                self.update(round_keys[:, 2], carry.agent_state, carry.obs, duel, feedback)
            )
            after_update = time.perf_counter()
            timings = {
                "seconds_select": after_select - clock,
                "seconds_env": after_env - after_select,
                "seconds_update": after_update - after_env,
            }
            rows.append(
                {
                    **scalar_info(select_info, seed_axes=1),
                    **scalar_info(update_info, seed_axes=1),
                    **_stack([round_metrics(st[3], st[2]) for st in steps]),
                    **{k: np.full(seeds, v, np.float32) for k, v in timings.items()},
                }
            )
            carry = Carry(env_state, agent_state, next_obs, carry.seed_key)
            if tick is not None:
                tick(1)
            if on_round is not None:
                on_round(t + 1, rows[-1])
        metrics = {k: np.stack([np.asarray(r[k]) for r in rows], axis=1) for k in rows[0]}
        return carry, metrics, self.finite(carry.agent_state), self.run_eval(carry, eval_index)

    def run_eval(self, carry, eval_index):
        eval_keys = self.eval_keys(carry.seed_key, jnp.int32(eval_index))
        seeds = carry.seed_key.shape[0]
        obs = [self.env.eval_observation(_index(carry.env_state, s), self.params) for s in range(seeds)]
        arms = self.recommend(eval_keys[:, 0], carry.agent_state, _stack(obs))
        out = [
            self.env.evaluate(eval_keys[s, 1], _index(carry.env_state, s), obs[s], arms[s], self.params)
            for s in range(seeds)
        ]
        return {k: jnp.stack([jnp.mean(o[k]) for o in out]).astype(jnp.float32) for k in out[0]}


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _index(tree, s: int):
    return jax.tree.map(lambda x: x[s], tree)
