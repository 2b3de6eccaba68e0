"""Proposers: where candidate responses come from (DESIGN §4, first part of an agent).

A proposer maps prompts ``[B, Lp]`` to ``M`` candidate responses per prompt ``[B, M, L]``::

    candidates = proposer(key, policy, policy_params, reference_params, prompts, length)

``policy`` is the model definition shared by π_θ and π_ref (π_θ is initialised from π_ref).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cdb.models import Policy
from cdb.sequences import repeat_prompts, sample_mixture_responses, sample_responses
from cdb.validation import check_float, check_int

Array = jax.Array


def _split_candidates(tokens: Array, batch: int) -> Array:
    return tokens.reshape(batch, -1, tokens.shape[-1])


@dataclasses.dataclass(frozen=True)
class _TemperatureSamples:
    """``M`` samples at a temperature from π_θ (``from_policy``) or from the frozen π_ref."""

    num_candidates: int = 2
    temperature: float = 1.0
    from_policy: ClassVar[bool]

    def __post_init__(self):
        check_int(self, "num_candidates", self.num_candidates, low=2)
        check_float(self, "temperature", self.temperature, low=0.0, low_inclusive=False)

    def __call__(self, key, policy: Policy, policy_params: Any, reference_params: Any, prompts: Array, length: int):
        params = policy_params if self.from_policy else reference_params
        prompts_per_candidate = repeat_prompts(prompts, self.num_candidates)
        tokens, _ = sample_responses(key, policy, params, prompts_per_candidate, length, temperature=self.temperature)
        return _split_candidates(tokens, prompts.shape[0])


class PolicySamples(_TemperatureSamples):
    """``M`` samples from the current policy π_θ (policy-guided search; SEA, online DPO, APL)."""

    from_policy: ClassVar[bool] = True


class ReferenceSamples(_TemperatureSamples):
    """``M`` samples from the frozen reference π_ref (offline / frozen-sampler DPO, EE4LLM)."""

    from_policy: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class PolicyAndReference:
    """One sample from π_θ (candidate 0) and one from π_ref (candidate 1): XPO (Xie et al. 2024)."""

    num_candidates: ClassVar[int] = 2
    from_policy: ClassVar[bool] = False

    def __call__(self, key, policy: Policy, policy_params: Any, reference_params: Any, prompts: Array, length: int):
        k_pi, k_ref = jax.random.split(key)
        y_pi, _ = sample_responses(k_pi, policy, policy_params, prompts, length)
        y_ref, _ = sample_responses(k_ref, policy, reference_params, prompts, length)
        return jnp.stack([y_pi, y_ref], axis=1)


@dataclasses.dataclass(frozen=True)
class GeometricMixtureSamples:
    """``M`` samples from the per-token geometric mixture π_θ^{1−β}·π_ref^{β} (Nash-MD, Munos et al. 2023).

    Each token is drawn from ``softmax((1−β)·log π_θ(·|·) + β·log π_ref(·|·))``.
    """

    num_candidates: int = 2
    beta: float = 0.125
    from_policy: ClassVar[bool] = False

    def __post_init__(self):
        check_int(self, "num_candidates", self.num_candidates, low=2)
        check_float(self, "beta", self.beta, low=0.0, high=1.0)

    def __call__(self, key, policy: Policy, policy_params: Any, reference_params: Any, prompts: Array, length: int):
        tokens = sample_mixture_responses(
            key,
            policy,
            policy_params,
            reference_params,
            repeat_prompts(prompts, self.num_candidates),
            length,
            mixture="geometric",
            weight=self.beta,
        )
        return _split_candidates(tokens, prompts.shape[0])
