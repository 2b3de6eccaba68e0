"""The one sampler: shared-prefix prefill, an early-stopping decode loop, mixtures, bucketing.

Every token any part of the library samples comes from :func:`generate`: the agents' proposers
and recommenders, ``LLMDuel``'s opponents and evaluation, ``SequenceDuel``'s reference samples
and :meth:`cdb.models.Pretrained.generate`.

Shapes: ``B`` prompts ``[B, Lp]`` *left*-padded (``prompt_mask`` 1 for real tokens, each row with
at least one), ``M = num_samples`` responses per prompt, ``L`` new tokens, vocabulary ``V``::

    out = generate(key, policy, params, prompts, prompt_mask, length=L, num_samples=M,
                   temperature=1.0, top_p=1.0, eos_id=eos, pad_id=pad, mixture=None)
    out.tokens    # [B*M, L] int32, row b*M + m is sample m of prompt b (= jnp.repeat(prompts, M, 0))
    out.logprobs  # [B*M, L] float32, log π(y_t | x, y_<t) of the untempered policy, 0 after EOS
    out.mask      # [B*M, L] bool, True up to and including the first EOS
    out.steps     # int32 scalar: token positions generated before every row had ended (1..L)

Step ``t`` draws its token with ``jax.random.split(key, L)[t]`` from the tempered,
nucleus-filtered logits (:func:`cdb.models.sample_token`; ``temperature = 0`` is greedy).
``out.logprobs`` are those of the sampling distribution *before* temperature and nucleus
filtering, i.e. what :func:`cdb.models.response_token_logprobs` gives for the same tokens and what the
DAP losses use.

**Mixtures.** With ``mixture=Mixture(params_b, weight, kind)`` each token is drawn from a
per-token mixture of ``π_a`` (``policy``, ``params``) and ``π_b`` (``params_b``), both decoded side
by side in the same loop (:func:`cdb.models.mixture_logits`):

* ``kind='geometric'`` (Nash-MD, Munos et al. 2023): ``π_a^{1−w} π_b^{w}`` normalised per token,
  logits ``(1−w) log softmax(h_a) + w log softmax(h_b)``;
* ``kind='dera'`` (DeRa, Liu et al. 2024): ``softmax(w h_a + (1−w) h_b)``.

``out.logprobs`` are then those of the normalised, untempered mixture.

**Two compiled programs.**

1. *Prefill* (:func:`prefill_shared`): each prompt runs through a fresh KV cache of ``Lp + L``
   slots **once** (``B`` rows, not ``B·M``), and the cache, the next positions and the
   first-token logits are then repeated ``M`` times along the batch axis. SEA-style agents draw
   ``M`` candidates per prompt, so the prompt's cost does not grow with ``M``.
2. *Decode* (:func:`decode`): a ``lax.while_loop`` of one-token steps
   (:func:`cdb.models.decode_step`, one per policy of a mixture) that writes each step's column
   into preallocated ``[B·M, L]`` buffers and stops as soon as every row has emitted ``eos_id``
   (or at ``L``): with ``eos_id=None`` it always runs ``L`` steps. Nothing leaves the device
   between steps.

**Donation.** The decode program takes the prefilled :class:`~cdb.models.DecodeState` (and a
mixture's second state) with ``donate_argnames``, so on a top-level call XLA aliases the
donated cache buffers to the loop's carry: the cache (``2 × layers × B·M × (Lp + L) ×
kv_heads × d_h`` floats, 0.19 GB for SmolLM2-135M at ``B·M = 32``, ``Lp + L = 128``) is updated
in place and never copied; the caller's state is invalid afterwards. When :func:`generate` is
traced inside another ``jax.jit`` (an agent's step), the programs are inlined into the
caller's; donation flags do not apply there and XLA's buffer assignment updates the
loop-carried cache in place on its own.

**Sampling fast path.** Each step dispatches with ``lax.switch`` (temperature and top-p stay
traced, so changing them does not recompile): ``temperature <= 0`` takes the argmax,
``top_p >= 1`` draws ``categorical(logits / temperature)`` without the full-vocabulary sort
that nucleus filtering needs, and only ``0 < top_p < 1`` calls
:func:`cdb.models.sample_token`. All three give exactly the token ``sample_token`` gives for
the same key (tested).

**Bucketing.** Compiled programs are keyed by shapes. :func:`bucket_length` rounds a prompt
length (or a batch size) up to a power of two, so a run over prompts of varying lengths
compiles a handful of programs; :func:`generate_text` left-pads prompts to the bucket (left
padding does not change a row's samples) and pads the batch with one-token dummy prompts.

**Features.** The decode loop returns no hidden states: reward-model features (π_ref's last
hidden state) come from the teacher-forced pass over the responses
(:func:`cdb.sequences.score_candidates`), which gives the hidden state of every response token,
including the last one that the sampler never feeds back.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cdb.models.sampling import (
    MIXTURES,
    DecodeState,
    Samples,
    decode_step,
    mixture_logits,
    prefill,
    sample_token,
    token_logprobs,
)
from cdb.models.transformer import KVCache, Params, Policy
from cdb.validation import check_float, check_int

Array = jax.Array
PRNGKey = jax.Array

#: How many times each compiled program of this module has been traced (one trace = one
#: compilation for a new shape or static argument); read it to check that bucketing works.
TRACE_COUNTS: collections.Counter = collections.Counter()


@struct.dataclass
class Generation(Samples):
    """:class:`~cdb.models.Samples` of :func:`generate` plus a debug counter.

    Attributes:
      tokens, logprobs, mask: ``[B·M, L]``, see :class:`~cdb.models.Samples`.
      steps: int32 scalar, the number of token positions generated (``1..L``): the loop ran
        ``steps − 1`` decoder steps after the prefill and stopped when every row had ended.
    """

    steps: Array


@struct.dataclass
class Mixture:
    """A second policy to mix with the generating one, token by token (see the module docstring).

    Attributes:
      params: ``π_b``'s parameters (traced).
      weight: ``w``: β of the geometric mixture, λ of DeRa (traced: changing it does not recompile).
      kind: ``'geometric'`` or ``'dera'`` (static).
      policy: ``π_b``'s model definition (static); ``None``: the generating policy's (π_θ and π_ref
        of an alignment agent share it). It must have the same vocabulary.
    """

    params: Params
    weight: Array | float
    kind: str = struct.field(pytree_node=False, default="geometric")
    policy: Policy | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        # the weight may be traced (and is rebuilt from any leaf when JAX unflattens): the parts that
        # build a mixture check it (GeometricMixtureSamples, DeRa)
        if self.kind not in MIXTURES:
            raise ValueError(f"Mixture.kind={self.kind!r} is not allowed; expected one of {MIXTURES}")

    def second_policy(self, policy: Policy) -> Policy:
        """``π_b``'s model definition, checked against the generating ``policy``'s vocabulary."""
        other = policy if self.policy is None else self.policy
        if other.config.vocab_size != policy.config.vocab_size:
            raise ValueError(
                f"Mixture: the two policies have different vocabularies ({policy.config.vocab_size} and "
                f"{other.config.vocab_size}); expected the same vocab_size"
            )
        return other


# --------------------------------------------------------------------------------------------
# Validation and bucketing
# --------------------------------------------------------------------------------------------


def _check_sampling(temperature, top_p, num_samples) -> None:
    check_int("generate", "num_samples", num_samples, low=1)
    if not isinstance(temperature, jax.core.Tracer):
        check_float("generate", "temperature", temperature, low=0.0)
    if not isinstance(top_p, jax.core.Tracer):
        check_float("generate", "top_p", top_p, low=0.0, high=1.0, low_inclusive=False)


def _check_length(policy: Policy, prompt_length: int, length: int) -> None:
    check_int("generate", "length", length, low=1)
    max_len = policy.config.max_len
    if prompt_length + length > max_len:
        raise ValueError(
            f"generate: prompt length {prompt_length} + length (max_new_tokens)={length} = "
            f"{prompt_length + length} exceeds the model's context TransformerConfig.max_len={max_len}; "
            f"shorten the prompts or ask for at most {max(max_len - prompt_length, 0)} new tokens"
        )


def bucket_length(n: int, *, minimum: int = 16, maximum: int | None = None) -> int:
    """The bucket of a length ``n``: the smallest power of two ``>= max(n, minimum)``, capped at ``maximum``.

    With prompt lengths in ``[1, 2^k]`` a run compiles at most ``k − log2(minimum) + 1`` programs
    per batch size instead of one per distinct length; padding wastes under half the prompt.
    ``maximum`` (e.g. ``max_len − max_new_tokens``) caps the bucket; ``n > maximum`` is an error.
    """
    check_int("bucket_length", "n", n, low=0)
    check_int("bucket_length", "minimum", minimum, low=1)
    if maximum is not None:
        check_int("bucket_length", "maximum", maximum, low=0)
        if n > maximum:
            raise ValueError(f"bucket_length: n={n} exceeds maximum={maximum}; expected n <= maximum")
    bucket = 1 << (max(n, minimum, 1) - 1).bit_length()
    return bucket if maximum is None else min(bucket, maximum)


def pad_prompts(prompts: Array, prompt_mask: Array, length: int, pad_id: int = 0) -> tuple[Array, Array]:
    """Left-pads prompts ``[B, Lp]`` to ``[B, length]`` (``pad_id`` tokens, mask False); numpy in, numpy out.

    Left padding does not change a row's logits, so the padded prompts give the same samples.
    """
    xp = jnp if isinstance(prompts, jax.Array) or isinstance(prompt_mask, jax.Array) else np
    prompts, prompt_mask = xp.asarray(prompts), xp.asarray(prompt_mask).astype(bool)
    extra = length - prompts.shape[1]
    if extra < 0:
        raise ValueError(f"pad_prompts: length={length} is shorter than the prompts ({prompts.shape[1]} tokens)")
    widths = ((0, 0), (extra, 0))
    return xp.pad(prompts, widths, constant_values=pad_id), xp.pad(prompt_mask, widths, constant_values=False)


# --------------------------------------------------------------------------------------------
# The two programs
# --------------------------------------------------------------------------------------------


def _repeat_rows(x: Array, num_samples: int) -> Array:
    return x if num_samples == 1 else jnp.repeat(x, num_samples, axis=0)


@functools.partial(jax.jit, static_argnames=("policy", "length", "num_samples"))
def prefill_shared(
    policy: Policy, params: Params, prompts: Array, prompt_mask: Array, length: int, num_samples: int = 1
) -> tuple[DecodeState, Array]:
    """Prefills each of the ``B`` prompts once and shares the cache across its ``M`` samples.

    Returns the :class:`~cdb.models.DecodeState` of ``B·M`` rows (row ``b·M + m`` holds prompt
    ``b``'s cache of ``Lp + length`` slots) and the first-token logits ``[B·M, V]``.
    """
    TRACE_COUNTS["prefill_shared"] += 1
    state, logits = prefill(policy, params, prompts, prompt_mask, length)
    cache = state.cache
    rep = functools.partial(_repeat_rows, num_samples=num_samples)
    cache = KVCache(tuple(map(rep, cache.keys)), tuple(map(rep, cache.values)), rep(cache.mask), cache.index)
    return DecodeState(cache, rep(state.positions)), rep(logits)


def _draw(key: PRNGKey, logits: Array, temperature: Array, top_p: Array) -> Array:
    """``sample_token(key, logits, temperature, top_p)``, skipping the work its arguments make moot.

    Bit-identical to :func:`cdb.models.sample_token`: for ``top_p >= 1`` its nucleus filter keeps
    every token, so its draw is ``categorical(key, logits / temperature)``; for
    ``temperature <= 0`` it returns the argmax.
    """
    branch = jnp.where(temperature <= 0, 0, jnp.where(top_p >= 1, 1, 2))
    return jax.lax.switch(
        branch,
        [
            lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
            lambda: jax.random.categorical(key, logits.astype(jnp.float32) / temperature, axis=-1).astype(jnp.int32),
            lambda: sample_token(key, logits, temperature, top_p),
        ],
    )


def _decode(key, policy, params, state, first_logits, length, temperature, top_p, eos_id, pad_id, mixture, mixed_state):
    rows = first_logits.shape[0]
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    keys = jax.random.split(key, length)
    second = None if mixture is None else mixture.second_policy(policy)

    def emit(t, logits, done, buffers):
        tokens, logps, masks = buffers
        token = jnp.where(done, pad_id, _draw(keys[t], logits, temperature, top_p)).astype(jnp.int32)
        logp = jnp.where(done, 0.0, token_logprobs(logits, token))
        column = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=t, axis=1)
        buffers = (column(tokens, token[:, None]), column(logps, logp[:, None]), column(masks, ~done[:, None]))
        finished = done if eos_id is None else done | (token == eos_id)
        return token, finished, buffers

    buffers = (
        jnp.full((rows, length), pad_id, jnp.int32),
        jnp.zeros((rows, length), jnp.float32),
        jnp.zeros((rows, length), bool),
    )
    token, done, buffers = emit(0, first_logits, jnp.zeros((rows,), bool), buffers)

    def cond(carry):
        t, _, _, _, done, _ = carry
        return (t < length) & ~jnp.all(done)

    def body(carry):
        t, state, mixed_state, token, done, buffers = carry
        state, logits = decode_step(policy, params, state, token)
        if mixture is not None:
            mixed_state, logits_b = decode_step(second, mixture.params, mixed_state, token)
            logits = mixture_logits(mixture.kind, logits, logits_b, mixture.weight)
        token, done, buffers = emit(t, logits, done, buffers)
        return t + 1, state, mixed_state, token, done, buffers

    steps, state, mixed_state, _, _, (tokens, logps, masks) = jax.lax.while_loop(
        cond, body, (jnp.asarray(1, jnp.int32), state, mixed_state, token, done, buffers)
    )
    return Generation(tokens=tokens, logprobs=logps, mask=masks, steps=steps), state, mixed_state


@functools.partial(
    jax.jit, static_argnames=("policy", "length", "eos_id", "pad_id"), donate_argnames=("state", "mixed_state")
)
def decode(
    key: PRNGKey,
    policy: Policy,
    params: Params,
    state: DecodeState,
    first_logits: Array,
    length: int,
    *,
    temperature: float | Array = 1.0,
    top_p: float | Array = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    mixture: Mixture | None = None,
    mixed_state: DecodeState | None = None,
) -> tuple[Generation, DecodeState, DecodeState | None]:
    """The early-stopping decode loop over a prefilled ``state`` (**donated**: invalid after the call).

    Emits token ``t`` from the current logits (step ``t`` draws with ``split(key, length)[t]``),
    feeds it back, and stops when every row has emitted ``eos_id`` or after ``length`` tokens.
    After a row's EOS it emits ``pad_id`` with mask False and log-prob 0. With a ``mixture``,
    ``mixed_state`` (also donated) is ``π_b``'s prefilled state and ``first_logits`` are already
    mixed. Returns the :class:`Generation` and the final states (whose buffers are the donated ones).
    """
    TRACE_COUNTS["decode"] += 1
    return _decode(
        key, policy, params, state, first_logits, length, temperature, top_p, eos_id, pad_id, mixture, mixed_state
    )


def generate(
    key: PRNGKey,
    policy: Policy,
    params: Params,
    prompts: Array,
    prompt_mask: Array,
    length: int,
    *,
    num_samples: int = 1,
    temperature: float | Array = 1.0,
    top_p: float | Array = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    mixture: Mixture | None = None,
) -> Generation:
    """``M = num_samples`` responses of ``length`` tokens to each left-padded prompt ``[B, Lp]``.

    Prefills each prompt once (:func:`prefill_shared`, for both policies of a ``mixture``), then
    runs the early-stopping loop (:func:`decode`, caches donated). Returns a :class:`Generation`
    (a :class:`~cdb.models.Samples`) of ``[B·M, L]`` arrays in the row order of
    ``jnp.repeat(prompts, M, axis=0)``; see the module docstring. ``temperature`` (>= 0, 0 =
    greedy), ``top_p`` (in (0, 1]) and a mixture's weight may be traced; ``length``,
    ``num_samples``, ``eos_id``, ``pad_id`` and the mixture's kind are static. Jit-able as a whole
    (e.g. inside an agent's step).

    Raises:
      ValueError: prompts / mask of different shapes, ``Lp + length > policy.config.max_len``,
        or a bad ``length``, ``num_samples``, ``temperature``, ``top_p`` or mixture.
    """
    _check_sampling(temperature, top_p, num_samples)
    prompts, prompt_mask = jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_mask).astype(bool)
    if prompts.ndim != 2 or prompt_mask.shape != prompts.shape:
        raise ValueError(
            f"generate: prompts and prompt_mask must both be [B, Lp]; got {prompts.shape} and {prompt_mask.shape}"
        )
    _check_length(policy, prompts.shape[1], length)
    if mixture is not None and not isinstance(mixture, Mixture):
        raise ValueError(f"generate: mixture={mixture!r:.80} is not allowed; expected None or a cdb.models.Mixture")
    # Inside another trace (an agent's step) the two programs are inlined into the caller's; their
    # own jit wrappers would only trace them twice (once alone, once batched or inlined).
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((key, params, prompts, prompt_mask, mixture)))
    prefill_fn = prefill_shared.__wrapped__ if traced else prefill_shared
    state, logits = prefill_fn(policy, params, prompts, prompt_mask, length, num_samples)
    mixed_state = None
    if mixture is not None:
        second = mixture.second_policy(policy)
        _check_length(second, prompts.shape[1], length)
        mixed_state, logits_b = prefill_fn(second, mixture.params, prompts, prompt_mask, length, num_samples)
        logits = mixture_logits(mixture.kind, logits, logits_b, mixture.weight)
    options = dict(temperature=temperature, top_p=top_p, eos_id=eos_id, pad_id=pad_id, mixture=mixture)
    if traced:
        out, _, _ = _decode(
            key, policy, params, state, logits, length, temperature, top_p, eos_id, pad_id, mixture, mixed_state
        )
        return out
    out, _, _ = decode(key, policy, params, state, logits, length, mixed_state=mixed_state, **options)
    return out


# --------------------------------------------------------------------------------------------
# Text in, text out
# --------------------------------------------------------------------------------------------


def generate_text(
    pretrained,
    prompts: list[str],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    key: PRNGKey,
    chat: bool = True,
    num_samples: int = 1,
) -> list[str]:
    """Responses to text prompts with a :class:`~cdb.models.Pretrained` model (what ``Pretrained.generate`` does).

    Encodes the prompts (chat template when ``chat=True``, left padding), pads them to
    ``bucket_length`` of the longest prompt and the batch to a power of two (so calls with
    similar prompts reuse the compiled programs), samples up to ``max_new_tokens`` tokens per
    response stopping at the tokenizer's EOS, and decodes each response up to its EOS.

    Returns ``len(prompts) · num_samples`` strings, sample ``m`` of prompt ``b`` at ``b·M + m``.

    Raises:
      ValueError: an empty or non-list ``prompts``, a prompt plus ``max_new_tokens`` longer than
        the model's context, or a bad ``temperature`` / ``top_p`` / ``num_samples``.
    """
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"generate_text: prompts={prompts!r} must be a non-empty list of strings")
    check_int("generate_text", "max_new_tokens", max_new_tokens, low=1)
    _check_sampling(temperature, top_p, num_samples)
    tokens, mask = pretrained.encode(list(prompts), chat=chat)
    n, width = tokens.shape
    max_len = pretrained.config.max_len
    if width + max_new_tokens > max_len:
        raise ValueError(
            f"{pretrained.name}: the longest prompt has {width} tokens, and with max_new_tokens={max_new_tokens} "
            f"that exceeds the model's context of {max_len} tokens; shorten the prompts or ask for at most "
            f"{max(max_len - width, 0)} new tokens"
        )
    pad_id = pretrained.pad_id
    tokens, mask = pad_prompts(tokens, mask, bucket_length(width, maximum=max_len - max_new_tokens), pad_id)
    rows = bucket_length(n, minimum=1)
    if rows > n:  # dummy one-token prompts, dropped below
        filler = np.zeros((rows - n, tokens.shape[1]), bool)
        filler[:, -1] = True
        tokens = np.concatenate([tokens, np.full(filler.shape, pad_id, np.int32)])
        mask = np.concatenate([mask, filler])
    out = generate(
        key,
        pretrained.policy,
        pretrained.params,
        tokens,
        mask,
        max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        eos_id=pretrained.eos_id,
        pad_id=pad_id,
    )
    keep = n * num_samples
    return pretrained.decode(np.asarray(out.tokens)[:keep], np.asarray(out.mask)[:keep])
