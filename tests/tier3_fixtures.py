"""A minimal tier-3 stand-in environment for the alignment agents' tests (pure JAX), and shared pieces.

:class:`TokenCountDuel` has what matters of ``LLMDuel`` for an agent: prompts of different real
lengths, *left*-padded with ``pad_id`` and an ``obs.prompt_mask``; responses that end at EOS
(``EnvSpec(eos_id=..., pad_id=...)``); a Bradley–Terry oracle on a reward that counts only a
response's real tokens. Its policy is ``tiny_pretrained()`` (a random tiny Llama on the byte
tokenizer), so the numbers mean nothing; the shapes, masks and bookkeeping are real.

Reward: ``r(y) = #{t ≤ |y| : y_t < 128}`` (real tokens from the lower half of the vocabulary; the EOS
258 is not one of them), maximal ``L`` for a response without EOS whose tokens are all < 128.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from llm_fixtures import tiny_pretrained

from cdb.sequences import response_mask
from cdb.types import Duel, EnvSpec, Feedback, Observation

PAD, EOS = 256, 258
B, LP, L, B_EVAL = 2, 5, 6, 2
V = 259
# a pool of prompts of 2-5 real tokens (bytes), left-padded to LP
POOL_TEXTS = ("hi", "tell", "abc d", "ok!", "why?", "sun")


def left_padded(texts, width: int = LP) -> tuple[np.ndarray, np.ndarray]:
    """Byte-token prompts ``[N, width]`` left-padded with PAD, and their masks."""
    tok = tiny_pretrained().tokenizer
    tokens = np.full((len(texts), width), PAD, np.int32)
    mask = np.zeros((len(texts), width), bool)
    for row, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        tokens[row, width - len(ids) :] = ids
        mask[row, width - len(ids) :] = True
    return tokens, mask


def count_reward(responses: jax.Array) -> jax.Array:
    """``[..., L] -> [...]`` float32: real tokens below 128."""
    real = response_mask(responses, EOS)
    return jnp.sum(real & (responses < 128), axis=-1).astype(jnp.float32)


@struct.dataclass
class CountState:
    prompts: jax.Array
    prompt_mask: jax.Array
    eval_prompts: jax.Array
    eval_mask: jax.Array


@dataclasses.dataclass(frozen=True)
class TokenCountDuel:
    """Pure-JAX tier-3 stand-in: left-padded prompts with masks, EOS-terminated responses, BT oracle."""

    batch_size: int = B
    pure_jax = True

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            batch_size=self.batch_size,
            prompt_length=LP,
            response_length=L,
            vocab_size=V,
            eval_batch_size=B_EVAL,
            eos_id=EOS,
            pad_id=PAD,
        )

    @property
    def default_params(self):
        tokens, mask = left_padded(POOL_TEXTS)
        return {"pool": jnp.asarray(tokens), "pool_mask": jnp.asarray(mask)}

    def _draw(self, key, params, n):
        index = jax.random.randint(key, (n,), 0, params["pool"].shape[0])
        return params["pool"][index], params["pool_mask"][index]

    def reset(self, key, params):
        k_eval, k_prompts = jax.random.split(key)
        eval_prompts, eval_mask = self._draw(k_eval, params, B_EVAL)
        prompts, mask = self._draw(k_prompts, params, self.batch_size)
        state = CountState(prompts, mask, eval_prompts, eval_mask)
        return state, Observation(prompts=prompts, prompt_mask=mask)

    def step(self, key, state, duel: Duel, params):
        k_label, k_next = jax.random.split(key)
        r = count_reward(duel.arms)  # [B, 2]
        won = jax.random.bernoulli(k_label, jax.nn.sigmoid(r[:, 0] - r[:, 1]))
        feedback = Feedback(preference=jnp.where(duel.query, won, False).astype(jnp.float32), queried=duel.query)
        best = jnp.full(r.shape[:1], float(L))
        info = {
            "regret": best - jnp.mean(r, axis=1),
            "weak_regret": best - jnp.max(r, axis=1),
            "strong_regret": best - jnp.min(r, axis=1),
        }
        prompts, mask = self._draw(k_next, params, self.batch_size)
        state = state.replace(prompts=prompts, prompt_mask=mask)
        return state, Observation(prompts=prompts, prompt_mask=mask), feedback, info

    def eval_observation(self, state, params):
        return Observation(prompts=state.eval_prompts, prompt_mask=state.eval_mask)

    def evaluate(self, key, state, obs, arms, params):
        return {"bai_regret": float(L) - count_reward(arms)}


@functools.cache
def env() -> TokenCountDuel:
    return TokenCountDuel()
