"""cdb.sequences.score_candidates: K responses per prompt scored against one shared prompt pass.

The independent computation is one full forward pass of the model over each ``[prompt; response]``
row (:func:`cdb.models.response_token_logprobs`, no cache, the prompt repeated K times), for the
log-probabilities, their gradient and the hidden state at the last real token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tier3_fixtures import EOS, PAD, left_padded

from cdb.models import positions_from_mask, response_token_logprobs
from cdb.models.tiny import tiny_pretrained
from cdb.sequences import response_mask, score_candidates, score_responses

K, L = 3, 6


@pytest.fixture(scope="module")
def model():
    return tiny_pretrained()


@pytest.fixture(scope="module")
def batch():
    prompts, mask = left_padded(["hi", "tell me", "abc"], width=8)
    responses = jnp.asarray(
        [
            [[40, 41, EOS, PAD, PAD, PAD], [50, 51, 52, 53, 54, 55], [EOS, PAD, PAD, PAD, PAD, PAD]],
            [[60, 61, 62, EOS, PAD, PAD], [70, 71, 72, 73, 74, 75], [80, EOS, PAD, PAD, PAD, PAD]],
            [[90, 91, 92, 93, 94, EOS], [100, 101, 102, 103, 104, 105], [110, 111, EOS, PAD, PAD, PAD]],
        ],
        jnp.int32,
    )
    return jnp.asarray(prompts), jnp.asarray(mask), responses, response_mask(responses, EOS)


def _full_pass(model, params, prompts, mask, responses, rmask):
    """Per-token log-probs ``[B, K, L]`` by one uncached pass per row (prompts repeated K times)."""
    b = prompts.shape[0]
    flat = responses.reshape(b * K, L)
    lp = response_token_logprobs(
        model.policy, params, jnp.repeat(prompts, K, 0), jnp.repeat(mask, K, 0), flat, rmask.reshape(b * K, L)
    )
    return lp.reshape(b, K, L)


def test_shared_prefix_scores_equal_full_passes(model, batch):
    prompts, mask, responses, rmask = batch
    scored = jax.jit(score_candidates, static_argnums=0)(model.policy, model.params, prompts, responses, mask, rmask)
    expected = _full_pass(model, model.params, prompts, mask, responses, rmask)
    assert scored.logprob.shape == (3, K) and scored.token_logprob.shape == (3, K, L)
    np.testing.assert_allclose(scored.token_logprob, expected, atol=2e-5)
    np.testing.assert_allclose(scored.logprob, expected.sum(-1), atol=5e-5)
    np.testing.assert_array_equal(scored.length, rmask.sum(-1))
    # the feature: the hidden state at the last real token of [x; y], by one unpadded pass
    for b, k in [(0, 0), (0, 2), (1, 1), (2, 0)]:
        n = int(rmask[b, k].sum())
        seq = jnp.concatenate([prompts[b][mask[b]], responses[b, k, :n]])[None]
        hidden = model.policy.apply(model.params, seq, jnp.ones(seq.shape, bool))[1][0, -1]
        np.testing.assert_allclose(scored.last_hidden[b, k], hidden, rtol=1e-4, atol=1e-5)


def test_the_gradient_equals_the_full_pass_gradient(model, batch):
    prompts, mask, responses, rmask = batch
    weights = jnp.asarray([[1.0, -0.5, 2.0], [0.3, 1.0, -1.0], [0.5, 0.5, 0.5]])

    def shared(params):
        return jnp.sum(weights * score_candidates(model.policy, params, prompts, responses, mask, rmask).logprob)

    def full(params):
        return jnp.sum(weights * _full_pass(model, params, prompts, mask, responses, rmask).sum(-1))

    got, want = jax.jit(jax.grad(shared))(model.params), jax.jit(jax.grad(full))(model.params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)


def test_score_responses_is_one_candidate_per_prompt(model, batch):
    prompts, mask, responses, rmask = batch
    one = score_responses(model.policy, model.params, prompts, responses[:, 1], mask, rmask[:, 1])
    many = score_candidates(model.policy, model.params, prompts, responses, mask, rmask)
    np.testing.assert_allclose(one.logprob, many.logprob[:, 1], atol=2e-5)
    np.testing.assert_allclose(one.last_hidden, many.last_hidden[:, 1], rtol=1e-4, atol=1e-5)


def test_unpadded_tier_2_rows_need_no_masks(model):
    prompts = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    responses = jnp.asarray([[[7, 8], [9, 10]], [[11, 12], [13, 14]]], jnp.int32)
    scored = score_candidates(model.policy, model.params, prompts, responses)
    tokens = jnp.concatenate([jnp.repeat(prompts, 2, 0), responses.reshape(4, 2)], axis=1)
    logits = model.policy.apply(model.params, tokens, jnp.ones(tokens.shape, bool), positions_from_mask(tokens > -1))[0]
    logp = jax.nn.log_softmax(logits[:, 2:4], axis=-1)
    expected = jnp.take_along_axis(logp, responses.reshape(4, 2)[..., None], axis=-1)[..., 0].sum(-1)
    np.testing.assert_allclose(scored.logprob.reshape(4), expected, atol=2e-5)


def test_bad_shapes_are_named(model):
    with pytest.raises(ValueError, match=r"responses \[B, K, L\]"):
        score_candidates(model.policy, model.params, jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4), jnp.int32))
