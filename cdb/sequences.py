"""Pure helpers for policies over token sequences (tiers 2-3): scoring, sampling, greedy decoding.

A *policy* is a :class:`cdb.models.Policy` (the model definition, hashable) with its parameters.
Prompts are ``[B, Lp]`` int32, *left*-padded in tier 3 with ``prompt_mask`` ``[B, Lp]`` bool
(``None``: every token is real, tier 2). Responses are ``[..., L]`` int32; with an ``eos_id`` a
response is its tokens up to and including the first EOS (:func:`response_mask`), the tokens
after it are ``pad_id`` and belong to nothing. Flattened candidate batches (``[B·M, ...]``) are
ordered row ``b·M + m`` (as ``jnp.repeat``).

Two functions do all the work, so that the whole library samples and scores one way:

* :func:`generate_responses` — every sample: proposers, best-of-N, greedy decoding, the
  mixtures of Nash-MD and DeRa, the environments' reference samples (through
  :func:`cdb.models.generate`, the one decode loop);
* :func:`score_candidates` — every teacher-forced pass (log-probs for the losses and the
  implicit reward, π_ref's hidden state for the reward-model features), masks respected:
  left padding changes nothing, tokens after EOS contribute nothing. Each prompt and its ``K``
  responses are packed into one row that runs through the model once, the responses reading the
  prompt but not each other, so scoring ``K`` responses costs ``Lp + K·L`` tokens rather than
  ``K·(Lp + L)`` (with or without a gradient).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from cdb.models import Mixture, Policy, Samples, generate, positions_from_mask, token_logprobs

Array = jax.Array


@struct.dataclass
class ResponseScores:
    """One teacher-forced pass over ``[x, y]`` (leading axes: those of the responses, ``[...]``).

    Attributes:
      logprob: ``[...]`` sequence log-probability ``log π(y|x) = Σ_{t < |y|} log π(y_t | x, y_<t)``.
      token_logprob: ``[..., L]`` per-token log-probabilities (0 after the response's end).
      last_hidden: ``[..., D]`` the last layer's (normed) hidden state at the last *real* token of
        ``[x, y]`` (the EOS when there is one; never a padding position).
      length: ``[...]`` float32, the response's length ``|y|`` in tokens (L without an ``eos_id``).
    """

    logprob: Array
    token_logprob: Array
    last_hidden: Array
    length: Array | None = None


def response_mask(responses: Array, eos_id: int | None) -> Array | None:
    """``[..., L]`` bool: True up to and including each row's first ``eos_id`` (``None`` when ``eos_id`` is None).

    The EOS belongs to the response (its probability is part of ``log π(y|x)``); the tokens after
    it do not.
    """
    if eos_id is None:
        return None
    responses = jnp.asarray(responses)
    is_eos = (responses == eos_id).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos  # EOS strictly before position t
    return eos_before == 0


def score_candidates(
    policy: Policy,
    params: Any,
    prompts: Array,
    responses: Array,
    prompt_mask: Array | None = None,
    response_mask: Array | None = None,
) -> ResponseScores:
    """Log-probabilities and last hidden states of ``K`` responses per prompt, each prompt run once.

    Shapes: prompts ``[B, Lp]``, responses ``[B, K, L]`` (masks alike, ``None``: all real) ->
    :class:`ResponseScores` with leading axes ``[B, K]``.

    One forward pass over packed rows ``[x; y_1; …; y_K]`` (``Lp + K·L`` tokens): each response
    token attends to the prompt's real tokens and to its own response only
    (:meth:`cdb.models.Policy.hidden`'s ``segments``), and the positions of every response start
    where the prompt's real tokens end, so response ``k`` sees exactly ``[x; y_k]``. The logits
    predicting ``y_0`` are the prompt's last position's, those predicting ``y_t`` the response's
    position ``t − 1``'s, so ``log π(y|x)`` equals one full pass over ``[x; y]``. Padded prompt
    positions are neither attended to nor counted in the positions (the same prompt with more left
    padding scores the same), and response tokens outside ``response_mask`` get log-prob 0 and are
    never attended to by real ones. Differentiable in ``params``.
    """
    prompts = jnp.asarray(prompts, jnp.int32)
    responses = jnp.asarray(responses, jnp.int32)
    if prompts.ndim != 2 or responses.ndim != 3 or responses.shape[0] != prompts.shape[0]:
        raise ValueError(
            f"score_candidates: prompts must be [B, Lp] and responses [B, K, L]; got {prompts.shape} and "
            f"{responses.shape}"
        )
    b, lp = prompts.shape
    k, length = responses.shape[1:]
    if lp + length > policy.config.max_len:
        raise ValueError(
            f"score_candidates: prompt length {lp} + response length {length} exceeds the model's context "
            f"TransformerConfig.max_len={policy.config.max_len}"
        )
    prompt_mask = jnp.ones(prompts.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    rmask = jnp.ones(responses.shape, bool) if response_mask is None else jnp.asarray(response_mask, bool)

    tokens = jnp.concatenate([prompts, responses.reshape(b, k * length)], axis=1)
    mask = jnp.concatenate([prompt_mask, rmask.reshape(b, k * length)], axis=1)
    start = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)  # each row's real prompt tokens
    response_positions = jnp.broadcast_to(start[:, None, None] + jnp.arange(length, dtype=jnp.int32), responses.shape)
    positions = jnp.concatenate([positions_from_mask(prompt_mask), response_positions.reshape(b, k * length)], axis=1)
    segments = jnp.concatenate(
        [jnp.zeros((b, lp), jnp.int32), jnp.broadcast_to(jnp.repeat(jnp.arange(1, k + 1), length), (b, k * length))],
        axis=1,
    )
    hidden = policy.hidden(params, tokens, mask, positions, segments=segments)  # [B, Lp + K·L, D]

    last_prompt = jnp.broadcast_to(hidden[:, lp - 1][:, None, None], (b, k, 1, hidden.shape[-1]))  # a real token
    response_hidden = hidden[:, lp:].reshape(b, k, length, -1)
    predicting = jnp.concatenate([last_prompt, response_hidden[:, :, : length - 1]], axis=2)  # [B, K, L, D]
    token_logprob = token_logprobs(policy.logits_from_hidden(params, predicting), responses, rmask)
    real = jnp.sum(rmask, axis=-1)  # [B, K]
    at_last = jnp.take_along_axis(response_hidden, jnp.maximum(real - 1, 0)[:, :, None, None], axis=2)[:, :, 0]
    last_hidden = jnp.where((real > 0)[..., None], at_last, last_prompt[:, :, 0])
    return ResponseScores(
        jnp.sum(token_logprob, axis=-1),
        token_logprob,
        last_hidden.astype(jnp.float32),
        real.astype(jnp.float32),
    )


def score_responses(
    policy: Policy,
    params: Any,
    prompts: Array,
    responses: Array,
    prompt_mask: Array | None = None,
    response_mask: Array | None = None,
) -> ResponseScores:
    """:func:`score_candidates` of one response per prompt: prompts ``[N, Lp]``, responses ``[N, L]`` -> ``[N]``."""
    responses = jnp.asarray(responses, jnp.int32)
    rmask = None if response_mask is None else jnp.asarray(response_mask, bool)[:, None]
    out = score_candidates(policy, params, prompts, responses[:, None], prompt_mask, rmask)
    return jax.tree.map(lambda x: x[:, 0], out)


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
    mixture: Mixture | None = None,
) -> Samples:
    """``num_samples`` responses ``y ~ π(·|x)`` per prompt: the one sampling function of the agents.

    Args:
      prompts: ``[B, Lp]`` int32, left-padded; ``prompt_mask`` ``[B, Lp]`` bool or ``None`` (all real).
      length: L, the response length (static); responses stop early at ``eos_id`` and are then
        ``pad_id`` (mask False).
      num_samples: M responses per prompt, rows ordered ``b·M + m`` (as ``jnp.repeat``).
      mixture: sample a per-token mixture of ``π`` and a second policy instead
        (:class:`cdb.models.Mixture`: Nash-MD's geometric mixture, DeRa).

    Returns:
      :class:`cdb.models.Samples` (a :class:`cdb.models.Generation`) with ``tokens`` ``[B·M, L]``
      int32, ``logprobs`` ``[B·M, L]`` (the untempered sampling policy's per-token log-probs, 0
      after EOS) and ``mask`` ``[B·M, L]``.
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
        mixture=mixture,
    )


def sample_responses(
    key: Array, policy: Policy, params: Any, prompts: Array, length: int, temperature: float = 1.0, top_p: float = 1.0
) -> tuple[Array, Array]:
    """Tier 2's ``y ~ π(·|x)`` (unpadded prompts, fixed length): tokens ``[N, L]`` int32 and their
    untempered sequence log-probs ``[N]``, through :func:`generate_responses`."""
    out = generate_responses(key, policy, params, prompts, None, length, temperature=temperature, top_p=top_p)
    return out.tokens, jnp.sum(out.logprobs, axis=-1)


def greedy_responses(
    policy: Policy,
    params: Any,
    prompts: Array,
    length: int,
    *,
    prompt_mask: Array | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    mixture: Mixture | None = None,
) -> Array:
    """Greedy decoding (temperature 0; of a mixture's logits with ``mixture``), ``[N, L]`` int32."""
    out = generate_responses(
        jax.random.key(0),  # unused by greedy decoding
        policy,
        params,
        prompts,
        prompt_mask,
        length,
        temperature=0.0,
        eos_id=eos_id,
        pad_id=pad_id,
        mixture=mixture,
    )
    return out.tokens


def repeat_prompts(prompts: Array, m: int) -> Array:
    """``[B, Lp]`` → ``[B·M, Lp]`` (each prompt M times in a row); ``None`` stays ``None`` (a missing mask)."""
    return None if prompts is None else jnp.repeat(prompts, m, axis=0)
