"""A remote reward model or judge over HTTP: batched JSON requests, timeouts, retries with
exponential backoff, and an :class:`~.base.OracleError` that says what came back."""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

from cdb.validation import check_float, check_int

from .base import OracleError, check_pairs, check_probabilities, sigmoid

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
        n = check_pairs("HTTPOracle", prompts, responses_a, responses_b)
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
            return sigmoid(self.scale * (rewards[0] - rewards[1]))
        raise OracleError(
            f"{source} answered {answer!r:.200}; expected a JSON object with 'probabilities' (or 'rewards_a' and "
            "'rewards_b')"
        )
