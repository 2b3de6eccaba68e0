"""Teacher-forced log-probabilities, logit transforms, and the KV-cached decoder step (pure, jit-able).

Shapes: ``B`` rows, prompts ``[B, Lp]`` *left*-padded (``prompt_mask`` 1 for real tokens, every
row with at least one real token), responses ``[B, L]``, vocabulary ``V``.

Log-probabilities::

    lp = response_token_logprobs(policy, params, prompts, prompt_mask, responses, response_mask)  # [B, L]
    lp[b, t] = log π(y_t | x, y_<t)       (0 where response_mask is 0), one forward pass
    response_logprob(...) = Σ_t lp[b, t]  # [B]

Token choice (:func:`sample_token`): the logits ``h`` after temperature and nucleus filtering
(:func:`process_logits`; ``temperature = 0`` is greedy; ``top_p`` keeps the smallest set of most
likely tokens whose tempered probability reaches ``top_p``).

Mixtures of two policies' next-token logits (:func:`mixture_logits`):

* geometric mixture (Nash-MD, Munos et al. 2023): ``π_θ^{1−β} π_ref^{β}`` normalised per token,
  logits :func:`geometric_mixture_logits` ``= (1−β) log softmax(h_θ) + β log softmax(h_ref)``;
* DeRa (Liu et al. 2024, "Decoding-time Realignment of Language Models"):
  ``softmax(λ h_aligned + (1−λ) h_ref)``, logits :func:`dera_logits`.

The decoder's two steps, :func:`prefill` (the prompt into a fresh cache of ``Lp + L`` slots) and
:func:`decode_step` (one token per row), are what the library's one sampler,
:func:`cdb.models.generate`, loops over.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from cdb.models.transformer import Params, Policy, positions_from_mask

Array = jax.Array
PRNGKey = jax.Array

MIXTURES = ("geometric", "dera")


@struct.dataclass
class Samples:
    """Sampled responses.

    Attributes:
      tokens: ``[B, L]`` int32 responses (``pad_id`` after an EOS).
      logprobs: ``[B, L]`` float32, ``log softmax(h_t)[y_t]`` of the untempered, unfiltered
        logits of the sampling policy (0 where ``mask`` is False).
      mask: ``[B, L]`` bool, False after the first EOS.
    """

    tokens: Array
    logprobs: Array
    mask: Array


# --------------------------------------------------------------------------------------------
# Logit transforms (pure, elementwise over leading axes)
# --------------------------------------------------------------------------------------------


def geometric_mixture_logits(logits_a: Array, logits_b: Array, beta: float | Array) -> Array:
    """Logits of the per-token geometric mixture ``π_a^{1−β} π_b^{β}`` (Nash-MD, Munos et al. 2023).

    ``(1 − β) · log_softmax(logits_a) + β · log_softmax(logits_b)`` over the last axis; unnormalised
    (apply ``log_softmax`` for the mixture's log-probabilities). β = 0 gives ``π_a``, β = 1 ``π_b``.
    """
    beta = jnp.asarray(beta, jnp.float32)
    return (1.0 - beta) * jax.nn.log_softmax(logits_a.astype(jnp.float32), axis=-1) + beta * jax.nn.log_softmax(
        logits_b.astype(jnp.float32), axis=-1
    )


def dera_logits(logits_aligned: Array, logits_ref: Array, lam: float | Array) -> Array:
    """DeRa logits ``λ · h_aligned + (1 − λ) · h_ref`` (Liu et al. 2024), sampled as their softmax.

    λ = 1 is the aligned model, λ = 0 the reference; λ > 1 extrapolates (stronger alignment).
    """
    lam = jnp.asarray(lam, jnp.float32)
    return lam * logits_aligned.astype(jnp.float32) + (1.0 - lam) * logits_ref.astype(jnp.float32)


def mixture_logits(kind: str, logits_a: Array, logits_b: Array, weight: float | Array) -> Array:
    """``geometric_mixture_logits(a, b, β=weight)`` or ``dera_logits(a, b, λ=weight)``."""
    if kind == "geometric":
        return geometric_mixture_logits(logits_a, logits_b, weight)
    if kind == "dera":
        return dera_logits(logits_a, logits_b, weight)
    raise ValueError(f"mixture={kind!r} is not allowed; expected one of {MIXTURES}")


def process_logits(logits: Array, temperature: float | Array = 1.0, top_p: float | Array = 1.0) -> Array:
    """Tempered, nucleus-filtered logits ``[..., V]`` (filtered tokens get ``-inf``).

    ``logits / temperature`` (a temperature of 0 is treated as 1 here; greedy decoding is
    handled by :func:`sample_token`), then top-p (Holtzman et al. 2020): keep the most likely
    tokens while the probability mass *before* them is below ``top_p``; the most likely token is
    always kept, and ``top_p >= 1`` keeps everything.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    logits = logits.astype(jnp.float32) / jnp.where(temperature > 0, temperature, 1.0)
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = (mass_before < top_p) | (top_p >= 1.0)
    keep_sorted = keep_sorted.at[..., 0].set(True)
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_token(key: PRNGKey, logits: Array, temperature: float | Array = 1.0, top_p: float | Array = 1.0) -> Array:
    """One token per row from logits ``[B, V]``: ``[B]`` int32; greedy (argmax) when ``temperature <= 0``."""
    drawn = jax.random.categorical(key, process_logits(logits, temperature, top_p), axis=-1)
    greedy = jnp.argmax(logits, axis=-1)
    return jnp.where(jnp.asarray(temperature) > 0, drawn, greedy).astype(jnp.int32)


def token_logprobs(logits: Array, tokens: Array, mask: Array | None = None) -> Array:
    """``log softmax(logits)[tokens]``: logits ``[..., V]``, tokens ``[...]`` -> ``[...]`` float32.

    Entries where ``mask`` is False are 0. Computed as ``logits[tokens] − logsumexp(logits)``, so
    the full ``[..., V]`` log-softmax is never materialised (under ``grad`` its backward pass
    needs the softmax once, not the log-softmax kept from the forward pass as well).
    """
    logits = logits.astype(jnp.float32)
    chosen = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    out = chosen - jax.nn.logsumexp(logits, axis=-1)
    return out if mask is None else jnp.where(jnp.asarray(mask).astype(bool), out, 0.0)


# --------------------------------------------------------------------------------------------
# Teacher forcing
# --------------------------------------------------------------------------------------------


def _check_pair(prompts: Array, prompt_mask: Array, responses: Array, response_mask: Array | None) -> None:
    if prompts.ndim != 2 or prompt_mask.shape != prompts.shape:
        raise ValueError(f"prompts and prompt_mask must both be [B, Lp]; got {prompts.shape} and {prompt_mask.shape}")
    if responses.ndim != 2 or responses.shape[0] != prompts.shape[0]:
        raise ValueError(f"responses must be [B, L] with B={prompts.shape[0]}; got {responses.shape}")
    if response_mask is not None and response_mask.shape != responses.shape:
        raise ValueError(f"response_mask shape {response_mask.shape} differs from responses shape {responses.shape}")


@functools.partial(jax.jit, static_argnames=("policy",))
def response_logits(
    policy: Policy,
    params: Params,
    prompts: Array,
    prompt_mask: Array,
    responses: Array,
    response_mask: Array | None = None,
) -> Array:
    """Teacher-forced next-token logits of the responses, ``[B, L, V]`` float32, in one forward pass.

    ``out[b, t]`` are the logits of ``π(· | x_b, y_b,<t)``. Tokens with ``response_mask`` 0 (after
    an EOS) are right padding: they cannot change the logits of earlier tokens.
    """
    prompts, prompt_mask, responses = jnp.asarray(prompts), jnp.asarray(prompt_mask), jnp.asarray(responses)
    _check_pair(prompts, prompt_mask, responses, response_mask)
    lp, length = prompts.shape[1], responses.shape[1]
    if response_mask is None:
        response_mask = jnp.ones(responses.shape, bool)
    tokens = jnp.concatenate([prompts, responses], axis=1).astype(jnp.int32)
    mask = jnp.concatenate([prompt_mask.astype(bool), jnp.asarray(response_mask).astype(bool)], axis=1)
    hidden = policy.hidden(params, tokens, mask, positions_from_mask(mask))
    return policy.logits_from_hidden(params, hidden[:, lp - 1 : lp - 1 + length])


def response_token_logprobs(
    policy: Policy,
    params: Params,
    prompts: Array,
    prompt_mask: Array,
    responses: Array,
    response_mask: Array | None = None,
) -> Array:
    """Per-token ``log π(y_t | x, y_<t)``, ``[B, L]`` float32 (0 where ``response_mask`` is 0).

    One teacher-forced forward pass over ``[prompt; response]`` (left-padded prompts). ``policy``
    may be any hashable object with the :class:`Policy` methods ``hidden`` and ``logits_from_hidden``.
    """
    logits = response_logits(policy, params, prompts, prompt_mask, responses, response_mask)
    return token_logprobs(logits, jnp.asarray(responses), response_mask)


def response_logprob(
    policy: Policy,
    params: Params,
    prompts: Array,
    prompt_mask: Array,
    responses: Array,
    response_mask: Array | None = None,
) -> Array:
    """Sequence log-probability ``log π(y | x) = Σ_t log π(y_t | x, y_<t)``, ``[B]`` float32."""
    return jnp.sum(response_token_logprobs(policy, params, prompts, prompt_mask, responses, response_mask), axis=-1)


# --------------------------------------------------------------------------------------------
# The decoder's steps
# --------------------------------------------------------------------------------------------


@struct.dataclass
class DecodeState:
    """A prefilled decoder: its :class:`KVCache` and each row's next position ``[B]`` int32."""

    cache: Any
    positions: Array


def _check_prompts(policy: Policy, prompts: Array, prompt_mask: Array, length: int) -> None:
    if prompts.ndim != 2 or prompt_mask.shape != prompts.shape:
        raise ValueError(f"prompts and prompt_mask must both be [B, Lp]; got {prompts.shape} and {prompt_mask.shape}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length={length!r} is out of range; expected an integer >= 1")
    if prompts.shape[1] + length > policy.config.max_len:
        raise ValueError(
            f"prompt length {prompts.shape[1]} + length={length} exceeds TransformerConfig.max_len="
            f"{policy.config.max_len}; expected a total <= max_len"
        )


def prefill(
    policy: Policy, params: Params, prompts: Array, prompt_mask: Array, length: int
) -> tuple[DecodeState, Array]:
    """Runs the left-padded prompts through a fresh cache of ``Lp + length`` slots.

    Returns the :class:`DecodeState` and the logits of the first response token ``[B, V]``.
    """
    prompts, prompt_mask = jnp.asarray(prompts).astype(jnp.int32), jnp.asarray(prompt_mask).astype(bool)
    _check_prompts(policy, prompts, prompt_mask, length)
    cache = policy.init_cache(prompts.shape[0], prompts.shape[1] + length)
    _, hidden, cache = policy.apply_cached(
        params, prompts, prompt_mask, positions_from_mask(prompt_mask), cache, with_logits=False
    )
    logits = policy.logits_from_hidden(params, hidden[:, -1])
    return DecodeState(cache, jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)), logits


def decode_step(policy: Policy, params: Params, state: DecodeState, tokens: Array) -> tuple[DecodeState, Array]:
    """Feeds one token per row ``[B]``; returns the new state and next-token logits ``[B, V]``."""
    logits, _, cache = policy.apply_cached(
        params, tokens[:, None], jnp.ones((tokens.shape[0], 1), bool), state.positions[:, None], state.cache
    )
    return DecodeState(cache, state.positions + 1), logits[:, 0]
