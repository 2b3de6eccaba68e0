"""The interface every tier-3 oracle has, and what the oracles share: the error they raise, the check
of their answers and of the pairs they are given, and the Bradley–Terry link on numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


class OracleError(RuntimeError):
    """An oracle failed or answered something malformed; the message says what came back."""


@runtime_checkable
class PreferenceOracle(Protocol):
    """The one interface of every oracle: batched pairwise preference probabilities."""

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """``P(a_i ≻ b_i | prompt_i)`` for the ``N`` pairs: ``[N]`` floats in ``[0, 1]``."""


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


def checked_compare(oracle: PreferenceOracle, prompts: list[str], responses_a: list[str], responses_b: list[str]):
    """``oracle.compare`` with its answer validated (:func:`check_probabilities`); ``[N]`` float64."""
    n = len(prompts)
    if n == 0:
        return np.zeros(0)
    return check_probabilities(oracle.compare(prompts, responses_a, responses_b), n, f"{type(oracle).__name__}.compare")


def check_pairs(owner: str, prompts, responses_a, responses_b) -> int:
    """The number of pairs ``N``; a ``ValueError`` unless the three sequences are ``N`` strings each."""
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


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``σ(x) = 1 / (1 + e^{−x})`` elementwise in float64."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the tanh form does not overflow for large abs(x)
