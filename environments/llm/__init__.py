"""Tier 3 (docs/design.md §2, §7): a real language model aligned from a host-side oracle's preferences.

* :class:`LLMDuel` — the environment: a :class:`PromptSet` and an oracle around a pretrained
  reference model (``cdb.models.Pretrained``); not pure JAX, so ``cdb.run`` takes its host loop.
* :class:`PromptSet` — prompts from the built-in ``"reviews"`` set, a JSON-lines file or a local
  Hugging Face dataset folder.
* Oracles, one pairwise interface ``compare(prompts, a, b) -> P(a ≻ b)``: :class:`RewardOracle`
  (Bradley–Terry on a reward: VADER sentiment, sentence-encoder similarity, any function),
  :class:`JudgeOracle` (an LM judge, both orders averaged), :class:`HTTPOracle` (a remote service);
  labels from :func:`preference_labels`.
"""

from .duel import DEFAULT_MAX_NEW_TOKENS, LLMDuel, LLMDuelState
from .oracles import (
    DEFAULT_JUDGE_TEMPLATE,
    LABEL_MODES,
    EncoderSimilarity,
    HTTPOracle,
    JudgeOracle,
    OracleError,
    PreferenceOracle,
    RewardOracle,
    VaderSentiment,
    check_probabilities,
    preference_labels,
)
from .prompts import BUILTIN, PromptSet

__all__ = [
    "BUILTIN",
    "DEFAULT_JUDGE_TEMPLATE",
    "DEFAULT_MAX_NEW_TOKENS",
    "LABEL_MODES",
    "EncoderSimilarity",
    "HTTPOracle",
    "JudgeOracle",
    "LLMDuel",
    "LLMDuelState",
    "OracleError",
    "PreferenceOracle",
    "PromptSet",
    "RewardOracle",
    "VaderSentiment",
    "check_probabilities",
    "preference_labels",
]
