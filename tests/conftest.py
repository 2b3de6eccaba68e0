"""Shared test settings: JAX on CPU, a persistent compilation cache for repeated local runs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compilation dominates these tiny tests; XLA's cheapest backend optimisation level roughly
# halves it (measured on the tier-2 files: 6:41 -> 4:06) and changes no result the tests check.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

# One cache directory per xdist worker: JAX writes cache entries without an atomic rename, so a
# worker reading an entry the other is still writing can deserialize a truncated executable (a
# segfault seen once in a fresh clone's `pytest -n 2`).
_cache_root = os.environ.get("CDB_TEST_JAX_CACHE", os.path.expanduser("~/.cache/cdb/jax_test_cache"))
jax.config.update("jax_compilation_cache_dir", os.path.join(_cache_root, os.environ.get("PYTEST_XDIST_WORKER", "main")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
