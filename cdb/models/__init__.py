"""Causal language models for tiers 2-3 (docs/design.md §7): an NNX decoder (Llama / Qwen2, GPT-2, GPT-NeoX),
its samplers, pretrained checkpoints (:func:`load_pretrained`), LoRA adapters (:func:`with_lora`) and
reward models (:func:`load_reward_model`; DeBERTa-v2/v3 in :mod:`cdb.models.deberta`).

from cdb.models import Policy, TransformerConfig, generate, response_token_logprobs

policy = Policy(TransformerConfig(vocab_size=12, d_model=32, num_layers=2, num_heads=4,
                                  num_kv_heads=2, d_ff=64, max_len=32))
params = policy.init(key)                                              # nnx.State pytree
logits, hidden = policy.apply(params, tokens, attention_mask)          # [B, T, V], [B, T, D]
out = generate(key, policy, params, prompts, prompt_mask, length=8, num_samples=4, top_p=0.9)  # [B*4, 8]
lp = response_token_logprobs(policy, params, jnp.repeat(prompts, 4, 0), jnp.repeat(prompt_mask, 4, 0),
                       out.tokens, out.mask)                    # == out.logprobs

reference = load_pretrained("path/to/hf-folder")        # or a .gguf file, or "smollm2-135m-instruct"
policy, params = with_lora(reference, rank=8, alpha=16, key=key)   # pi_theta; pi_ref = reference
rm = load_reward_model("path/to/reward-model")          # *ForSequenceClassification: Llama, Qwen2, GPT-2, NeoX, DeBERTa
r = rm.score(prompts, responses)                        # [N], the chat template applied, one jitted pass
"""

from cdb.models.generate import Generation, Mixture, bucket_length, generate, generate_text
from cdb.models.hf import config_from_hf, decoder_params_from_hf
from cdb.models.lora import base_params, lora_optimizer, lora_trainable, merge_lora, with_lora
from cdb.models.pretrained import Pretrained, load_pretrained
from cdb.models.reward_model import (
    REWARD_MODEL_ARCHITECTURES,
    FrozenBackbone,
    PretrainedRewardModel,
    load_reward_model,
)
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
    response_logprob,
    response_token_logprobs,
    sample_token,
    token_logprobs,
)
from cdb.models.transformer import (
    ARCHITECTURES,
    KVCache,
    LoRALinear,
    Policy,
    Transformer,
    TransformerConfig,
    apply_rope,
    init_cache,
    positions_from_mask,
    rope_angles,
    rope_inv_freq,
)

__all__ = [
    "Generation",
    "Mixture",
    "bucket_length",
    "generate",
    "generate_text",
    "ARCHITECTURES",
    "DecodeState",
    "KVCache",
    "LoRALinear",
    "Policy",
    "Pretrained",
    "PretrainedRewardModel",
    "FrozenBackbone",
    "REWARD_MODEL_ARCHITECTURES",
    "Samples",
    "Transformer",
    "TransformerConfig",
    "apply_rope",
    "base_params",
    "config_from_hf",
    "decode_step",
    "dera_logits",
    "geometric_mixture_logits",
    "init_cache",
    "load_pretrained",
    "load_reward_model",
    "lora_optimizer",
    "lora_trainable",
    "merge_lora",
    "mixture_logits",
    "decoder_params_from_hf",
    "positions_from_mask",
    "prefill",
    "process_logits",
    "response_logits",
    "rope_angles",
    "rope_inv_freq",
    "sample_token",
    "response_logprob",
    "response_token_logprobs",
    "token_logprobs",
    "with_lora",
]
