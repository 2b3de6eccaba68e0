"""Preference oracles of tier 3: host-side objects that judge pairs of texts (docs/design.md §2, §7).

Every oracle has one batched, pairwise method::

    p = oracle.compare(prompts, responses_a, responses_b)    # [N] float64, P(a ≻ b | prompt)

and the labels an agent receives are drawn from ``p`` with the round's key by the pure function
every tier uses, :func:`preference_labels` of :mod:`cdb.environments.feedback` (``'sample'``:
``z ~ Bernoulli(p)``; ``'deterministic'``: ``z = 1[p > ½]``; optional label noise). Three oracles,
one module each:

* :class:`RewardOracle` (:mod:`.reward`) — Bradley–Terry on any reward function ``r(prompt, response)``:
  ``P(a ≻ b) = σ(scale · (r(a) − r(b)))``. Built in: :meth:`RewardOracle.sentiment` (VADER's
  compound score, the controlled-sentiment task of the DPO paper §6.1 with VADER in place of
  its classifier), :meth:`RewardOracle.minilm` (cosine similarity to a target text in a
  sentence encoder's space) and :meth:`RewardOracle.from_reward_model` (a Hugging Face reward model
  loaded by ``cdb.models.load_reward_model``, scored in JAX).
* :class:`JudgeOracle` (:mod:`.judge`) — a loaded causal LM as a pairwise judge; ``P`` from the logits of the
  two answer labels, averaged over both presentation orders (which cancels position bias and
  makes ``P(a ≻ b) + P(b ≻ a) = 1`` exact).
* :class:`HTTPOracle` (:mod:`.remote`) — a remote reward model or judge over HTTP (JSON in and out), batched,
  with timeouts, retries with exponential backoff and a clear :class:`OracleError` after the
  last retry.

Answers are validated (:func:`check_probabilities`): a wrong length, a value that is not a
finite number in ``[0, 1]``, or a failure raises :class:`OracleError` naming what came back. The
interface (:class:`PreferenceOracle`), the error and the checks are in :mod:`.base`.
"""

from ...feedback import LABEL_MODES, preference_labels
from .base import OracleError, PreferenceOracle, check_probabilities, checked_compare
from .judge import DEFAULT_JUDGE_TEMPLATE, JudgeOracle
from .remote import HTTPOracle
from .reward import DEFAULT_MINILM_TARGET, EncoderSimilarity, RewardOracle, VaderSentiment

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "DEFAULT_MINILM_TARGET",
    "LABEL_MODES",
    "EncoderSimilarity",
    "HTTPOracle",
    "JudgeOracle",
    "OracleError",
    "PreferenceOracle",
    "RewardOracle",
    "VaderSentiment",
    "check_probabilities",
    "checked_compare",
    "preference_labels",
]
