"""Shared test settings: JAX on CPU, a persistent compilation cache for repeated local runs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compilation dominates these tiny tests; XLA's cheapest backend optimisation level roughly
# halves it (measured on the tier-2 files: 6:41 -> 4:06) and changes no result the tests check.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("CDB_TEST_JAX_CACHE", os.path.expanduser("~/.cache/cdb/jax_test_cache"))
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
