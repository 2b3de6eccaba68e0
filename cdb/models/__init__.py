"""Causal language models for tiers 2-3 (DESIGN §6): a Llama-style NNX decoder and its samplers.

from cdb.models import Policy, TransformerConfig, sample, sequence_logprobs

policy = Policy(TransformerConfig(vocab_size=12, d_model=32, num_layers=2, num_heads=4,
                                  num_kv_heads=2, d_ff=64, max_len=32))
params = policy.init(key)                                              # nnx.State pytree
logits, hidden = policy.apply(params, tokens, attention_mask)          # [B, T, V], [B, T, D]
out = sample(key, policy, params, prompts, prompt_mask, length=8, temperature=1.0, top_p=0.9)
lp = sequence_logprobs(policy, params, prompts, prompt_mask, out.tokens, out.mask)  # == out.logprobs
"""

from cdb.models.pretrained import Pretrained
from cdb.models.sampling import (
    DecodeState,
    Samples,
    decode_step,
    dera_logits,
    geometric_mixture_logits,
    mixture_logits,
    prefill,
    process_logits,
    response_logits,
    sample,
    sample_dera,
    sample_geometric_mixture,
    sample_mixture,
    sample_token,
    sample_with_logits_fn,
    sequence_logprob,
    sequence_logprobs,
    token_logprobs,
)
from cdb.models.transformer import (
    KVCache,
    Policy,
    Transformer,
    TransformerConfig,
    apply_rope,
    init_cache,
    positions_from_mask,
    rope_angles,
)

__all__ = [
    "DecodeState",
    "KVCache",
    "Policy",
    "Pretrained",
    "Samples",
    "Transformer",
    "TransformerConfig",
    "apply_rope",
    "decode_step",
    "dera_logits",
    "geometric_mixture_logits",
    "init_cache",
    "mixture_logits",
    "positions_from_mask",
    "prefill",
    "process_logits",
    "response_logits",
    "rope_angles",
    "sample",
    "sample_dera",
    "sample_geometric_mixture",
    "sample_mixture",
    "sample_token",
    "sample_with_logits_fn",
    "sequence_logprob",
    "sequence_logprobs",
    "token_logprobs",
]
