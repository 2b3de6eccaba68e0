"""What both runners share: the per-seed carry, the state check, an agent's arrays as arguments.

The keys each runner hands out are :mod:`cdb.keys`'s schedule.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Carry:
    """Everything one seed's experiment carries from round to round."""

    env_state: Any
    agent_state: Any
    obs: Any
    seed_key: jax.Array  # raw uint32 key data, so checkpoints need no typed-key support


def _state_is_finite(agent_state: Any) -> jax.Array:
    """Whether every floating leaf of one seed's agent state is finite (a scalar bool)."""
    ok = jnp.bool_(True)
    for leaf in jax.tree.leaves(agent_state):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


#: Arrays with at least this many elements are passed to compiled programs as arguments (smaller
#: ones stay constants: they cost nothing and may be read as Python values while tracing).
HOIST_MIN_SIZE = 1024


class _Slot(int):
    """Where a hoisted array goes back (an index into the arguments)."""


@dataclasses.dataclass(frozen=True, eq=False)
class _Rebuild:
    """A node to rebuild: a dataclass (``template`` copied, ``parts`` by field) or a pytree
    (``template`` its treedef, ``parts`` its leaves)."""

    kind: str
    template: Any
    parts: Any


def split_arrays(obj: Any) -> tuple[list[jax.Array], Callable[[list[Any]], Any]]:
    """The device arrays an object holds, and a function that rebuilds it around other arrays.

    ``arrays, rebuild = split_arrays(agent)``; ``rebuild(arrays)`` is an equal copy of ``agent``,
    and ``rebuild(tracers)`` the same object around traced arrays. A compiled program should take
    the arrays as arguments: ``jax.jit(lambda arrays, *a: rebuild(arrays).select(*a))(arrays, ...)``.
    Arrays a traced function closes over become constants of the program instead: XLA then copies
    each into every program that reads it (135M float32 parameters are 0.54 GB per program, and
    seconds of lowering), and JAX keeps each program alive with its copy.

    The walk follows dataclass fields (frozen ones are copied without ``__init__``, so their
    ``__post_init__`` checks do not run on tracers) and pytree nodes (``nnx.State``, dicts,
    lists, tuples, ``struct.dataclass``); it hoists every ``jax.Array`` of at least
    :data:`HOIST_MIN_SIZE` elements and leaves everything else (functions, tokenizers, numbers,
    small arrays) in place. An object reached twice is rebuilt once.
    """
    arrays: list[jax.Array] = []
    seen: dict[int, Any] = {}

    def walk(node):
        if id(node) in seen:
            return seen[id(node)]
        out = node
        if isinstance(node, jax.Array):
            if node.size >= HOIST_MIN_SIZE and not jnp.issubdtype(node.dtype, jax.dtypes.prng_key):
                arrays.append(node)
                out = _Slot(len(arrays) - 1)
        elif dataclasses.is_dataclass(node) and not isinstance(node, type) and not _is_pytree_node(node):
            fields = {f.name: walk(getattr(node, f.name)) for f in dataclasses.fields(node) if hasattr(node, f.name)}
            if any(isinstance(v, _Slot | _Rebuild) for v in fields.values()):
                out = _Rebuild("dataclass", node, fields)
        elif _is_pytree_node(node):
            leaves, treedef = jax.tree.flatten(node, is_leaf=lambda x: x is not node and _stops_flatten(x))
            walked = [walk(leaf) for leaf in leaves]
            if any(isinstance(v, _Slot | _Rebuild) for v in walked):
                out = _Rebuild("pytree", treedef, walked)
        seen[id(node)] = out
        return out

    plan = walk(obj)

    def rebuild(values: list[Any]) -> Any:
        built: dict[int, Any] = {}

        def make(entry):
            if isinstance(entry, _Slot):
                return values[entry]
            if not isinstance(entry, _Rebuild):
                return entry
            if id(entry) not in built:
                if entry.kind == "pytree":
                    built[id(entry)] = jax.tree.unflatten(entry.template, [make(p) for p in entry.parts])
                else:
                    result = copy.copy(entry.template)
                    for name, value in entry.parts.items():
                        object.__setattr__(result, name, make(value))
                    built[id(entry)] = result
            return built[id(entry)]

        return make(plan)

    return arrays, rebuild


def _is_pytree_node(node: Any) -> bool:
    """Whether JAX flattens ``node`` into something other than itself."""
    leaves = jax.tree.leaves(node, is_leaf=lambda x: x is not node and _stops_flatten(x))
    return not (len(leaves) == 1 and leaves[0] is node)


def _stops_flatten(node: Any) -> bool:
    """Plain dataclasses inside a pytree are walked by field, not flattened as leaves of JAX's."""
    return dataclasses.is_dataclass(node) and not isinstance(node, type)
