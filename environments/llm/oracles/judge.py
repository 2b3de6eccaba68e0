"""A causal LM as a pairwise judge: ``P(a ≻ b)`` from the logits of two answer labels, averaged
over both presentation orders."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cdb.models.pretrained import Pretrained
from cdb.validation import check_int

from .base import check_pairs

Array = jax.Array

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
        n = check_pairs("JudgeOracle", prompts, responses_a, responses_b)
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
