"""Seeds sharded over 4 forced CPU devices give the single-device results (docs/design.md §8), also
when each device runs its seeds in chunks (``seed_chunk``).

The device count is fixed when JAX starts, so the sharded run happens in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and is compared here with a single-device run.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cdb
from cdb.agents import ee_ts
from cdb.ensemble import LinearEnsemble
from cdb.environments import LinearDuel

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import cdb
    from cdb.agents import ee_ts
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel
    from cdb.runners import CompiledRunner

    assert jax.device_count() == 4, jax.devices()
    pool = None if sys.argv[2] == "None" else int(sys.argv[2])
    env = LinearDuel(num_arms=5, feature_dim=3, batch_size=2, eval_batch_size=4, context_pool=pool)
    agent = ee_ts(reward_model=LinearEnsemble(num_members=4))
    runner = CompiledRunner(agent, env, env.default_params, impl="threefry2x32", seeds=8, shard_seeds=None)
    carry = runner.start(jax.random.split(jax.random.key(3), 8))
    assert len(jax.tree.leaves(carry)[0].sharding.device_set) == 4, "seeds were not sharded"
    results = cdb.run(agent, env, rounds=6, seeds=8, key=3, eval_every=3, progress=False)
    results.save(sys.argv[1] + "/sharded.npz")
    # each device's 2 seeds run one at a time (a scan over chunks inside shard_map)
    chunked = cdb.run(agent, env, rounds=6, seeds=8, key=3, eval_every=3, progress=False, seed_chunk=1)
    chunked.save(sys.argv[1] + "/chunked.npz")
    """
)


# context_pool: the environment indexes a host constant with seed-sharded indices, which a mesh
# with explicit axes rejects (a bug this case caught)
@pytest.mark.parametrize("context_pool", [None, 64])
def test_sharded_seeds_equal_single_device(tmp_path, context_pool):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"  # same XLA options as here
    env_vars = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(context_pool)],
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = LinearDuel(num_arms=5, feature_dim=3, batch_size=2, eval_batch_size=4, context_pool=context_pool)
    single = cdb.run(
        ee_ts(reward_model=LinearEnsemble(num_members=4)),
        env,
        rounds=6,
        seeds=8,
        key=3,
        eval_every=3,
        progress=False,
        shard_seeds=False,
    )
    for run in ("sharded", "chunked"):
        loaded = cdb.Results.load(tmp_path / f"{run}.npz")
        assert set(loaded.metrics) == set(single.metrics)
        for name in single.metrics:
            np.testing.assert_allclose(
                loaded.metrics[name], single.metrics[name], rtol=1e-5, atol=1e-6, err_msg=f"{run}: {name}"
            )
        np.testing.assert_allclose(
            loaded.eval_metrics["bai_regret"], single.eval_metrics["bai_regret"], rtol=1e-5, atol=1e-6, err_msg=run
        )
