"""Recommenders: an alignment agent's best guess per prompt, the arm its BAI regret is measured on.

A recommender decodes one response per prompt::

    responses = recommender(key, RecommendInputs(policy, policy_params, reference_params, prompts,
                                                 prompt_mask, length, eos_id, pad_id, reward))  # [N, L] int32

* :class:`GreedyDecoding` — greedy decoding of π_θ (temperature 0);
* :class:`DeRa` — greedy decoding of DeRa's per-token logits ``λ·h_θ + (1−λ)·h_ref`` (Liu et al.
  2024, "Decoding-time Realignment of Language Models"): λ = 1 is π_θ, λ = 0 is π_ref, λ > 1
  extrapolates past π_θ;
* :class:`BestOfN` — N samples of π_ref ranked by the reward ensemble's mean (EE4LLM's policy,
  Dwaracherla et al. 2024); needs a reward model.

Recommenders are frozen dataclasses (static under ``jit``); ``needs_reward_model`` tells the
agent to supply ``reward``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from cdb.models import Mixture
from cdb.proposers import ProposerInputs
from cdb.sequences import greedy_responses, response_mask
from cdb.validation import check_float, check_int

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RecommendInputs(ProposerInputs):
    """What a recommender may use: a proposer's inputs (:class:`cdb.proposers.ProposerInputs`, whose
    ``sample`` draws responses) and the reward model (a plain container; built inside the agent's
    traced ``recommend``).

    Attributes (beyond :class:`~cdb.proposers.ProposerInputs`'):
      policy_params: π_θ's parameters (π_ref's when the policy is never trained).
      reward: ``(prompts [N, Lp], prompt_mask, responses [N, K, L], response_mask [N, K, L]) -> [N, K]``
        the reward model's mean score, or ``None`` when the agent has no reward model.
    """

    reward: Callable[..., Array] | None = None


@runtime_checkable
class Recommender(Protocol):
    """``recommender(key, inputs: RecommendInputs) -> [N, L]`` int32."""

    needs_reward_model: ClassVar[bool]

    def __call__(self, key: Array, inputs: RecommendInputs) -> Array: ...


@dataclasses.dataclass(frozen=True)
class GreedyDecoding:
    """Greedy decoding of π_θ: ``y_t = argmax_v π_θ(v | x, y_<t)`` (``key`` unused)."""

    needs_reward_model: ClassVar[bool] = False

    def __call__(self, key: Array, inputs: RecommendInputs) -> Array:
        return greedy_responses(
            inputs.policy,
            inputs.policy_params,
            inputs.prompts,
            inputs.length,
            prompt_mask=inputs.prompt_mask,
            eos_id=inputs.eos_id,
            pad_id=inputs.pad_id,
        )


@dataclasses.dataclass(frozen=True)
class DeRa:
    """Greedy decoding of DeRa's logits: ``y_t = argmax_v [λ·h_θ + (1−λ)·h_ref]_v`` (``key`` unused).

    Attributes:
      lam: λ ≥ 0; 1 decodes π_θ (= :class:`GreedyDecoding`), 0 decodes π_ref, λ > 1 extrapolates.
    """

    lam: float = 1.0
    needs_reward_model: ClassVar[bool] = False

    def __post_init__(self):
        check_float(self, "lam", self.lam, low=0.0)

    def __call__(self, key: Array, inputs: RecommendInputs) -> Array:
        return greedy_responses(
            inputs.policy,
            inputs.policy_params,
            inputs.prompts,
            inputs.length,
            prompt_mask=inputs.prompt_mask,
            eos_id=inputs.eos_id,
            pad_id=inputs.pad_id,
            mixture=Mixture(inputs.reference_params, self.lam, "dera"),
        )


@dataclasses.dataclass(frozen=True)
class BestOfN:
    """The best of ``n`` π_ref samples under the reward ensemble's mean: ``argmax_i mean_e r_e(x, y_i)``.

    Attributes:
      n: N ≥ 1 samples per prompt.
    """

    n: int = 8
    needs_reward_model: ClassVar[bool] = True

    def __post_init__(self):
        check_int(self, "n", self.n, low=1)

    def __call__(self, key: Array, inputs: RecommendInputs) -> Array:
        if inputs.reward is None:
            raise ValueError("BestOfN needs the agent's reward model (RecommendInputs.reward is None)")
        batch, length = inputs.prompts.shape[0], inputs.length
        samples = inputs.sample(key, inputs.reference_params, self.n).tokens.reshape(batch, self.n, length)
        mean = inputs.reward(inputs.prompts, inputs.prompt_mask, samples, response_mask(samples, inputs.eos_id))
        best = jnp.argmax(mean, axis=1)
        return samples[jnp.arange(batch), best]
