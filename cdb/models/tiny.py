"""A tiny random tier-3 model built in memory, for tests, smoke runs and notebooks: a byte-level
tokenizer with a chat template and a tiny random Llama-style :class:`~cdb.models.Pretrained` on it
(no files, no downloads, no torch). Its text is noise; its shapes, padding and EOS are real::

    from cdb.models.tiny import tiny_pretrained
    env = LLMDuel(tiny_pretrained())
"""

from __future__ import annotations

import functools

import jax

from cdb.models.pretrained import Pretrained
from cdb.models.transformer import Policy, TransformerConfig

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def byte_tokenizer():
    """256 byte tokens (GPT-2's byte-level alphabet, no merges) + ``<|endoftext|>`` (pad, 256),
    ``<|im_start|>`` (257), ``<|im_end|>`` (EOS, 258); SmolLM2's chat template shape."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from cdb.models.quiet_transformers import import_transformers

    PreTrainedTokenizerFast = import_transformers().PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


TINY_CONFIG = TransformerConfig(
    vocab_size=259, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64, max_len=128
)


@functools.cache
def tiny_pretrained(seed: int = 0) -> Pretrained:
    """A random tiny Llama-style model on :func:`byte_tokenizer` (its text is noise, its shapes real)."""
    policy = Policy(TINY_CONFIG)
    return Pretrained(policy, policy.init(jax.random.key(seed)), byte_tokenizer(), name="tiny-random")
