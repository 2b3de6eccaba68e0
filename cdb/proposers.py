"""Proposers: where candidate responses come from (the first part of an alignment agent).

A proposer maps ``B`` prompts to ``M`` candidate responses per prompt::

    candidates = proposer(key, ProposerInputs(policy, policy_params, reference_params, prompts,
                                              prompt_mask, length, eos_id, pad_id))
    candidates.tokens             # [B, M, L] int32
    candidates.policy_logprob     # [B, M] log π_θ(y|x) when the sampler computed it (π_θ's samples), else None
    candidates.reference_logprob  # [B, M] log π_ref(y|x) when the sampler computed it (π_ref's samples), else None
    candidates.reference_sample   # [B, L] a π_ref sample per prompt (XPO's ỹ), else None

``policy`` is the model definition shared by π_θ and π_ref (π_θ is initialised from π_ref).
Prompts are left-padded with ``prompt_mask`` (``None``: all real); with ``eos_id`` each response
stops at its first EOS and is ``pad_id`` after it. All sampling goes through
:func:`cdb.sequences.generate_responses` (the one decode loop), whose per-token log-probabilities
of a policy's own samples are kept, so that an agent never runs that policy over them again.
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


@dataclasses.dataclass(frozen=True)
class ProposerInputs:
    """What a proposer may use (a plain container, built inside the agent's traced ``select``).

    Attributes:
      policy: the model definition shared by π_θ and π_ref.
      policy_params: π_θ's parameters (in the model's dtype); reference_params: π_ref's.
      prompts: ``[B, Lp]`` int32, left-padded; prompt_mask: ``[B, Lp]`` bool or ``None`` (all real).
      length: L, the response length (static).
      eos_id, pad_id: the responses' end token (``None``: fixed length) and padding.
    """

    policy: Policy
    policy_params: Any
    reference_params: Any
    prompts: Array
    prompt_mask: Array | None
    length: int
    eos_id: int | None = None
    pad_id: int = 0

    def sample(self, key: Array, params: Any, num_samples: int, **options):
        """``num_samples`` responses per prompt from ``params`` (:func:`cdb.sequences.generate_responses`)."""
        return generate_responses(
            key,
            self.policy,
            params,
            self.prompts,
            self.prompt_mask,
            self.length,
            num_samples=num_samples,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            **options,
        )


@struct.dataclass
class Candidates:
    """A proposer's output.

    Attributes:
      tokens: ``[B, M, L]`` int32 candidate responses.
      policy_logprob: ``[B, M]`` float32 ``log π_θ(y|x)`` of each candidate, untempered, when the
        sampler computed it (candidates sampled from π_θ itself); ``None`` otherwise.
      reference_logprob: ``[B, M]`` float32 ``log π_ref(y|x)``, likewise for π_ref's own samples.
      reference_sample: ``[B, L]`` int32, a π_ref sample per prompt (XPO's ỹ), or ``None``.
    """

    tokens: Array
    policy_logprob: Array | None = None
    reference_logprob: Array | None = None
    reference_sample: Array | None = None


@runtime_checkable
class Proposer(Protocol):
    """``proposer(key, ProposerInputs) -> Candidates``, with ``num_candidates`` (M), ``from_policy``
    (the candidates are π_θ's own samples) and ``provides_reference_sample`` (``Candidates`` hold
    a π_ref sample per prompt)."""

    num_candidates: int
    from_policy: ClassVar[bool]
    provides_reference_sample: ClassVar[bool]

    def __call__(self, key: Array, inputs: ProposerInputs) -> Candidates: ...


def _split_candidates(tokens: Array, batch: int) -> Array:
    return tokens.reshape(batch, -1, tokens.shape[-1])


@dataclasses.dataclass(frozen=True)
class _TemperatureSamples:
    """``M`` samples at a temperature from π_θ (``from_policy``) or from the frozen π_ref."""

    num_candidates: int = 2
    temperature: float = 1.0
    from_policy: ClassVar[bool]
    provides_reference_sample: ClassVar[bool] = False

    def __post_init__(self):
        check_int(self, "num_candidates", self.num_candidates, low=2)
        check_float(self, "temperature", self.temperature, low=0.0, low_inclusive=False)

    def __call__(self, key: Array, inputs: ProposerInputs) -> Candidates:
        params = inputs.policy_params if self.from_policy else inputs.reference_params
        out = inputs.sample(key, params, self.num_candidates, temperature=self.temperature)
        batch = inputs.prompts.shape[0]
        # the loop's log-probs are the sampling policy's own, untempered: log π(y|x) of its samples
        logprob = jnp.sum(out.logprobs, axis=-1).reshape(batch, -1)
        tokens = _split_candidates(out.tokens, batch)
        if self.from_policy:
            return Candidates(tokens, policy_logprob=logprob)
        return Candidates(tokens, reference_logprob=logprob)


class PolicySamples(_TemperatureSamples):
    """``M`` samples from the current policy π_θ (policy-guided search; SEA, online DPO, APL)."""

    from_policy: ClassVar[bool] = True


class ReferenceSamples(_TemperatureSamples):
    """``M`` samples from the frozen reference π_ref (offline / frozen-sampler DPO, EE4LLM)."""

    from_policy: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class PolicyAndReference:
    """One sample from π_θ (candidate 0) and one from π_ref (candidate 1, also the
    ``reference_sample``): XPO (Xie et al. 2024)."""

    num_candidates: ClassVar[int] = 2
    from_policy: ClassVar[bool] = False
    provides_reference_sample: ClassVar[bool] = True

    def __call__(self, key: Array, inputs: ProposerInputs) -> Candidates:
        k_pi, k_ref = jax.random.split(key)
        y_pi = inputs.sample(k_pi, inputs.policy_params, 1).tokens
        y_ref = inputs.sample(k_ref, inputs.reference_params, 1).tokens
        return Candidates(jnp.stack([y_pi, y_ref], axis=1), reference_sample=y_ref)


@dataclasses.dataclass(frozen=True)
class GeometricMixtureSamples:
    """``M`` samples from the per-token geometric mixture π_θ^{1−β}·π_ref^{β} (Nash-MD, Munos et al. 2023).

    Each token is drawn from ``softmax((1−β)·log π_θ(·|·) + β·log π_ref(·|·))``.
    """

    num_candidates: int = 2
    beta: float = 0.125
    from_policy: ClassVar[bool] = False
    provides_reference_sample: ClassVar[bool] = False

    def __post_init__(self):
        check_int(self, "num_candidates", self.num_candidates, low=2)
        check_float(self, "beta", self.beta, low=0.0, high=1.0)

    def __call__(self, key: Array, inputs: ProposerInputs) -> Candidates:
        mixture = Mixture(inputs.reference_params, self.beta, "geometric")
        out = inputs.sample(key, inputs.policy_params, self.num_candidates, mixture=mixture)
        return Candidates(_split_candidates(out.tokens, inputs.prompts.shape[0]))
