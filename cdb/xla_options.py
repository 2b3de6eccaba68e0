"""XLA options and seed chunks of the compiled runner: what ``run(seed_chunk="auto",
compiler_options="auto")`` resolve to on each backend, with the measurements behind them."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


def memory_map_count() -> tuple[int, int] | None:
    """``(maps, limit)``: this process's memory maps and the kernel's ``vm.max_map_count`` (Linux), else ``None``."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            count = sum(1 for _ in maps)
        with open("/proc/sys/vm/max_map_count") as limit:
            return count, int(limit.read())
    except (OSError, ValueError):
        return None


def release_compiled_programs(fraction: float = 0.5) -> bool:
    """Clears JAX's caches of compiled programs when this process holds over ``fraction`` of its memory-map limit.

    XLA:CPU maps every compiled kernel into memory on its own, and a compiled program stays alive
    as long as a ``jax.jit`` cache holds it: a process that compiles some hundreds of programs
    (a sweep of many cells, a long test run) reaches Linux's ``vm.max_map_count`` (65530 by
    default), after which LLVM cannot map the next program ("LLVM compilation error: Cannot
    allocate memory") and the process dies with a segmentation fault. Call this between
    independent pieces of work; it calls :func:`jax.clear_caches` only near the limit, so
    programs that are still in use are recompiled (or read from the persistent compilation
    cache) at most once per clearing. Returns whether it cleared. Does nothing where
    ``/proc`` does not exist.
    """
    counts = memory_map_count()
    if counts is None or counts[0] <= fraction * counts[1]:
        return False
    jax.clear_caches()
    return True
