"""cdb.runners.common.split_arrays: an agent's arrays become arguments of its compiled programs, not constants."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from cdb.runners.common import HOIST_MIN_SIZE, split_arrays

BUILT = []


@dataclasses.dataclass(frozen=True, eq=False)
class Inner:
    weights: jax.Array
    table: np.ndarray
    name: str = "inner"

    def __post_init__(self):
        BUILT.append(self.name)  # a check that must not run again on tracers
        if not isinstance(self.weights, jax.Array) or isinstance(self.weights, jax.core.Tracer):
            raise AssertionError("__post_init__ ran on a rebuilt copy")


@struct.dataclass
class Pair:
    left: jax.Array
    right: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Outer:
    inner: Inner
    also_inner: Inner
    state: nnx.State
    pairs: dict
    small: jax.Array
    scale: float = 2.0

    def apply(self, x):
        return self.scale * (x @ self.inner.weights + self.pairs["p"].left.sum() + self.small.sum())


def _outer():
    key = jax.random.split(jax.random.key(0), 3)
    inner = Inner(jax.random.normal(key[0], (64, 32)), np.arange(5))
    layer = nnx.Linear(8, HOIST_MIN_SIZE // 8, rngs=nnx.Rngs(0))
    pair = Pair(jax.random.normal(key[1], (HOIST_MIN_SIZE,)), jax.random.normal(key[2], (HOIST_MIN_SIZE,)))
    return Outer(inner, inner, nnx.split(layer)[1], {"p": pair, "n": 3}, jnp.ones(4))


def test_the_big_arrays_are_found_once_and_put_back():
    outer = _outer()
    arrays, rebuild = split_arrays(outer)
    # inner.weights (shared by two fields), the layer's kernel, and the pair's two leaves; not the
    # small array, the numpy table or the layer's 128-wide bias
    sizes = sorted(a.size for a in arrays)
    assert sizes == sorted([64 * 32, 8 * (HOIST_MIN_SIZE // 8), HOIST_MIN_SIZE, HOIST_MIN_SIZE])
    BUILT.clear()
    copy = rebuild(arrays)
    assert BUILT == []  # dataclasses are copied, never constructed again
    assert copy is not outer and copy.inner is copy.also_inner  # shared objects stay shared
    assert copy.inner.weights is outer.inner.weights and copy.inner.table is outer.inner.table
    assert copy.small is outer.small and copy.pairs["n"] == 3 and copy.scale == 2.0
    np.testing.assert_array_equal(copy.state["kernel"][...], outer.state["kernel"][...])
    zeros = rebuild([jnp.zeros_like(a) for a in arrays])
    assert float(jnp.abs(zeros.inner.weights).sum()) == 0 and float(jnp.abs(outer.inner.weights).sum()) > 0


def test_a_program_takes_them_as_arguments_not_constants():
    outer = _outer()
    arrays, rebuild = split_arrays(outer)
    x = jnp.ones((3, 64))
    hoisted = jax.jit(lambda held, v: rebuild(held).apply(v))
    closed = jax.jit(lambda v: outer.apply(v))
    np.testing.assert_allclose(hoisted(arrays, x), closed(x), rtol=1e-5, atol=1e-4)  # sums folded in another order
    # a closed-over array is written into the program as a dense constant; a hoisted one is not
    assert len(closed.lower(x).as_text()) > 10 * len(hoisted.lower(arrays, x).as_text())
    memory = hoisted.lower(arrays, x).compile().memory_analysis()
    used = outer.inner.weights.nbytes + outer.pairs["p"].left.nbytes  # jit drops the arguments it never reads
    assert memory.argument_size_in_bytes >= used


def test_the_host_runner_passes_the_reference_parameters_as_arguments():
    """The tier-3 agent's π_ref parameters are arguments of ``select``, not constants of it."""
    import tier3_fixtures as t3

    from cdb import agents
    from cdb.runners.host import _jitted_agent, _Same

    ref = t3.micro_pretrained()
    agent = agents.online_dpo(ref)
    jitted = _jitted_agent(_Same(agent), "threefry2x32")
    arrays = jitted["select"].args[0]
    big = [leaf for leaf in jax.tree.leaves(ref.params) if leaf.size >= HOIST_MIN_SIZE]
    assert big and all(any(a is leaf for a in arrays) for leaf in big)
