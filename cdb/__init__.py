"""cdb: contextual dueling bandits in JAX, a model of LLM alignment from online preference feedback.

The whole API::

    import cdb
    from cdb.agents import ee_ts, passive
    from cdb.environments import LinearDuel

    env = LinearDuel(num_arms=16, feature_dim=8, batch_size=4)
    results = cdb.run(ee_ts(), env, rounds=200, seeds=8, eval_every=20)
    results.plot("cumulative_regret"); results.to_dataframe(); results.save("ee_ts.npz")
"""

from cdb.metrics import queries_to_target
from cdb.results import Results
from cdb.run import NonFiniteLossError, run
from cdb.types import Agent, Duel, Environment, EnvSpec, Feedback, Observation

__all__ = [
    "Agent",
    "Duel",
    "EnvSpec",
    "Environment",
    "Feedback",
    "NonFiniteLossError",
    "Observation",
    "Results",
    "queries_to_target",
    "run",
]
__version__ = "0.1.0"
