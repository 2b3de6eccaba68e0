"""One tiny ``SequenceDuel`` and one set of alignment agents, shared by the tier-2 tests.

Compilation dominates these tests (a compiled ``cdb.run`` of one alignment agent costs tens of
seconds on two CPU cores; running it afterwards costs milliseconds). So:

* the environment is built once per process — its reference policy is trained into a cache
  directory inside the session's pytest base temp dir (the same path for every importing
  module), and the object itself is memoised, so every module gets the *same* object;
* every agent is built once (:func:`tiny_agents`) and wrapped once (:func:`checked_agent`).
  ``cdb.run`` caches its compiled programs by (agent object, environment, params, seeds), so a
  test that runs a checked agent with :data:`SEEDS` seeds and ``eval_every=EVAL_EVERY`` reuses
  the program any other test compiled for it (more rounds are just more blocks). ``cdb.run``
  keeps the programs of its last 16 configurations; one evicted by other tests in between is
  traced again and, with JAX's persistent compilation cache (tests/conftest.py), loaded from disk.

Test modules import the fixtures they use::

    from sequence_fixtures import tiny_env  # noqa: F401  (a pytest fixture)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.agents import alignment, alignment_presets
from cdb.ensemble import MLPEnsemble
from cdb.environments.reference_policy import ReferenceConfig
from cdb.environments.sequence_duel import SequenceDuel, gold_reward
from cdb.losses import DAPLoss
from cdb.sequences import repeat_prompts, sample_responses, score_responses

V, LP, L, B, B_EVAL = 6, 2, 3, 4, 4
ROUNDS, SEEDS, EVAL_EVERY = 6, 2, 2  # every shared cdb.run uses SEEDS and EVAL_EVERY (one program per agent)
NUM_CANDIDATES = 3

TINY_REFERENCE = ReferenceConfig(
    num_layers=1, d_model=16, num_heads=2, d_ff=32, train_steps=60, train_batch_size=32, eval_size=64
)
# Small enough to compile fast; 3 members so that every Thompson-sampling rule applies.
TINY_ENSEMBLE = MLPEnsemble(num_members=3, hidden_sizes=(8,), steps_per_update=1, batch_size=8, buffer_capacity=32)
# The ensemble whose held-out accuracy is tested: as cheap to compile, but it trains enough per
# round (8 steps of 32 pairs, lr 1e-2) to learn within a couple of hundred rounds of B = 4 pairs.
LEARNING_ENSEMBLE = MLPEnsemble(
    num_members=3, hidden_sizes=(32,), steps_per_update=8, batch_size=32, buffer_capacity=1024, learning_rate=1e-2
)
HELDOUT_PAIRS = 512


@functools.cache
def build_tiny_env(cache_dir: str) -> SequenceDuel:
    """The tiny environment (memoised per cache directory, so one object per test session)."""
    return SequenceDuel(
        vocab_size=V,
        prompt_length=LP,
        response_length=L,
        batch_size=B,
        eval_batch_size=B_EVAL,
        eval_reference_samples=2,
        reference_config=TINY_REFERENCE,
        cache_dir=cache_dir,
    )


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory) -> SequenceDuel:
    """The shared tiny ``SequenceDuel`` with its reference policy trained (once per session)."""
    cache_dir = tmp_path_factory.getbasetemp() / "cdb_reference_cache"
    cache_dir.mkdir(exist_ok=True)
    env = build_tiny_env(str(cache_dir))
    env.build_reference()  # trains (or loads) π_ref once per session, outside any trace
    return env


# --------------------------------------------------------------------------------------------
# Agents
# --------------------------------------------------------------------------------------------


@functools.cache
def tiny_agents(env: SequenceDuel) -> dict[str, alignment.AlignmentAgent]:
    """Every named alignment agent, once per environment (the same objects for every test)."""
    ref = env.reference
    m = NUM_CANDIDATES
    return {
        "offline_dpo": alignment_presets.offline_dpo(ref, budget=8),
        "frozen_sampler_dpo": alignment_presets.frozen_sampler_dpo(ref),
        # the larger learning rate makes the win-rate test (test_alignment_agents) fast and safe
        "online_dpo": alignment_presets.online_dap(
            ref, loss=DAPLoss("dpo"), optimizer=alignment.policy_optimizer(1e-2)
        ),
        "online_ipo": alignment_presets.online_dap(ref, loss=DAPLoss("ipo")),
        "online_slic": alignment_presets.online_dap(ref, loss=DAPLoss("slic")),
        "sea_ee_ts": alignment_presets.sea(
            ref, num_candidates=m, rule="ee_ts", gamma=1.0, reward_model=LEARNING_ENSEMBLE
        ),
        "sea_bai_ts": alignment_presets.sea(
            ref, num_candidates=m, rule="bai_ts", gamma=1.0, reward_model=TINY_ENSEMBLE
        ),
        "sea_mixed": alignment_presets.sea(ref, num_candidates=m, rule="ee_ts", gamma=0.5, reward_model=TINY_ENSEMBLE),
        "apl": alignment_presets.apl(ref, num_candidates=m + 1, query_fraction=0.5),
        "xpo": alignment_presets.xpo(ref),
        "ee4llm": alignment_presets.ee4llm(
            ref, num_candidates=m, rule="double_ts", reward_model=TINY_ENSEMBLE, best_of_n=3
        ),
        "nash_md": alignment_presets.nash_md(ref),
    }


AGENT_NAMES = (
    "offline_dpo",
    "frozen_sampler_dpo",
    "online_dpo",
    "online_ipo",
    "online_slic",
    "sea_ee_ts",
    "sea_bai_ts",
    "sea_mixed",
    "apl",
    "xpo",
    "ee4llm",
    "nash_md",
)


@dataclasses.dataclass(frozen=True)
class HeldOutPairs:
    """Fresh pairs of reference samples on fresh prompts, as reward-model features, with gold order.

    ``features`` ``[N, 2, D]`` (the agent's own feature map on π_ref's teacher-forced pass) and
    ``first_better`` ``[N]`` bool, ``r*(x, y₁) > r*(x, y₂)`` (pairs with equal gold reward dropped).
    """

    features: jax.Array
    first_better: jax.Array


def heldout_pairs(env: SequenceDuel, agent: alignment.AlignmentAgent, n: int = HELDOUT_PAIRS, seed: int = 12345):
    """``n`` held-out pairs for ``agent``'s reward model, drawn independently of any run."""
    ref = env.reference

    @jax.jit  # one compilation instead of a few hundred eager ops
    def draw(key, params, tables):
        k_prompts, k_samples = jax.random.split(key)
        prompts = jax.random.randint(k_prompts, (n, env.prompt_length), 0, env.vocab_size, jnp.int32)
        flat_prompts = repeat_prompts(prompts, 2)
        responses, _ = sample_responses(k_samples, ref.policy, params, flat_prompts, env.response_length)
        scores = score_responses(ref.policy, params, flat_prompts, responses)
        features = agent.features(scores, flat_prompts, responses).reshape(n, 2, -1)
        gold = gold_reward(tables, prompts, responses.reshape(n, 2, env.response_length))  # [n, 2]
        return features, gold[:, 0] > gold[:, 1], gold[:, 0] != gold[:, 1]

    features, first_better, distinct = draw(jax.random.key(seed), ref.params, env.tables)
    keep = np.asarray(distinct)
    return HeldOutPairs(features=features[keep], first_better=first_better[keep])


@dataclasses.dataclass(frozen=True, eq=False)
class CheckedAgent:
    """An agent wrapped for the contract: static checks at trace time, extra per-round counts.

    * ``select``'s duel must be ``arms [B, 2, L]`` int32 and ``query [B]`` bool; ``update``'s and
      ``select``'s info must be scalars; ``recommend`` must give ``[N, L]`` int32 (checked once,
      while tracing: free at run time).
    * ``select`` adds to its info ``marked_for_oracle`` (``Σ duel.query``, counted from the duel
      itself, to compare with the environment's ``queries``) and ``tokens_in_range`` (1 if every
      token of both arms is in ``[0, V)``); with ``heldout`` it adds ``heldout_accuracy``, the
      accuracy of the reward ensemble's mean on the held-out pairs' gold order (before the
      round's update).
    * every function may be traced once (``chex.assert_max_traces``): ``init``, ``select`` and
      ``update`` live in compiled programs of their own / the compiled block, ``recommend`` in
      the compiled evaluation, so several blocks must reuse one compilation. chex keys its
      counters by the wrapping site, shared by all ``CheckedAgent``s: call
      ``chex.clear_trace_counter()`` before running one.
    * anything else (``name``, ``reward_model``, ...) is forwarded to the wrapped agent.
    """

    agent: Any
    batch_size: int
    response_length: int
    vocab_size: int
    heldout: HeldOutPairs | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        for name in ("init", "select", "update", "recommend"):
            object.__setattr__(self, name, chex.assert_max_traces(getattr(self, f"_{name}"), n=1))

    def __getattr__(self, name):
        if name == "agent":  # not set yet (during construction or unpickling)
            raise AttributeError(name)
        return getattr(self.agent, name)

    def _init(self, key, spec):
        return self.agent.init(key, spec)

    def _select(self, key, state, obs):
        duel, info = self.agent.select(key, state, obs)
        chex.assert_shape(duel.arms, (self.batch_size, 2, self.response_length))
        chex.assert_shape(duel.query, (self.batch_size,))
        assert duel.arms.dtype == jnp.int32, duel.arms.dtype
        assert duel.query.dtype == jnp.bool_, duel.query.dtype
        assert all(jnp.ndim(v) == 0 for v in info.values()), {k: jnp.shape(v) for k, v in info.items()}
        in_range = jnp.all((duel.arms >= 0) & (duel.arms < self.vocab_size))
        info = {
            **info,
            "marked_for_oracle": jnp.sum(duel.query, dtype=jnp.int32),
            "tokens_in_range": in_range.astype(jnp.int32),
        }
        if self.heldout is not None:
            member_scores = self.agent.reward_model.scores(state.reward_model, self.heldout.features)  # [E, N, 2]
            mean = jnp.mean(member_scores, axis=0)
            info["heldout_accuracy"] = jnp.mean((mean[:, 0] > mean[:, 1]) == self.heldout.first_better)
        return duel, info

    def _update(self, key, state, obs, duel, feedback):
        state, info = self.agent.update(key, state, obs, duel, feedback)
        assert all(jnp.ndim(v) == 0 for v in info.values()), {k: jnp.shape(v) for k, v in info.items()}
        return state, info

    def _recommend(self, key, state, obs):
        arms = self.agent.recommend(key, state, obs)
        chex.assert_shape(arms, (obs.prompts.shape[0], self.response_length))
        assert arms.dtype == jnp.int32, arms.dtype
        return arms


@functools.cache
def checked_agent(env: SequenceDuel, name: str) -> CheckedAgent:
    """The shared :class:`CheckedAgent` of ``tiny_agents(env)[name]`` (SEA E&E-TS with the held-out probe)."""
    agent = tiny_agents(env)[name]
    heldout = heldout_pairs(env, agent) if name == "sea_ee_ts" else None
    return CheckedAgent(agent, env.batch_size, env.response_length, env.vocab_size, heldout)
