"""Descriptions of an experiment's configuration: what ``cdb.run`` records, what a checkpoint is
checked against on resume, and what a sweep cell's id is the digest of.

:func:`describe` turns a (nested) frozen-dataclass configuration into JSON that is the same in
every process for the same content; :func:`digest` is the SHA-256 of that JSON;
:func:`config_differences` lists where two descriptions differ.

A function is described by its ``module.qualname`` when that name leads back to it (it is
defined at the top level of a module), else by its code and the values it captured (a lambda,
a closure such as an ``optax`` optimizer's functions), so that two functions of one name but
different code or captured values (two reward lambdas, two learning rates) are told apart. A
callable that can be described neither way (an object shown by its memory address) is marked
``{"unidentified_callable": name}``; :func:`unidentified_callables` finds the marks, so that a
resumed run, or a sweep cell found done, refuses a configuration whose callables could have
changed unnoticed. :func:`named` gives a callable a name of the user's choosing instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import re
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Module name prefix of sweep files loaded by ``cdb.sweep.load_sweep``.
SWEEP_FILE_MODULE = "cdb_sweep_config_"

#: The key of :func:`describe`'s mark on a callable that its name does not identify.
UNIDENTIFIED = "unidentified_callable"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclasses.dataclass(frozen=True)
class Named:
    """A callable with a name given by the user; :func:`describe` reports it by ``name`` alone.

    Use :func:`named` to build one. Calls go to ``fn``; ``__name__`` and ``__qualname__`` are
    ``name``, so code that labels a function by its name (e.g. ``RewardOracle.name``) shows it.
    """

    fn: Callable[..., Any]
    name: str

    def __post_init__(self):
        if not callable(self.fn):
            raise ValueError(f"named: fn={self.fn!r:.80} is not callable")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"named: name={self.name!r} is not allowed; expected a non-empty string")
        object.__setattr__(self, "__name__", self.name)
        object.__setattr__(self, "__qualname__", self.name)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def named(fn: Callable[..., Any], name: str) -> Named:
    """``fn`` under the name ``name`` in a run's configuration, for a callable that cannot be
    described otherwise (e.g. an instance of a class without a ``repr`` of its own), or to keep
    a configuration's description when only the function's code changed.

    The name then stands for the function: a resumed run, or a sweep cell found done, is taken
    to use the same function when the name is the same, so give a new name to a changed function::

        oracle = RewardOracle(cdb.config.named(MyScorer(), "my_scorer_v2"))
    """
    return Named(fn, name)


def describe(obj: Any) -> Any:
    """A JSON-friendly description of a (nested) frozen-dataclass configuration, the same in every process.

    * a dataclass: ``{"type": class name, field: description, ...}``, leaving out fields with
      ``metadata={"describe": False}`` (what does not change the experiment, e.g. where a
      reference policy was cached) and fields with ``repr=False`` (large or derived values,
      which other fields stand for) unless they hold a callable (e.g. ``RewardOracle.reward_fn``):
      what computes the experiment decides it;
    * a function, class or other callable that its ``module.qualname`` leads back to (defined at
      the top level of a module): that name (``module.`` left out for a script's ``__main__`` and
      a sweep file, so both give the same name); a :func:`named` callable: its name;
    * any other function (a lambda, a closure such as an ``optax`` transformation's ``init`` /
      ``update``): ``{"function": name, "code": digest of its bytecode and constants,
      "captured": {variable: description}, "defaults": [...]}``, so two such functions match when
      their code and the values they captured do (the bytecode is Python's: another Python
      version describes the same function differently);
    * a callable that cannot be described so (an object shown by its memory address, a builtin
      its name does not lead to): ``{"unidentified_callable": name}`` (see
      :func:`unidentified_callables`);
    * a bound method: ``{"type": "method", "self": ..., "name": ...}``; a ``functools.partial``:
      ``{"type": "functools.partial", "func", "args", "keywords"}``;
    * numbers, strings, lists, tuples and mappings as themselves; an array of at most 16
      elements as a list;
    * a larger array or another pytree of arrays (e.g. model weights): its type, shapes, dtypes
      and the SHA-256 of its bytes, so two configurations match exactly when the values do;
    * anything else: its ``repr`` with memory addresses removed.
    """
    return _describe(obj, ())


def _describe(obj: Any, active: tuple[int, ...]) -> Any:
    """:func:`describe`; ``active``: the functions whose captured values are being described (a
    function that captures itself, e.g. a recursive closure, is then given by its name)."""
    if isinstance(obj, Named):
        return obj.name
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: _describe(getattr(obj, f.name), active)
            for f in dataclasses.fields(obj)
            if f.metadata.get("describe", True) and (f.repr or callable(getattr(obj, f.name)))
        }
        return {"type": type(obj).__name__, **fields}
    if isinstance(obj, functools.partial):
        args = [_describe(a, active) for a in obj.args]
        keywords = {str(k): _describe(v, active) for k, v in obj.keywords.items()}
        return {"type": "functools.partial", "func": _describe(obj.func, active), "args": args, "keywords": keywords}
    if isinstance(obj, list | tuple):
        return [_describe(v, active) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _describe(v, active) for k, v in obj.items()}
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    if isinstance(obj, np.generic) and not isinstance(obj, np.void):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array) and not jnp.issubdtype(obj.dtype, jax.dtypes.prng_key):
        if np.size(obj) <= 16:
            return np.asarray(obj).tolist()
        return {"type": "array", "shape": list(np.shape(obj)), "dtype": str(obj.dtype), "sha256": _digest([obj])}
    if inspect.ismodule(obj):
        return f"module {obj.__name__}"
    if inspect.ismethod(obj):
        return {"type": "method", "self": _describe(obj.__self__, active), "name": obj.__name__}
    if callable(obj) and hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
        name = _qualified(obj)
        if _identifies(obj):
            return name
        function = inspect.unwrap(obj)
        if not inspect.isfunction(function):
            return {UNIDENTIFIED: name}
        if id(function) in active:
            return {"function": name, "recursive": True}
        return _describe_function(function, name, (*active, id(function)))
    leaves = jax.tree.leaves(obj)
    if leaves and not (len(leaves) == 1 and leaves[0] is obj):
        if all(isinstance(x, np.ndarray | jax.Array | np.generic | int | float | bool) for x in leaves):
            kind = type(obj)
            return {"type": f"{kind.__module__}.{kind.__qualname__}", "leaves": len(leaves), "sha256": _digest(leaves)}
    text = repr(obj)
    if callable(obj) and _ADDRESS.search(text):  # e.g. an instance of a callable class without a repr of its own
        return {UNIDENTIFIED: _ADDRESS.sub("", text)}
    return _ADDRESS.sub("", text)


def _describe_function(function: types.FunctionType, name: str, active: tuple[int, ...]) -> dict[str, Any]:
    """A function that its name does not identify, by its code and the values it captured."""
    out: dict[str, Any] = {"function": name, "code": _code_digest(function.__code__)}
    if function.__closure__:
        captured = {}
        for variable, cell in zip(function.__code__.co_freevars, function.__closure__, strict=True):
            try:
                captured[variable] = _describe(cell.cell_contents, active)
            except ValueError:  # a variable not yet assigned when the function was made
                captured[variable] = "<unassigned>"
        out["captured"] = captured
    if function.__defaults__:
        out["defaults"] = _describe(list(function.__defaults__), active)
    if function.__kwdefaults__:
        out["keyword_defaults"] = _describe(dict(function.__kwdefaults__), active)
    return out


def _code_digest(code: types.CodeType) -> str:
    """SHA-256 (first 16 hex digits) of a code object's bytecode, names and constants (nested code
    included), leaving out line numbers and file names, so that moving a function does not change it."""
    h = hashlib.sha256()

    def feed(c: types.CodeType) -> None:
        h.update(c.co_code)
        h.update(repr((c.co_names, c.co_varnames, c.co_freevars, c.co_argcount, c.co_kwonlyargcount)).encode())
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                feed(const)
            else:
                h.update(_constant_text(const).encode())

    feed(code)
    return h.hexdigest()[:16]


def _constant_text(value: Any) -> str:
    """A code constant as text that does not depend on the process (a frozenset's order does)."""
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(_constant_text(v) for v in value)) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(_constant_text(v) for v in value) + ")"
    return repr(value)


def digest(description: Any) -> str:
    """SHA-256 (hex) of a description's JSON with sorted keys."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def unidentified_callables(description: Any, path: str = "config") -> list[str]:
    """Where :func:`describe` marked a callable that it cannot describe, with what it shows of it:
    ``["config.env.oracle.reward_fn (<scorers.Scorer object>)", ...]``."""
    out: list[str] = []

    def walk(value, where):
        if isinstance(value, dict):
            if set(value) == {UNIDENTIFIED}:
                out.append(f"{where} ({value[UNIDENTIFIED]})")
                return
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    walk(description, path)
    return out


def unidentified_error(where: str, paths: list[str], consequence: str) -> ValueError:
    """The ``ValueError`` for a configuration with callables that cannot be identified across processes."""
    return ValueError(
        f"{where}; its configuration holds callables that can be described neither by a name nor by their "
        f"code, so a changed one would pass unnoticed: {'; '.join(paths[:8])}. {consequence} Give such an "
        "object a repr that says what it computes (e.g. make its class a dataclass), define it as a function, "
        "or name it: cdb.config.named(fn, 'a_name')."
    )


def config_differences(saved: Any, now: Any, path: str = "config", limit: int = 8) -> list[str]:
    """Where two JSON configurations differ: ``["config.agent.selector.type: 'EETS' -> 'Passive'", ...]``."""
    out: list[str] = []

    def walk(a, b, where):
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in a or k not in b:
                    out.append(f"{where}.{k}: {_short(a.get(k, '<absent>'))} -> {_short(b.get(k, '<absent>'))}")
                else:
                    walk(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            out.append(f"{where}: {_short(a)} -> {_short(b)}")

    walk(saved, now, path)
    return out


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _qualified(obj: Any) -> str:
    module = obj.__module__ or ""
    if module == "__main__" or module.startswith(SWEEP_FILE_MODULE):
        return obj.__qualname__
    return f"{module}.{obj.__qualname__}"


def _identifies(obj: Any) -> bool:
    """Whether ``module.qualname`` leads back to ``obj`` (or to what it wraps, e.g. a jitted function).

    A module that is not imported (a sweep file, which ``runpy`` runs and forgets) cannot be
    looked into; its top-level names are taken to identify their objects.
    """
    qualname = obj.__qualname__
    if not isinstance(qualname, str) or "<" in qualname:  # <lambda>, <locals>, <genexpr>
        return False
    module = sys.modules.get(obj.__module__ or "")
    if module is None:
        return True
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return False
    if found is obj:
        return True
    try:
        return inspect.unwrap(found) is inspect.unwrap(obj)
    except ValueError:  # a cycle of __wrapped__
        return False


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
