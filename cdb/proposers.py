"""Proposers: where candidate responses come from (DESIGN §4, first part of an agent).

A proposer maps prompts ``[B, Lp]`` to ``M`` candidate responses per prompt, :class:`Candidates`::

    candidates = proposer(key, policy, policy_params, reference_params, prompts, length,
                          prompt_mask=None, eos_id=None, pad_id=0)
    candidates.tokens          # [B, M, L] int32
    candidates.policy_logprob     # [B, M] log π_θ(y|x) when the sampler computed it (π_θ's samples), else None
    candidates.reference_logprob  # [B, M] log π_ref(y|x) when the sampler computed it (π_ref's samples), else None

``policy`` is the model definition shared by π_θ and π_ref (π_θ is initialised from π_ref).
Prompts are left-padded with ``prompt_mask`` (``None``: all real); with ``eos_id`` each response
stops at its first EOS and is ``pad_id`` after it. All sampling goes through
:func:`cdb.sequences.generate_responses` (the one decode loop), whose per-token log-probabilities
of π_θ's own samples are kept, so that an agent never runs π_θ over its samples a second time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from cdb.models import Mixture, Policy
from cdb.sequences import generate_responses
from cdb.validation import check_float, check_int

Array = jax.Array


@struct.dataclass
class Candidates:
    """A proposer's output.

    Attributes:
      tokens: ``[B, M, L]`` int32 candidate responses.
      policy_logprob: ``[B, M]`` float32 ``log π_θ(y|x)`` of each candidate, untempered, when the
        sampler computed it (candidates sampled from π_θ itself); ``None`` otherwise.
      reference_logprob: ``[B, M]`` float32 ``log π_ref(y|x)``, likewise for π_ref's own samples.
    """

    tokens: Array
    policy_logprob: Array | None = None
    reference_logprob: Array | None = None


@runtime_checkable
class Proposer(Protocol):
    """What agents rely on: ``num_candidates`` (M), ``from_policy`` (the candidates are π_θ's own
    samples) and the call ``-> Candidates``."""

    num_candidates: int
    from_policy: ClassVar[bool]

    def __call__(
        self,
        key: Array,
        policy: Policy,
        policy_params: Any,
        reference_params: Any,
        prompts: Array,
        length: int,
        *,
        prompt_mask: Array | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
    ) -> Candidates: ...


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

    def __call__(
        self,
        key,
        policy: Policy,
        policy_params: Any,
        reference_params: Any,
        prompts: Array,
        length: int,
        *,
        prompt_mask: Array | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
    ):
        params = policy_params if self.from_policy else reference_params
        out = generate_responses(
            key,
            policy,
            params,
            prompts,
            prompt_mask,
            length,
            num_samples=self.num_candidates,
            temperature=self.temperature,
            eos_id=eos_id,
            pad_id=pad_id,
        )
        batch = prompts.shape[0]
        # the loop's log-probs are the sampling policy's own, untempered: log π(y|x) of its samples
        logprob = jnp.sum(out.logprobs, axis=-1).reshape(batch, -1)
        if self.from_policy:
            return Candidates(_split_candidates(out.tokens, batch), policy_logprob=logprob)
        return Candidates(_split_candidates(out.tokens, batch), reference_logprob=logprob)


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

    def __call__(
        self,
        key,
        policy: Policy,
        policy_params: Any,
        reference_params: Any,
        prompts: Array,
        length: int,
        *,
        prompt_mask: Array | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
    ):
        k_pi, k_ref = jax.random.split(key)
        options = dict(eos_id=eos_id, pad_id=pad_id)
        y_pi = generate_responses(k_pi, policy, policy_params, prompts, prompt_mask, length, **options).tokens
        y_ref = generate_responses(k_ref, policy, reference_params, prompts, prompt_mask, length, **options).tokens
        return Candidates(jnp.stack([y_pi, y_ref], axis=1))


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

    def __call__(
        self,
        key,
        policy: Policy,
        policy_params: Any,
        reference_params: Any,
        prompts: Array,
        length: int,
        *,
        prompt_mask: Array | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
    ):
        out = generate_responses(
            key,
            policy,
            policy_params,
            prompts,
            prompt_mask,
            length,
            num_samples=self.num_candidates,
            eos_id=eos_id,
            pad_id=pad_id,
            mixture=Mixture(reference_params, self.beta, "geometric"),
        )
        return Candidates(_split_candidates(out.tokens, prompts.shape[0]))
