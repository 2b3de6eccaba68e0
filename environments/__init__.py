"""Environments of the contextual dueling bandit (docs/design.md §2), importable as ``cdb.environments``.

Tier 1 (pure JAX, exact regret):

* :class:`LinearDuel`  — ``r*(x, a) = ⟨θ*, φ(x, a)⟩``, features ``φ ~ N(0, I/d)`` drawn each round;
* :class:`NeuralDuel`  — ``r*`` a random one-hidden-layer tanh MLP of ``φ``;
* :class:`KArmedDuel`  — no context, a ``K × K`` preference matrix with a Condorcet winner.

All take :class:`DuelParams` (the link's inverse temperature ``scale``) and share the link
functions of :mod:`cdb.environments.links`. Every tier draws its labels from ``P(a1 ≻ a2)`` with
:func:`cdb.environments.feedback.preference_labels`.
"""

from .duel_model import DuelParams
from .feature_duel import (
    FeatureDuel,
    FeatureDuelState,
    LinearDuel,
    LinearReward,
    MLPReward,
    NeuralDuel,
)
from .karmed import KArmedDuel, KArmedState
from .links import LINKS, preference_probability

__all__ = [
    "LINKS",
    "DuelParams",
    "FeatureDuel",
    "FeatureDuelState",
    "KArmedDuel",
    "KArmedState",
    "LinearDuel",
    "LinearReward",
    "MLPReward",
    "NeuralDuel",
    "preference_probability",
]

# Tier 2: toy LLM alignment with an exact optimum (SequenceDuel), its chain computations and
# its cached SFT reference policy.
from . import chain  # noqa: E402
from .reference_policy import ReferenceConfig, ReferencePolicy, build_reference_policy  # noqa: E402
from .sequence_duel import (  # noqa: E402
    ChainReward,
    SequenceDuel,
    SequenceDuelParams,
    SequenceDuelState,
    SequenceTables,
    gold_reward,
    optimal_response,
    teacher_entropy,
    teacher_log_prob,
    teacher_sample,
)

__all__ += [
    "ChainReward",
    "ReferenceConfig",
    "ReferencePolicy",
    "SequenceDuel",
    "SequenceDuelParams",
    "SequenceDuelState",
    "SequenceTables",
    "build_reference_policy",
    "chain",
    "gold_reward",
    "optimal_response",
    "teacher_entropy",
    "teacher_log_prob",
    "teacher_sample",
]

# Tier 3: a real language model, a prompt set and a host-side preference oracle (LLMDuel).
from . import llm  # noqa: E402
from .llm import (  # noqa: E402
    EncoderSimilarity,
    HTTPOracle,
    JudgeOracle,
    LLMDuel,
    LLMDuelState,
    OracleError,
    PreferenceOracle,
    PromptSet,
    RewardOracle,
    VaderSentiment,
    preference_labels,
)

__all__ += [
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
    "llm",
    "preference_labels",
]
