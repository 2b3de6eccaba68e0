"""Shared test settings: JAX on CPU, and a compilation cache that each test process shares with
itself and its notebook kernels."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _with_fast_compilation(flags: str) -> str:
    """``flags`` plus the XLA options that make these tiny tests compile fast, where this XLA knows them.

    Compilation dominates the tests. XLA's cheapest backend optimisation level roughly halves it
    (measured on the tier-2 files: 6:41 -> 4:06), and XLA:CPU's older loop emitters compile a
    tier-2 agent's round in about half the time of its MLIR fusion emitters (SEA's block:
    10.4 s -> 6.0 s with jax 0.10.2; the whole suite on 2 cores: 18-20 min -> 12 min). Neither
    changes a result the tests check. XLA aborts on a flag it does not know, and a later XLA may
    drop these, so one subprocess tries them first; the test processes inherit the outcome.
    """
    extra = ["--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"]
    extra = [f for f in extra if f.split("=")[0] not in flags]
    candidate = " ".join([flags, *extra]).strip()
    probe = [sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"]
    env = {**os.environ, "XLA_FLAGS": candidate}
    known = subprocess.run(probe, env=env, capture_output=True, timeout=300).returncode == 0
    return candidate if known else flags


if os.environ.get("CDB_TEST_XLA_FLAGS") is None:  # pytest's main process; xdist workers inherit both
    os.environ["XLA_FLAGS"] = _with_fast_compilation(os.environ.get("XLA_FLAGS", ""))
    os.environ["CDB_TEST_XLA_FLAGS"] = os.environ["XLA_FLAGS"]

import jax  # noqa: E402
import pytest  # noqa: E402

from cdb.xla_options import release_compiled_programs  # noqa: E402

# One cache directory per xdist worker: JAX writes cache entries without an atomic rename, so a
# worker reading an entry the other is still writing can deserialize a truncated executable (a
# segfault seen once in a fresh clone's `pytest -n 2`). And by default a fresh directory per
# run: with jax 0.10, loading executables that an *earlier* run wrote segfaulted a worker in 3 of
# about 6 runs (in `compilation_cache.get_executable_and_time`), never in a run that started
# empty. A run still reuses what it compiled itself (evicted `cdb.run` programs, notebook
# kernels). `CDB_TEST_JAX_CACHE=dir` keeps the cache across runs, at that risk.
_cache_root = os.environ.get("CDB_TEST_JAX_CACHE")
if _cache_root is None:
    _cache_root = tempfile.mkdtemp(prefix="cdb_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache_root, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.path.join(_cache_root, os.environ.get("PYTEST_XDIST_WORKER", "main")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True)
def _bounded_memory_maps():
    """After each test, clears JAX's compiled programs if the worker nears ``vm.max_map_count``.

    An xdist worker compiles some hundreds of programs over the suite and XLA:CPU maps each
    kernel separately: without this a worker reached the limit of 65530 maps inside
    ``tests/test_generate.py`` and died with a segmentation fault ("LLVM compilation error: Cannot
    allocate memory").
    """
    yield
    release_compiled_programs()
