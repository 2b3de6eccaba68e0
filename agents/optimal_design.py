"""Optimal design for reward modelling (Scheid et al. 2024, "Optimal Design for Reward Modeling in RLHF").

Two things live here; they answer different questions and must not be confused.

1. **The offline experiment** — :class:`OfflineOptimalDesign` and :func:`run_offline_design`.
   The whole query set is chosen *before any label is seen*, as in the paper: a pool of
   contexts is drawn, a D-optimal design over the differences ``φ_i − φ_j`` of every pair of
   every pool context is computed by Frank–Wolfe (:mod:`cdb.design`), ``budget`` queries are
   taken from it and labelled by the oracle, the logistic MLE ``θ̂`` is fitted once, and the
   **simple (BAI) regret** of ``argmax_a θ̂ᵀφ(x, a)`` is measured on the held-out contexts with
   ``env.evaluate``. There is no cumulative regret: the duels played to get labels are not the
   object. How this uses the online API honestly:

   * *pool pass* — ``env.reset``, then ``pool_rounds`` ``env.step`` calls with duels marked
     ``query=False``: the contexts are observed, nothing is sent to the oracle, no label exists
     (``feedback.queried`` is all False and is checked);
   * *design* — on the pool only (labels cannot influence it: there are none yet);
   * *label pass* — the same ``reset`` state and the same round keys are replayed, so the same
     contexts come back (checked: the run fails if they differ, e.g. for an environment whose
     contexts depend on the duels), and each context is asked about **at most one** pair: the
     oracle of an online environment is a stream, one draw per context and round, so asking a
     context twice would reuse its random draw rather than give a fresh label. The design
     therefore respects "≤ 1 pair per context, ``budget`` contexts" exactly
     (:func:`cdb.design.grouped_d_optimal_design` + :func:`cdb.design.round_grouped_design`);
     ``budget <= pool_rounds × B``.
   * ``design='random'`` is the baseline: ``budget`` distinct pool contexts uniformly at
     random, one uniformly random pair each, same pool, labels and MLE.

   An oracle that can be asked the same pair again with a fresh label (a host oracle, a human)
   would use the unconstrained design :func:`cdb.design.d_optimal_design` with
   :func:`cdb.design.round_design` counts instead.

2. **The online agent** — :class:`OptimalDesignAgent`, for ``cdb.run`` and the contract test.
   It is the *label-free sequential* version of the same criterion: each round, for each
   context in turn, it plays the pair that maximises the gain in ``log det V``,
   ``log det(V + zzᵀ) − log det V = log(1 + zᵀV⁻¹z)``, i.e. ``argmax_{i≠j} ‖φ_i − φ_j‖²_{V⁻¹}``,
   where ``V = λI + Σ zzᵀ`` holds the pairs it chose before (earlier contexts of the same round
   included). This is the greedy / Fedorov–Wynn step of D-optimal design on the stream of
   contexts; it never looks at a label (selection depends on features and past choices only),
   so the sequence of queries is a design fixed in advance of the answers. Labels are used only
   by the logistic MLE behind ``recommend`` (``argmax θ̂ᵀφ``). It is a pure-exploration (BAI)
   agent: its cumulative regret is that of an agent that never exploits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cdb import design as design_lib
from cdb.agents.linear import LinearDuelingAgent, LinearState, random_distinct_pair
from cdb.agents.reward_model_agent import check_observation
from cdb.config import describe
from cdb.keys import eval_keys, init_key, reset_key, round_keys, seed_keys
from cdb.linalg import fit_logistic, pair_widths, sherman_morrison_rows
from cdb.results import Results
from cdb.types import Duel, Observation
from cdb.validation import check_choice, check_float, check_int

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
DESIGNS = ("d_optimal", "random")

__all__ = [
    "DESIGNS",
    "OfflineOptimalDesign",
    "OptimalDesignAgent",
    "all_pairs",
    "run_offline_design",
]


def all_pairs(num_arms: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(first [P], second [P])`` of the ``P = K(K−1)/2`` pairs ``i < j``, row-major."""
    first, second = np.triu_indices(num_arms, k=1)
    return first.astype(np.int32), second.astype(np.int32)


# --------------------------------------------------------------------------------------------
# The online, label-free sequential design agent.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimalDesignAgent(LinearDuelingAgent):
    """Label-free greedy D-optimal design online; recommends by the logistic MLE (module docstring, 2).

    Per round, for ``b = 1..B`` in order: ``(a1, a2) = argmax_{i ≠ j} ‖φ_i − φ_j‖_{V⁻¹}`` (first
    such pair in row-major order on ties), then ``V ← V + zzᵀ`` with ``z = φ_{a1} − φ_{a2}`` for
    the next context. ``V`` starts at ``λI`` and grows with every played pair; the labels never
    enter it. Fields: :class:`~cdb.agents.linear.LinearDuelingAgent` (``explore_rounds`` plays
    random pairs first, as for the other linear agents).

    Select info: ``log_det_gain`` — mean of ``log(1 + ‖z‖²_{V⁻¹})`` over the batch.
    """

    def select(self, key: Array, state: LinearState, obs: Observation) -> tuple[Duel, dict[str, Array]]:
        check_observation(self.name, obs, state.theta.shape[-1])
        batch, k = obs.features.shape[:2]
        keys = jax.random.split(key, batch)

        def choose(v_inv, xs):
            features, sub = xs
            widths = pair_widths(features, v_inv)
            flat = jnp.argmax(jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, widths).reshape(-1))
            arms = jnp.stack([flat // k, flat % k]).astype(jnp.int32)
            arms = jnp.where(state.t < self.explore_rounds, random_distinct_pair(sub, k), arms)
            z = features[arms[0]] - features[arms[1]]
            gain = jnp.log1p(jnp.dot(z, jnp.matmul(v_inv, z, precision=_HI)))
            return sherman_morrison_rows(v_inv, z[None], jnp.ones((1,), bool)), (arms, gain)

        _, (arms, gain) = jax.lax.scan(choose, state.v_inv, (obs.features, keys))
        return Duel(arms=arms, query=jnp.ones((batch,), bool)), {"log_det_gain": jnp.mean(gain)}


# --------------------------------------------------------------------------------------------
# The offline experiment.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OfflineOptimalDesign:
    """All queries chosen up front from a pool, then one MLE; simple regret (module docstring, 1).

    Attributes:
      budget: ``T >= 1`` oracle queries (at most one per pool context, so ``T <= pool_rounds × B``).
      pool_rounds: ``>= 1`` environment rounds whose ``B`` contexts form the pool.
      design: ``'d_optimal'`` (Frank–Wolfe, Scheid et al.) or ``'random'`` (uniform baseline).
      design_steps: Frank–Wolfe iterations (``>= 1``).
      design_reg: ``ε >= 0`` of ``log det(Σ w zzᵀ + εI)``.
      lam: ridge ``λ > 0`` of the logistic MLE.
      mle_steps: Newton steps of the MLE (``>= 1``; it starts from zero, so give it a few).
    """

    budget: int
    pool_rounds: int
    design: str = "d_optimal"
    design_steps: int = 200
    design_reg: float = 1e-6
    lam: float = 1.0
    mle_steps: int = 20

    def __post_init__(self):
        check_int(self, "budget", self.budget, low=1)
        check_int(self, "pool_rounds", self.pool_rounds, low=1)
        check_choice(self, "design", self.design, DESIGNS)
        check_int(self, "design_steps", self.design_steps, low=1)
        check_float(self, "design_reg", self.design_reg, low=0.0)
        check_float(self, "lam", self.lam, low=0.0, low_inclusive=False)
        check_int(self, "mle_steps", self.mle_steps, low=1)

    def run(self, key: Any, env: Any, env_params: Any = None, seeds: int = 1) -> dict[str, np.ndarray]:
        """Runs the experiment for ``seeds`` seeds (problem instance, pool and labels per seed).

        Keys are ``cdb.run``'s (:mod:`cdb.keys`): the same ``key`` gives seed ``s`` the problem
        instance and the first ``pool_rounds`` rounds of contexts that ``cdb.run(..., key=key)``
        gives it, for an environment whose contexts do not depend on the duels.

        Returns:
          ``bai_regret`` (mean over the held-out contexts), ``log_det`` (of the chosen set's
          normalised information matrix ``(1/T) Σ zzᵀ + εI``) and ``queries``, each ``[seeds]``.
        """
        _check_env(env, self)
        check_int(self, "run seeds", seeds, low=1)
        return self._run(seed_keys(key, seeds, f"{type(self).__name__}.run"), env, env_params)

    def _run(self, keys: Array, env: Any, env_params: Any) -> dict[str, np.ndarray]:
        pool = self.pool_rounds * env.spec.batch_size
        if self.budget > pool:
            raise ValueError(
                f"OfflineOptimalDesign.budget={self.budget} is out of range; expected an integer <= "
                f"the pool size pool_rounds × batch_size = {pool} (one query per pool context)"
            )
        params = env.default_params if env_params is None else env_params
        impl = str(jax.random.key_impl(keys))
        config = (
            env,
            self.pool_rounds,
            self.design,
            self.design_steps,
            self.design_reg,
            self.lam,
            self.mle_steps,
            impl,
        )
        try:
            fn = _compiled(*config)  # cached: one compilation per configuration, whatever the budget
        except TypeError:  # an unhashable environment
            fn = _compiled.__wrapped__(*config)
        out = {k: np.asarray(v) for k, v in fn(jax.random.key_data(keys), jnp.int32(self.budget), params).items()}
        if np.any(out.pop("pool_queried")):
            raise RuntimeError(f"{type(env).__name__} queried the oracle during the pool pass (query=False was asked)")
        mismatch = float(np.max(out.pop("replay_mismatch")))
        if mismatch > _REPLAY_RTOL:
            raise ValueError(
                f"{type(env).__name__}: replaying the pool's round keys gave different contexts (max "
                f"difference {mismatch} of the largest feature); the offline design needs contexts that "
                "do not depend on the duels"
            )
        return out


def run_offline_design(
    env: Any,
    budgets: Any,
    *,
    pool_rounds: int,
    seeds: int = 1,
    key: Any = 0,
    design: str = "d_optimal",
    env_params: Any = None,
    **options: Any,
) -> Results:
    """Simple regret per budget of the offline design (module docstring, 1), as a :class:`cdb.Results`.

    For a given seed every budget sees the same problem instance, pool and held-out contexts, so
    curves over budgets are paired; keys are ``cdb.run``'s (:meth:`OfflineOptimalDesign.run`),
    so seed ``s`` also meets the problem instance that ``cdb.run(agent, env, key=key)`` gives it.
    ``options`` are the other fields of :class:`OfflineOptimalDesign`. One compilation serves all
    budgets.

    Returns:
      :class:`cdb.Results` without per-round metrics (the experiment has no rounds of its own):
      ``eval_rounds`` holds the budgets ``T`` (oracle queries), and ``eval_metrics`` holds
      ``bai_regret`` (held-out simple regret of ``argmax θ̂ᵀφ``), ``log_det`` (D-criterion of the
      chosen query set) and ``queries``, each ``[seeds, n_budgets]``; so
      ``results.curve("bai_regret")`` is simple regret against budget. ``config`` records the
      design, its fields, the environment and ``key_impl``, as ``cdb.run`` does.
    """
    budgets = np.asarray(budgets).reshape(-1)
    if budgets.size == 0:
        raise ValueError("run_offline_design: budgets is empty; expected at least one integer >= 1")
    if not np.issubdtype(budgets.dtype, np.integer):
        raise ValueError(f"run_offline_design: budgets={budgets.tolist()} are not integers; expected integers >= 1")
    experiments = [
        OfflineOptimalDesign(budget=int(b), pool_rounds=pool_rounds, design=design, **options) for b in budgets
    ]
    _check_env(env, experiments[0])
    check_int("run_offline_design", "seeds", seeds, low=1)
    keys = seed_keys(key, seeds, "run_offline_design")
    outs = [experiment._run(keys, env, env_params) for experiment in experiments]
    params = env.default_params if env_params is None else env_params
    first = describe(experiments[0])
    config = {
        "experiment": "offline_design",
        "design": {k: v for k, v in first.items() if k != "budget"},
        "budgets": budgets.astype(int).tolist(),
        "env": describe(env),
        "env_params": describe(params),
        "seeds": seeds,
        "key_impl": str(jax.random.key_impl(keys)),
    }
    eval_metrics = {
        name: np.stack([out[name] for out in outs], axis=1) for name in ("bai_regret", "log_det", "queries")
    }
    return Results({}, budgets.astype(np.int64), eval_metrics, json.loads(json.dumps(config, default=str)))


def _check_env(env: Any, owner: Any) -> None:
    spec = env.spec
    if not getattr(env, "pure_jax", False):
        raise ValueError(
            f"{type(owner).__name__} needs a pure-JAX environment (env.pure_jax); got {type(env).__name__}"
        )
    if not spec.has_features or spec.num_arms is None or spec.num_arms < 2:
        raise ValueError(f"{type(owner).__name__} needs arm features and num_arms >= 2; got {spec}")


_REPLAY_RTOL = 1e-5
"""Largest difference, relative to the largest feature, allowed between the pool pass's contexts and
the label pass's replay of them. The two passes compute the same contexts in two places of one
program, and XLA may round the two copies differently (it does with XLA:CPU's loop emitters,
``--xla_cpu_use_fusion_emitters=false``: 2e-7); contexts that depend on the duels differ far more."""


@functools.lru_cache(maxsize=32)
def _compiled(env, pool_rounds, design, design_steps, design_reg, lam, mle_steps, impl):
    """``jit(vmap(one_seed))`` for one configuration; the budget is a traced argument.

    ``one_seed`` takes a seed's raw key data (of PRNG ``impl``) and draws its keys as ``cdb.run``
    does: the reset key, and for pool round ``t`` the environment's key of round ``t``. The random
    design draws from ``cdb.run``'s agent-init key, the held-out evaluation from its evaluation key
    at index 0.
    """
    spec = env.spec
    batch, k, d = spec.batch_size, spec.num_arms, spec.feature_dim
    first_idx, second_idx = (jnp.asarray(a) for a in all_pairs(k))
    n_pairs = first_idx.shape[0]

    def env_round_key(raw, t):
        return round_keys(raw, t, impl)[1]

    def one_seed(raw, budget, params):
        seed_key = jax.random.wrap_key_data(raw, impl=impl)
        k_reset, k_random = reset_key(seed_key), init_key(seed_key)
        k_eval = eval_keys(raw, 0, impl)[1]
        state0, obs0 = env.reset(k_reset, params)
        env_keys = jax.vmap(env_round_key, in_axes=(None, 0))(raw, jnp.arange(pool_rounds, dtype=jnp.int32))

        def play(carry, xs):
            state, obs = carry
            round_key, arms, query = xs
            state, next_obs, feedback, _ = env.step(round_key, state, Duel(arms=arms, query=query), params)
            return (state, next_obs), (obs.features, feedback.preference, feedback.queried)

        # Pool pass: observe contexts, query nothing.
        no_arms = jnp.broadcast_to(jnp.array([0, 1], jnp.int32), (pool_rounds, batch, 2))
        no_query = jnp.zeros((pool_rounds, batch), bool)
        _, (pool_features, _, pool_queried) = jax.lax.scan(play, (state0, obs0), (env_keys, no_arms, no_query))
        features = pool_features.reshape(pool_rounds * batch, k, d)
        z = features[:, first_idx] - features[:, second_idx]  # [N, P, d]

        # Design on the pool (no label exists yet).
        if design == "d_optimal":
            weights = design_lib.grouped_d_optimal_design(z, budget, design_steps, reg=design_reg)
            chosen, pair = design_lib.round_grouped_design(weights, budget)
        else:
            k_ctx, k_pair = jax.random.split(k_random)
            rank = jnp.argsort(jax.random.permutation(k_ctx, z.shape[0]))
            chosen = rank < budget
            pair = jax.random.randint(k_pair, (z.shape[0],), 0, n_pairs)

        # Label pass: replay the same contexts, ask each chosen context about its one pair.
        arms = jnp.stack([first_idx[pair], second_idx[pair]], axis=-1).reshape(pool_rounds, batch, 2)
        (state_t, _), (replay_features, labels, queried) = jax.lax.scan(
            play, (state0, obs0), (env_keys, arms, chosen.reshape(pool_rounds, batch))
        )
        scale = jnp.maximum(jnp.max(jnp.abs(pool_features)), 1.0)
        mismatch = jnp.max(jnp.abs(replay_features - pool_features)) / scale

        # One MLE on the labelled set, simple regret of its greedy arm on held-out contexts.
        z_chosen = jnp.take_along_axis(z, pair[:, None, None], axis=1)[:, 0]
        weight = queried.reshape(-1).astype(jnp.float32)
        theta, _ = fit_logistic(jnp.zeros((d,), jnp.float32), z_chosen, labels.reshape(-1), weight, lam, mle_steps)
        eval_obs = env.eval_observation(state_t, params)
        recommended = jnp.argmax(jnp.einsum("bkd,d->bk", eval_obs.features, theta, precision=_HI), axis=-1)
        regret = env.evaluate(k_eval, state_t, eval_obs, recommended.astype(jnp.int32), params)["bai_regret"]
        log_det = design_lib.log_det(z_chosen, weight / jnp.maximum(jnp.sum(weight), 1.0), design_reg)
        return {
            "bai_regret": jnp.mean(regret),
            "log_det": log_det,
            "queries": jnp.sum(queried).astype(jnp.int32),
            "pool_queried": jnp.any(pool_queried),
            "replay_mismatch": mismatch,
        }

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None, None)))
