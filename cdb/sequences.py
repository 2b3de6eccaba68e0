"""Pure helpers for policies over token sequences (tiers 2-3): scoring, sampling, greedy decoding.

A *policy* is a :class:`cdb.models.Policy` (the model definition, hashable) with its parameters.
Prompts are ``[N, Lp]`` int32 without padding; responses are ``[N, L]`` int32. Batches with a
candidate axis (``[B, M, L]``) are flattened to ``[B·M, ...]`` by the callers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from cdb import models
from cdb.models import Policy, sample, sample_mixture

Array = jax.Array


@struct.dataclass
class ResponseScores:
    """One teacher-forced pass over ``[x, y]``.

    Attributes:
      logprob: ``[N]`` sequence log-probability ``log π(y|x) = Σ_t log π(y_t | x, y_<t)``.
      token_logprob: ``[N, L]`` per-token log-probabilities.
      last_hidden: ``[N, D]`` the last layer's (normed) hidden state at the last token of ``[x, y]``.
    """

    logprob: Array
    token_logprob: Array
    last_hidden: Array


def score_responses(policy: Policy, params: Any, prompts: Array, responses: Array) -> ResponseScores:
    """Log-probabilities and last hidden state of ``responses`` given ``prompts`` in one forward pass."""
    prompts = jnp.asarray(prompts, jnp.int32)
    responses = jnp.asarray(responses, jnp.int32)
    lp, length = prompts.shape[-1], responses.shape[-1]
    tokens = jnp.concatenate([prompts, responses], axis=-1)
    logits, hidden = policy.apply(params, tokens)
    # the logits at position Lp-1+t predict y_t
    predicting = jax.nn.log_softmax(logits[:, lp - 1 : lp - 1 + length].astype(jnp.float32), axis=-1)
    token_logprob = jnp.take_along_axis(predicting, responses[..., None], axis=-1)[..., 0]
    return ResponseScores(jnp.sum(token_logprob, axis=-1), token_logprob, hidden[:, -1].astype(jnp.float32))


def sequence_logprob(policy: Policy, params: Any, prompts: Array, responses: Array) -> Array:
    """``log π(y|x)`` ``[N]``: one teacher-forced pass of :func:`cdb.models.sequence_logprob` (no padding)."""
    prompts = jnp.asarray(prompts, jnp.int32)
    return models.sequence_logprob(
        policy, params, prompts, jnp.ones(prompts.shape, bool), jnp.asarray(responses, jnp.int32)
    )


def sample_responses(
    key: Array, policy: Policy, params: Any, prompts: Array, length: int, temperature: float = 1.0, top_p: float = 1.0
) -> tuple[Array, Array]:
    """``y ~ π(·|x)``: tokens ``[N, L]`` int32 and their untempered sequence log-probs ``[N]``."""
    prompts = jnp.asarray(prompts, jnp.int32)
    out = sample(
        key, policy, params, prompts, jnp.ones(prompts.shape, bool), length, temperature=temperature, top_p=top_p
    )
    return out.tokens, jnp.sum(out.logprobs, axis=-1)


def sample_mixture_responses(
    key: Array,
    policy: Policy,
    params_a: Any,
    params_b: Any,
    prompts: Array,
    length: int,
    *,
    mixture: str,
    weight: float,
    temperature: float = 1.0,
) -> Array:
    """Samples from a per-token mixture of two parameter sets of one model (``'geometric'`` or ``'dera'``)."""
    prompts = jnp.asarray(prompts, jnp.int32)
    out = sample_mixture(
        key,
        policy,
        params_a,
        policy,
        params_b,
        prompts,
        jnp.ones(prompts.shape, bool),
        length,
        mixture=mixture,
        weight=weight,
        temperature=temperature,
    )
    return out.tokens


def greedy_responses(policy: Policy, params: Any, prompts: Array, length: int) -> Array:
    """Greedy decoding (temperature 0), ``[N, L]`` int32."""
    tokens, _ = sample_responses(jax.random.key(0), policy, params, prompts, length, temperature=0.0)
    return tokens


def repeat_prompts(prompts: Array, m: int) -> Array:
    """``[B, Lp]`` → ``[B·M, Lp]`` (each prompt M times in a row)."""
    return jnp.repeat(prompts, m, axis=0)
