"""Pure helpers for policies over token sequences (tiers 2-3): scoring, sampling, greedy decoding.

A *policy* is a :class:`cdb.models.Policy` (the model definition, hashable) with its parameters.
Prompts are ``[N, Lp]`` int32, *left*-padded in tier 3 with ``prompt_mask`` ``[N, Lp]`` bool
(``None``: every token is real, tier 2). Responses are ``[N, L]`` int32; with an ``eos_id`` a
response is its tokens up to and including the first EOS (:func:`response_mask`), the tokens
after it are ``pad_id`` and belong to nothing. Batches with a candidate axis (``[B, M, L]``) are
flattened to ``[B·M, ...]`` row ``b·M + m`` (as ``jnp.repeat``).

Two functions do all the work, so that the whole library samples and scores one way:

* :func:`generate_responses` — every sample of a single policy (proposers, best-of-N, greedy
  decoding, the environments' reference samples through :func:`sample_responses`);
* :func:`score_responses` — every teacher-forced pass (log-probs for the losses and the
  implicit reward, π_ref's hidden state for the reward-model features), masks respected:
  left padding changes nothing, tokens after EOS contribute nothing.

Mixtures of two policies (Nash-MD's geometric mixture, DeRa) go through
:func:`sample_mixture_responses` (two caches decoded side by side).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from cdb import models
from cdb.models import Policy, Samples, generate, positions_from_mask, sample_mixture

Array = jax.Array


@struct.dataclass
class ResponseScores:
    """One teacher-forced pass over ``[x, y]``.

    Attributes:
      logprob: ``[N]`` sequence log-probability ``log π(y|x) = Σ_{t < |y|} log π(y_t | x, y_<t)``.
      token_logprob: ``[N, L]`` per-token log-probabilities (0 after the response's end).
      last_hidden: ``[N, D]`` the last layer's (normed) hidden state at the last *real* token of
        ``[x, y]`` (the EOS when there is one; never a padding position).
      length: ``[N]`` float32, the response's length ``|y|`` in tokens (L without an ``eos_id``).
    """

    logprob: Array
    token_logprob: Array
    last_hidden: Array
    length: Array | None = None


def response_mask(responses: Array, eos_id: int | None) -> Array | None:
    """``[N, L]`` bool: True up to and including each row's first ``eos_id`` (``None`` when ``eos_id`` is None).

    The EOS belongs to the response (its probability is part of ``log π(y|x)``); the tokens after
    it do not.
    """
    if eos_id is None:
        return None
    responses = jnp.asarray(responses)
    is_eos = (responses == eos_id).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos  # EOS strictly before position t
    return eos_before == 0


def score_responses(
    policy: Policy,
    params: Any,
    prompts: Array,
    responses: Array,
    prompt_mask: Array | None = None,
    response_mask: Array | None = None,
) -> ResponseScores:
    """Log-probabilities and last hidden state of ``responses`` given ``prompts`` in one forward pass.

    With both masks ``None`` (tier 2) every token is real and positions are ``0 … Lp+L−1``. With
    masks, padded prompt positions are neither attended to nor counted in the positions (so the
    same prompt with more left padding scores the same), and response tokens outside
    ``response_mask`` get log-prob 0 and are never attended to by real ones.

    Shapes: prompts ``[N, Lp]``, responses ``[N, L]`` -> :class:`ResponseScores`.
    """
    prompts = jnp.asarray(prompts, jnp.int32)
    responses = jnp.asarray(responses, jnp.int32)
    n, lp, length = prompts.shape[0], prompts.shape[-1], responses.shape[-1]
    tokens = jnp.concatenate([prompts, responses], axis=-1)
    if prompt_mask is None and response_mask is None:
        logits, hidden = policy.apply(params, tokens)
        # the logits at position Lp-1+t predict y_t
        predicting = jax.nn.log_softmax(logits[:, lp - 1 : lp - 1 + length].astype(jnp.float32), axis=-1)
        token_logprob = jnp.take_along_axis(predicting, responses[..., None], axis=-1)[..., 0]
        return ResponseScores(
            jnp.sum(token_logprob, axis=-1),
            token_logprob,
            hidden[:, -1].astype(jnp.float32),
            jnp.full((n,), length, jnp.float32),
        )
    prompt_mask = jnp.ones(prompts.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    response_mask = jnp.ones(responses.shape, bool) if response_mask is None else jnp.asarray(response_mask, bool)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=-1)
    hidden = policy.hidden(params, tokens, mask, positions_from_mask(mask))
    logits = policy.logits_from_hidden(params, hidden[:, lp - 1 : lp - 1 + length])
    token_logprob = models.token_logprobs(logits, responses, response_mask)
    real = jnp.sum(response_mask, axis=-1)
    # the last real token: the response's last (EOS) token, or the prompt's last for an empty response
    last = lp - 1 + real
    last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return ResponseScores(
        jnp.sum(token_logprob, axis=-1), token_logprob, last_hidden.astype(jnp.float32), real.astype(jnp.float32)
    )


def sequence_logprob(policy: Policy, params: Any, prompts: Array, responses: Array) -> Array:
    """``log π(y|x)`` ``[N]``: one teacher-forced pass of :func:`cdb.models.sequence_logprob` (no padding)."""
    prompts = jnp.asarray(prompts, jnp.int32)
    return models.sequence_logprob(
        policy, params, prompts, jnp.ones(prompts.shape, bool), jnp.asarray(responses, jnp.int32)
    )


def generate_responses(
    key: Array,
    policy: Policy,
    params: Any,
    prompts: Array,
    prompt_mask: Array | None,
    length: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Samples:
    """``num_samples`` responses ``y ~ π(·|x)`` per prompt: the one sampling function of the agents.

    Args:
      prompts: ``[B, Lp]`` int32, left-padded; ``prompt_mask`` ``[B, Lp]`` bool or ``None`` (all real).
      length: L, the response length (static); responses stop early at ``eos_id`` and are then
        ``pad_id`` (mask False).
      num_samples: M responses per prompt, rows ordered ``b·M + m`` (as ``jnp.repeat``).

    Returns:
      :class:`cdb.models.Samples` with ``tokens`` ``[B·M, L]`` int32, ``logprobs`` ``[B·M, L]`` (the
      untempered policy's per-token log-probs, 0 after EOS) and ``mask`` ``[B·M, L]``.

    Built on :func:`cdb.models.generate`: each prompt is prefilled once and its cache shared by its
    M samples, and the decode loop stops once every row has ended (the same rows, in the same
    order and from the same key, as :func:`cdb.models.sample` on ``jnp.repeat(prompts, M)``).
    """
    prompts = jnp.asarray(prompts, jnp.int32)
    prompt_mask = jnp.ones(prompts.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    return generate(
        key,
        policy,
        params,
        prompts,
        prompt_mask,
        length,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        eos_id=eos_id,
        pad_id=pad_id,
    )


def sample_responses(
    key: Array, policy: Policy, params: Any, prompts: Array, length: int, temperature: float = 1.0, top_p: float = 1.0
) -> tuple[Array, Array]:
    """Tier 2's ``y ~ π(·|x)`` (unpadded prompts, fixed length): tokens ``[N, L]`` int32 and their
    untempered sequence log-probs ``[N]``, through :func:`generate_responses`."""
    out = generate_responses(key, policy, params, prompts, None, length, temperature=temperature, top_p=top_p)
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
    prompt_mask: Array | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Array:
    """Samples ``[N, L]`` int32 from a per-token mixture of two parameter sets of one model
    (``'geometric'``: π_a^{1−β}π_b^{β}, ``'dera'``: softmax(λh_a + (1−λ)h_b); :func:`cdb.models.sample_mixture`)."""
    prompts = jnp.asarray(prompts, jnp.int32)
    prompt_mask = jnp.ones(prompts.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    out = sample_mixture(
        key,
        policy,
        params_a,
        policy,
        params_b,
        prompts,
        prompt_mask,
        length,
        mixture=mixture,
        weight=weight,
        temperature=temperature,
        eos_id=eos_id,
        pad_id=pad_id,
    )
    return out.tokens


def greedy_responses(
    policy: Policy,
    params: Any,
    prompts: Array,
    length: int,
    *,
    prompt_mask: Array | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Array:
    """Greedy decoding (temperature 0), ``[N, L]`` int32."""
    out = generate_responses(
        jax.random.key(0), policy, params, prompts, prompt_mask, length, temperature=0.0, eos_id=eos_id, pad_id=pad_id
    )
    return out.tokens


def repeat_prompts(prompts: Array, m: int) -> Array:
    """``[B, Lp]`` → ``[B·M, Lp]`` (each prompt M times in a row); ``None`` stays ``None`` (a missing mask)."""
    return None if prompts is None else jnp.repeat(prompts, m, axis=0)
