"""Pretrained causal LMs (tier 3): a :class:`Policy`, its parameters and its tokenizer together.

:class:`Pretrained` is what an alignment agent takes as ``reference`` and what
:class:`~cdb.environments.LLMDuel` generates and decodes text with::

    reference = load_pretrained("smollm2-135m-instruct")     # or a HF folder, or a .gguf file
    tokens, mask = reference.encode(["Write a review of a film."])   # [N, Lp] left-padded, chat template
    texts = reference.generate(["Write a review of a film."], max_new_tokens=32, key=jax.random.key(0))

``policy`` is hashable (a static argument of ``jax.jit``); ``params`` is a plain pytree; the
tokenizer is a ``transformers`` fast tokenizer (no torch needed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cdb.models.transformer import Params, Policy, TransformerConfig


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """A loaded causal LM.

    Attributes:
      policy: the model definition (:class:`~cdb.models.Policy`, hashable, jit-static).
      params: its parameters (``nnx.State`` pytree).
      tokenizer: a ``transformers.PreTrainedTokenizerFast``; its chat template is used by
        :meth:`encode` with ``chat=True``.
      name: a label for results and configurations (e.g. ``"smollm2-135m-instruct"``).
    """

    policy: Policy
    params: Params
    tokenizer: Any
    name: str = "pretrained"

    @property
    def config(self) -> TransformerConfig:
        return self.policy.config

    @property
    def eos_id(self) -> int | None:
        """The token that ends a response (the tokenizer's EOS, e.g. ``<|im_end|>`` for chat models)."""
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        """The token written after EOS and in left padding (the tokenizer's pad, else EOS, else 0)."""
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    def chat_text(self, prompt: str) -> str:
        """``prompt`` as one user turn of the chat template, ending where the assistant's answer starts."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.name}: the tokenizer has no chat template; pass chat=False to use prompts as raw "
                "text, or load a model whose tokenizer has one (tokenizer_config.json 'chat_template')"
            )
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def encode(
        self, prompts: list[str], *, chat: bool = True, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[N, Lp]`` int32, **left**-padded with :attr:`pad_id`, and the mask ``[N, Lp]`` bool.

        ``Lp`` is the longest prompt, or ``length`` (a prompt longer than ``length`` is an error).
        With ``chat=True`` each prompt is one user turn of the chat template.
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings, not one string")
        texts = [self.chat_text(p) if chat else p for p in prompts]
        ids = [self.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
        longest = max((len(i) for i in ids), default=0)
        width = longest if length is None else length
        if longest > width:
            raise ValueError(f"{self.name}: a prompt has {longest} tokens; expected at most length={length}")
        tokens = np.full((len(ids), width), self.pad_id, np.int32)
        mask = np.zeros((len(ids), width), bool)
        for row, seq in enumerate(ids):
            if seq:
                tokens[row, width - len(seq) :] = seq
                mask[row, width - len(seq) :] = True
        return tokens, mask

    def decode(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
        """Response texts of ``tokens`` ``[N, L]``: each row up to (not including) its first EOS."""
        tokens = np.asarray(tokens)
        out = []
        for row in range(tokens.shape[0]):
            seq = tokens[row] if mask is None else tokens[row][np.asarray(mask[row], bool)]
            seq = [int(t) for t in seq]
            if self.eos_id is not None and self.eos_id in seq:
                seq = seq[: seq.index(self.eos_id)]
            out.append(self.tokenizer.decode(seq, skip_special_tokens=True))
        return out
