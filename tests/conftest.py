"""Shared test settings: JAX on CPU, a persistent compilation cache for repeated local runs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("CDB_TEST_JAX_CACHE", os.path.expanduser("~/.cache/cdb/jax_test_cache"))
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
