"""Reward-model features of a (prompt, response) pair, for the epistemic ensemble (pluggable).

A feature map (:class:`FeatureMap`) is a callable::

    phi = features(ref_scores, prompts [N, Lp], responses [N, L], *, prompt_mask=None, response_mask=None)  # [N, D]

where ``ref_scores`` is the frozen reference policy's teacher-forced pass
(:class:`cdb.sequences.ResponseScores`) and the masks say which tokens are real (tier 3: left-padded
prompts, responses ending at EOS; ``None`` = all real, tier 2). Features are computed once per
candidate response, in ``select``, and carried to ``update``.

* :func:`reference_hidden_features` (default, as in SEA / Oat): π_ref's last hidden state at the
  last real token of ``(x, y)``.
* :class:`FrozenEncoderFeatures`: a frozen sentence encoder's embedding of the decoded text (the
  SEA paper puts its ensemble on a frozen PairRM backbone; e.g. MiniLM from
  ``cdb.models.encoder.load_sentence_encoder()``). Decoding and the encoder's tokenisation are
  host operations, reached through one ``jax.pure_callback``; the encoder runs in JAX.
* :class:`FrozenBackboneFeatures`: a frozen reward model's (or causal LM's) representation of
  ``(x, y)``, the input of its score head; in JAX on device when it shares the policy's tokenizer.
* :class:`ChainCountFeatures`: co-occurrence counts in which :class:`~cdb.environments.SequenceDuel`'s
  gold reward is exactly linear (``r*(x, y) = Σ_s Σ_t M[x_s, t, y_t] + Σ_t U[y_{t−1}, y_t]``),
  for ablations that separate exploration from representation learning.

A feature map that does not read ``ref_scores`` says so with ``uses_reference_pass = False``; an
agent then runs π_ref only over the pair it plays, not over every candidate (and passes
``ref_scores=None``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from cdb.sequences import ResponseScores
from cdb.validation import check_int

Array = jax.Array


@runtime_checkable
class FeatureMap(Protocol):
    """``(ref_scores, prompts [N, Lp], responses [N, L], *, prompt_mask, response_mask) -> [N, D]`` float32."""

    def __call__(
        self,
        ref: ResponseScores,
        prompts: Array,
        responses: Array,
        *,
        prompt_mask: Array | None = None,
        response_mask: Array | None = None,
    ) -> Array: ...


def reference_hidden_features(
    ref: ResponseScores,
    prompts: Array,
    responses: Array,
    *,
    prompt_mask: Array | None = None,
    response_mask: Array | None = None,
) -> Array:
    """π_ref's last (normed) hidden state at the last real token of ``(x, y)``, ``[N, D]``.

    :func:`cdb.sequences.score_responses` takes it at the response's EOS (never at padding), so
    the masks are already accounted for.
    """
    return ref.last_hidden


reference_hidden_features.uses_reference_pass = True


class TextEmbedder(Protocol):
    """A frozen text encoder: ``embed(texts: list[str]) -> np.ndarray [N, D]`` float32."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenEncoderFeatures:
    """Features from a frozen sentence encoder of the decoded text, ``[N, D]`` float32.

    ``φ(x, y) = encoder(text(y))`` or, with ``include_prompt``, ``encoder(text(x) + separator +
    text(y))``; the text is the policy tokenizer's decoding of the real tokens only (prompt tokens
    where ``prompt_mask``, response tokens where ``response_mask``; special tokens skipped).

    Only the text crosses to the host. With a JAX encoder (one with ``tokenize``, ``embed_tokens``,
    ``params`` and ``max_length``, e.g. ``cdb.models.encoder.load_sentence_encoder()``) one
    ``jax.pure_callback`` per call decodes the policy's tokens and re-tokenises the texts for the
    encoder, and the encoder itself runs inside the agent's compiled step, on the agent's device,
    for all N texts at once: a round leaves the program once for its candidates' features.
    The encoder's inputs have a static width of ``max_tokens`` word pieces (default
    ``min(encoder.max_length, 2·(policy tokens of the text) + 2)``, so a text is truncated only
    when the encoder's tokenizer needs more than twice the policy's tokens for it). Any other
    encoder (``embed(texts) -> [N, D]``) runs whole on the host inside the callback.

    The map is frozen (no gradient flows through it) and deterministic. Under ``vmap``
    (``cdb.run``'s seeds) the callback receives all seeds at once (``vmap_method='broadcast_all'``).

    Attributes:
      encoder: a JAX sentence encoder (``load_sentence_encoder()``), or any object with
        ``embed(texts) -> [N, D]``.
      tokenizer: the policy's tokenizer, with ``decode(ids, skip_special_tokens=True) -> str``
        (e.g. ``Pretrained.tokenizer``).
      include_prompt: embed the prompt with the response (a cross-encoding of the pair), or the
        response alone.
      separator: the text between prompt and response when ``include_prompt``.
      max_tokens: the encoder's input width (JAX encoders); ``None``: the default above.
      dim: D (derived).
    """

    encoder: Any
    tokenizer: Any
    include_prompt: bool = False
    separator: str = "\n"
    max_tokens: int | None = None
    dim: int = dataclasses.field(init=False, repr=False)

    uses_reference_pass = False

    def __post_init__(self):
        if self.max_tokens is not None:
            check_int(self, "max_tokens", self.max_tokens, low=2)
        if self.on_device:
            dim = int(self.encoder.encoder.config.hidden_size)
        else:
            # D from one probe text, here and not lazily: the first use may be inside an agent's trace
            dim = int(np.asarray(self.encoder.embed(["a"])).shape[-1])
        object.__setattr__(self, "dim", dim)

    @property
    def on_device(self) -> bool:
        """Whether the encoder runs inside the agent's program (a JAX encoder), not on the host."""
        return all(hasattr(self.encoder, name) for name in ("tokenize", "embed_tokens", "params", "max_length"))

    def texts(self, prompts: np.ndarray, responses: np.ndarray, prompt_mask, response_mask) -> list[str]:
        """The decoded texts of ``[N, ...]`` host arrays (real tokens only)."""
        out = []
        for row in range(responses.shape[0]):
            text = self.tokenizer.decode([int(t) for t in responses[row][response_mask[row]]], skip_special_tokens=True)
            if self.include_prompt:
                prompt = self.tokenizer.decode(
                    [int(t) for t in prompts[row][prompt_mask[row]]], skip_special_tokens=True
                )
                text = prompt + self.separator + text
            out.append(text)
        return out

    def width(self, prompt_length: int, response_length: int) -> int:
        """The encoder's static input width for texts of at most ``Lp + L`` (or ``L``) policy tokens."""
        if self.max_tokens is not None:
            return self.max_tokens
        policy_tokens = response_length + (prompt_length if self.include_prompt else 0)
        return min(int(self.encoder.max_length), 2 * policy_tokens + 2)

    def _host_texts(self, prompts, responses, prompt_mask, response_mask) -> tuple[tuple, list[str]]:
        prompts, responses = np.asarray(prompts), np.asarray(responses)
        prompt_mask, response_mask = np.asarray(prompt_mask, bool), np.asarray(response_mask, bool)
        lead = responses.shape[:-1]  # [..., N] (seeds under vmap, then rows)
        texts = self.texts(
            prompts.reshape(-1, prompts.shape[-1]),
            responses.reshape(-1, responses.shape[-1]),
            prompt_mask.reshape(-1, prompt_mask.shape[-1]),
            response_mask.reshape(-1, response_mask.shape[-1]),
        )
        return lead, texts

    def _host_tokenize(self, width: int, prompts, responses, prompt_mask, response_mask):
        lead, texts = self._host_texts(prompts, responses, prompt_mask, response_mask)
        ids, mask = self.encoder.tokenize(texts)
        ids, mask = ids[:, :width], mask[:, :width]
        pad = ((0, 0), (0, width - ids.shape[1]))
        return np.pad(ids, pad).reshape(*lead, width).astype(np.int32), np.pad(mask, pad).reshape(*lead, width)

    def _host_embed(self, prompts, responses, prompt_mask, response_mask) -> np.ndarray:
        lead, texts = self._host_texts(prompts, responses, prompt_mask, response_mask)
        embedded = np.asarray(self.encoder.embed(texts), np.float32)
        if embedded.shape != (len(texts), self.dim):
            raise ValueError(
                f"FrozenEncoderFeatures: encoder.embed returned shape {embedded.shape}; "
                f"expected {(len(texts), self.dim)}"
            )
        return embedded.reshape(*lead, self.dim)

    def __call__(
        self,
        ref: ResponseScores | None,
        prompts: Array,
        responses: Array,
        *,
        prompt_mask: Array | None = None,
        response_mask: Array | None = None,
    ) -> Array:
        prompts, responses = jnp.asarray(prompts, jnp.int32), jnp.asarray(responses, jnp.int32)
        prompt_mask = jnp.ones(prompts.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
        response_mask = jnp.ones(responses.shape, bool) if response_mask is None else jnp.asarray(response_mask, bool)
        n = responses.shape[0]
        args = (prompts, responses, prompt_mask, response_mask)
        if not self.on_device:
            shape = jax.ShapeDtypeStruct((n, self.dim), jnp.float32)
            return jax.pure_callback(self._host_embed, shape, *args, vmap_method="broadcast_all")
        width = self.width(prompts.shape[-1], responses.shape[-1])
        shapes = (jax.ShapeDtypeStruct((n, width), jnp.int32), jax.ShapeDtypeStruct((n, width), jnp.bool_))
        tokenize = functools.partial(self._host_tokenize, width)
        ids, mask = jax.pure_callback(tokenize, shapes, *args, vmap_method="broadcast_all")
        params = jax.lax.stop_gradient(self.encoder.params)
        return self.encoder.embed_tokens(params, ids, mask).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ChainCountFeatures:
    """Reward-realizable features for a chain reward over ``vocab_size`` tokens.

    ``φ(x, y) = [ vec_{u,t,v} #{s : x_s = u}·1[y_t = v] ,  vec_{u,v} #{t : y_{t−1} = u, y_t = v} ]``,
    dimension ``V·L·V + V²``. Any reward of the form ``Σ_s Σ_t M[x_s, t, y_t] + Σ_t U[y_{t−1}, y_t]``
    is linear in φ — in particular SequenceDuel's gold reward, whose unary table is linear in a
    bag-of-tokens prompt embedding. Padding (masked tokens) counts nothing.
    """

    vocab_size: int

    uses_reference_pass = False

    def __post_init__(self):
        check_int(self, "vocab_size", self.vocab_size, low=2)

    def __call__(
        self,
        ref: ResponseScores | None,
        prompts: Array,
        responses: Array,
        *,
        prompt_mask: Array | None = None,
        response_mask: Array | None = None,
    ) -> Array:
        v = self.vocab_size
        prompt_onehot = jax.nn.one_hot(prompts, v)
        response_onehot = jax.nn.one_hot(responses, v)  # [N, L, V]
        if prompt_mask is not None:
            prompt_onehot = prompt_onehot * jnp.asarray(prompt_mask, prompt_onehot.dtype)[..., None]
        if response_mask is not None:
            response_onehot = response_onehot * jnp.asarray(response_mask, response_onehot.dtype)[..., None]
        prompt_counts = jnp.sum(prompt_onehot, axis=1)  # [N, V]
        unary = jnp.einsum("nu,ntv->nutv", prompt_counts, response_onehot).reshape(prompts.shape[0], -1)
        bigram = jnp.einsum("ntu,ntv->nuv", response_onehot[:, :-1], response_onehot[:, 1:]).reshape(
            prompts.shape[0], -1
        )
        return jnp.concatenate([unary, bigram], axis=-1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenBackboneFeatures:
    """A frozen model's representation of ``(x, y)``, ``[N, D]`` float32: the input of a reward model's
    score head, or a causal LM's last hidden state at the last real token.

    The SEA paper (Liu et al. 2024) puts its epistemic ensemble on a frozen pairwise-ranker backbone;
    this map puts it on any loaded reward model (:func:`cdb.models.load_reward_model`: the decoder's
    hidden state at the scored token, DeBERTa's pooled ``[CLS]``) or causal LM
    (:class:`cdb.models.Pretrained`), so that the frozen model's own reward is linear in ``φ``.

    How the tokens reach the backbone:

    * **On device** (:attr:`on_device`, when the backbone is a decoder whose tokenizer has the
      policy's vocabulary): the backbone reads the agent's token arrays ``[x, y]`` (prompt mask,
      then response mask) inside the compiled step, no host call. These are the policy's tokens:
      the prompt in the policy's chat template, the response up to its EOS; they are the
      backbone's own when the two models share a chat template.
    * **Through the host** (any other backbone, e.g. DeBERTa): text goes across as in
      :class:`FrozenEncoderFeatures` (``jax.pure_callback``, all seeds at once under ``vmap``).
      The prompt tokens are decoded with the policy's tokenizer and its chat template's frame is
      taken off (the user's message is what remains); the response tokens are decoded up to the
      EOS, special tokens skipped. The backbone then formats each ``(prompt, response)`` its own
      way (its chat template, or DeBERTa's text pair) and computes the features in jitted batches.

    Attributes:
      backbone: a :class:`cdb.models.PretrainedRewardModel` (or :class:`cdb.models.reward_model.FrozenBackbone`),
        or a :class:`cdb.models.Pretrained` (turned into a backbone with its own chat template).
      tokenizer: the policy's tokenizer, which wrote the agent's tokens (default: the backbone's).
    """

    backbone: Any
    tokenizer: Any = None
    on_device: bool = dataclasses.field(init=False)
    dim: int = dataclasses.field(init=False, repr=False)

    uses_reference_pass = False

    def __post_init__(self):
        from cdb.models.pretrained import Pretrained
        from cdb.models.reward_model import DecoderScoreModel, FrozenBackbone

        backbone = self.backbone
        if isinstance(backbone, Pretrained):
            backbone = FrozenBackbone.from_pretrained(backbone)
        if not isinstance(backbone, FrozenBackbone):
            raise ValueError(
                f"FrozenBackboneFeatures.backbone={backbone!r:.80} is not allowed; expected a reward model from "
                "cdb.models.load_reward_model or a cdb.models.Pretrained"
            )
        object.__setattr__(self, "backbone", backbone)
        if self.tokenizer is None:
            object.__setattr__(self, "tokenizer", backbone.tokenizer)
        same_vocabulary = self.tokenizer is backbone.tokenizer or self.tokenizer.get_vocab() == (
            backbone.tokenizer.get_vocab()
        )
        object.__setattr__(self, "on_device", isinstance(backbone.model, DecoderScoreModel) and same_vocabulary)
        object.__setattr__(self, "dim", backbone.dim)
        object.__setattr__(self, "_frame", _chat_frame(self.tokenizer))

    def texts(self, prompts: np.ndarray, responses: np.ndarray, prompt_mask, response_mask) -> tuple[list, list]:
        """The prompt and response texts of ``[N, ...]`` host arrays (see the class docstring)."""
        prefix, suffix = self._frame
        out_prompts, out_responses = [], []
        for row in range(responses.shape[0]):
            ids = [int(t) for t in prompts[row][prompt_mask[row]]]
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            if prefix is not None and text.startswith(prefix) and text.endswith(suffix):
                text = text[len(prefix) : len(text) - len(suffix)]
            else:  # no chat frame around it: the prompt's text without special tokens
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out_prompts.append(text)
            ids = [int(t) for t in responses[row][response_mask[row]]]
            out_responses.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return out_prompts, out_responses

    def _host_features(self, prompts, responses, prompt_mask, response_mask) -> np.ndarray:
        prompts, responses = np.asarray(prompts), np.asarray(responses)
        prompt_mask, response_mask = np.asarray(prompt_mask, bool), np.asarray(response_mask, bool)
        lead = responses.shape[:-1]  # [..., N] (seeds under vmap, then rows)
        x, y = self.texts(
            prompts.reshape(-1, prompts.shape[-1]),
            responses.reshape(-1, responses.shape[-1]),
            prompt_mask.reshape(-1, prompt_mask.shape[-1]),
            response_mask.reshape(-1, response_mask.shape[-1]),
        )
        return self.backbone.features(x, y).reshape(*lead, self.dim)

    def __call__(
        self,
        ref: ResponseScores | None,
        prompts: Array,
        responses: Array,
        *,
        prompt_mask: Array | None = None,
        response_mask: Array | None = None,
    ) -> Array:
        prompts, responses = jnp.asarray(prompts, jnp.int32), jnp.asarray(responses, jnp.int32)
        prompt_mask = jnp.ones(prompts.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
        response_mask = jnp.ones(responses.shape, bool) if response_mask is None else jnp.asarray(response_mask, bool)
        if self.on_device:
            tokens = jnp.concatenate([prompts, responses], axis=-1)
            mask = jnp.concatenate([prompt_mask, response_mask], axis=-1)
            return self.backbone.features_tokens(self.backbone.params, tokens, mask)
        shape = jax.ShapeDtypeStruct((responses.shape[0], self.dim), jnp.float32)
        return jax.pure_callback(
            self._host_features, shape, prompts, responses, prompt_mask, response_mask, vmap_method="broadcast_all"
        )


_SENTINEL = "\u2063cdb-prompt\u2063"


def _chat_frame(tokenizer: Any) -> tuple[str | None, str | None]:
    """``(prefix, suffix)`` that the tokenizer's chat template writes around one user message (with the
    assistant's generation prompt), or ``(None, None)`` without a usable template."""
    if not getattr(tokenizer, "chat_template", None):
        return None, None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
        )
    except Exception:  # a template that cannot render one user turn frames nothing
        return None, None
    if text.count(_SENTINEL) != 1:
        return None, None
    prefix, suffix = text.split(_SENTINEL)
    return prefix, suffix
