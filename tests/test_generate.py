"""cdb.models.generate: shared-prefix prefill, the early-stopping decode loop, bucketing, text in / text out.

Every sampled quantity is checked against an independent computation: teacher-forced
log-probabilities (one full forward pass), and decoding by full forward passes without a cache
(:func:`_uncached`: at step ``t`` the whole sequence through the model, the token drawn by
``sample_token`` with the same key) on the prompts repeated M times, for single policies and for
the mixtures of Nash-MD and DeRa.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.models import (
    Mixture,
    mixture_logits,
    positions_from_mask,
    response_token_logprobs,
    sample_token,
    token_logprobs,
)
from cdb.models.generate import (
    TRACE_COUNTS,
    Generation,
    _decode,
    _draw,
    bucket_length,
    decode,
    generate,
    generate_text,
    pad_prompts,
    prefill_shared,
)
from tests.llm_fixtures import tiny_pretrained

L = 10


@pytest.fixture(scope="module")
def model():
    return tiny_pretrained()


@pytest.fixture(scope="module")
def prompts(model):
    tokens, mask = model.encode(["hello there, how are you", "hi", "tell me a story"], chat=False)
    return tokens, mask  # [3, 24] left-padded


def _gen(model, prompts, key=0, **kw):
    tokens, mask = prompts
    kw.setdefault("pad_id", model.pad_id)
    return generate(jax.random.key(key), model.policy, model.params, tokens, mask, L, **kw)


def _uncached(model, params_list, tokens, mask, key, *, temperature, top_p=1.0, eos_id=None, pad_id=0, mix=None):
    """Decoding without a KV cache: at step t the whole sequence through each model, the mixed
    logits of the last real position, ``sample_token(split(key, L)[t], ...)``; EOS ends a row."""
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    rows, lp = tokens.shape
    seq = jnp.concatenate([tokens, jnp.zeros((rows, L), jnp.int32)], axis=1)
    seq_mask = jnp.concatenate([mask, jnp.zeros((rows, L), bool)], axis=1)
    forward = jax.jit(lambda p, s, m: model.policy.apply(p, s, m, positions_from_mask(m))[0])
    keys = jax.random.split(key, L)
    out, logps, done = [], [], np.zeros(rows, bool)
    for t in range(L):
        logits = [forward(p, seq, seq_mask)[:, lp + t - 1] for p in params_list]
        logits = logits[0] if mix is None else mixture_logits(mix[0], logits[0], logits[1], mix[1])
        token = np.where(done, pad_id, np.asarray(sample_token(keys[t], logits, temperature, top_p)))
        logps.append(np.where(done, 0.0, np.asarray(token_logprobs(logits, jnp.asarray(token)))))
        out.append(token)
        seq, seq_mask = seq.at[:, lp + t].set(jnp.asarray(token)), seq_mask.at[:, lp + t].set(jnp.asarray(~done))
        if eos_id is not None:
            done = done | (token == eos_id)
    return np.stack(out, 1), np.stack(logps, 1)


def test_matches_uncached_decoding_on_repeated_prompts_and_teacher_forced_logprobs(model, prompts):
    m = 3
    out = _gen(model, prompts, num_samples=m, temperature=1.0, eos_id=model.eos_id)
    assert isinstance(out, Generation)
    tokens, mask = prompts
    rep_tokens, rep_mask = jnp.repeat(tokens, m, axis=0), jnp.repeat(mask, m, axis=0)
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (3 * m, L)
    ref_tokens, ref_logps = _uncached(
        model,
        [model.params],
        rep_tokens,
        rep_mask,
        jax.random.key(0),
        temperature=1.0,
        eos_id=model.eos_id,
        pad_id=model.pad_id,
    )
    np.testing.assert_array_equal(out.tokens, ref_tokens)
    np.testing.assert_allclose(out.logprobs, ref_logps, atol=2e-5)
    forced = response_token_logprobs(model.policy, model.params, rep_tokens, rep_mask, out.tokens, out.mask)
    np.testing.assert_allclose(out.logprobs, forced, atol=2e-5)
    assert np.all(np.asarray(out.logprobs)[np.asarray(out.mask)] < 0)


def test_greedy_equals_argmax_of_full_forward_passes(model, prompts):
    out = _gen(model, prompts, num_samples=2, temperature=0.0)
    tokens, mask = map(jnp.asarray, prompts)
    lp = tokens.shape[1]
    # no cache: the whole sequence through the model at every step; slots not generated yet are
    # masked out (and causal attention never reads them), so one compiled forward pass serves all steps
    seq = jnp.concatenate([tokens, jnp.zeros((3, L), jnp.int32)], axis=1)
    seq_mask = jnp.concatenate([mask, jnp.zeros((3, L), bool)], axis=1)
    forward = jax.jit(lambda s, m: model.policy.apply(model.params, s, m, positions_from_mask(m))[0])
    for t in range(L):
        nxt = jnp.argmax(forward(seq, seq_mask)[:, lp + t - 1], axis=-1).astype(jnp.int32)
        seq, seq_mask = seq.at[:, lp + t].set(nxt), seq_mask.at[:, lp + t].set(True)
    np.testing.assert_array_equal(out.tokens, jnp.repeat(seq[:, lp:], 2, axis=0))
    assert bool(out.mask.all()) and int(out.steps) == L  # no EOS id: the loop runs L steps


def test_samples_of_one_prompt_share_the_prefix(model, prompts):
    m = 2  # the configuration of the greedy test, compiled once
    greedy = np.asarray(_gen(model, prompts, num_samples=m, temperature=0.0).tokens).reshape(3, m, L)
    assert (greedy == greedy[:, :1]).all()
    drawn = np.asarray(_gen(model, prompts, num_samples=m, temperature=1.0).tokens).reshape(3, m, L)
    for group in drawn:  # M draws of one prompt are different samples
        assert len({tuple(row) for row in group}) == m


def test_fixed_key_is_deterministic_and_keys_differ(model, prompts):
    a = _gen(model, prompts, key=5, temperature=1.0, top_p=0.9)
    b = _gen(model, prompts, key=5, temperature=1.0, top_p=0.9)
    c = _gen(model, prompts, key=6, temperature=1.0, top_p=0.9)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)


def test_eos_sets_mask_pads_and_stops_the_loop(model, prompts):
    free = np.asarray(_gen(model, prompts, temperature=0.0).tokens)
    eos = int(free[0, 3])  # a token row 0 emits greedily at position 3 (maybe earlier too)
    out = _gen(model, prompts, temperature=0.0, eos_id=eos)
    tokens, mask, logps = map(np.asarray, (out.tokens, out.mask, out.logprobs))
    ends = []
    for row in range(3):
        hits = np.flatnonzero(free[row] == eos)
        end = int(hits[0]) + 1 if hits.size else L  # tokens up to and including the first EOS
        ends.append(end)
        np.testing.assert_array_equal(tokens[row, :end], free[row, :end])
        assert mask[row, :end].all() and not mask[row, end:].any()
        assert (tokens[row, end:] == model.pad_id).all() and (logps[row, end:] == 0).all()
    assert ends[0] <= 4
    assert int(out.steps) == max(ends)


def test_loop_stops_after_one_step_when_every_row_ends_at_once(model, prompts):
    # A zero final-norm scale makes every logit 0, so greedy decoding emits token 0 first.
    params = jax.tree.map_with_path(
        lambda path, x: jnp.zeros_like(x) if jax.tree_util.keystr(path).startswith("['norm']") else x, model.params
    )
    tokens, mask = prompts
    out = generate(jax.random.key(0), model.policy, params, tokens, mask, L, temperature=0.0, eos_id=0, pad_id=7)
    assert int(out.steps) == 1
    np.testing.assert_array_equal(out.tokens[:, 0], 0)
    np.testing.assert_array_equal(out.tokens[:, 1:], 7)
    np.testing.assert_array_equal(out.mask, np.arange(L)[None, :].repeat(3, 0) == 0)
    np.testing.assert_allclose(out.logprobs[:, 0], -np.log(model.config.vocab_size), rtol=1e-6)


def test_left_padding_does_not_change_samples(model, prompts):
    tokens, mask = prompts
    wide_tokens, wide_mask = pad_prompts(tokens, mask, tokens.shape[1] + 9, model.pad_id)
    assert wide_tokens.shape == (3, tokens.shape[1] + 9) and not wide_mask[:, :9].any()
    for temperature in (0.0, 1.0):
        a = _gen(model, prompts, temperature=temperature)
        b = _gen(model, (wide_tokens, wide_mask), temperature=temperature)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-5)


_jit_draw, _jit_sample_token = jax.jit(_draw), jax.jit(sample_token)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 0.7), (0.7, 1.0), (1.3, 0.8), (1.0, 0.05)])
def test_fast_draw_is_sample_token(temperature, top_p):
    logits = 3.0 * jax.random.normal(jax.random.key(1), (64, 50))
    for k in range(3):
        key, args = jax.random.key(k), (jnp.float32(temperature), jnp.float32(top_p))
        np.testing.assert_array_equal(_jit_draw(key, logits, *args), _jit_sample_token(key, logits, *args))


def test_decode_donates_the_cache_without_changing_the_output(model, prompts):
    tokens, mask = prompts
    key, kw = jax.random.key(3), dict(temperature=1.0, eos_id=model.eos_id, pad_id=model.pad_id)
    state, logits = prefill_shared(model.policy, model.params, tokens, mask, L, 3)  # the first test's shapes
    donated_leaf = state.cache.keys[0]
    out, final, none = decode(key, model.policy, model.params, state, logits, L, **kw)
    assert none is None  # no mixture, no second state
    assert donated_leaf.is_deleted()  # the decode program took over the prefilled cache
    assert final.cache.keys[0].shape == donated_leaf.shape
    state2, logits2 = prefill_shared(model.policy, model.params, tokens, mask, L, 3)
    plain = jax.jit(_decode, static_argnums=(1, 5, 8, 9))  # the same loop without donation
    ref, _, _ = plain(
        key, model.policy, model.params, state2, logits2, L, 1.0, 1.0, model.eos_id, model.pad_id, None, None
    )
    assert not state2.cache.keys[0].is_deleted()
    for field in ("tokens", "logprobs", "mask", "steps"):
        np.testing.assert_array_equal(getattr(out, field), getattr(ref, field))
    # the final cache holds the fed tokens: one more decoder step from it continues the greedy path
    # the final state has fed every emitted token but the last
    np.testing.assert_array_equal(final.positions, state2.positions + out.steps - 1)
    assert int(final.cache.index) == tokens.shape[1] + int(out.steps) - 1


def test_generate_is_jittable_with_traced_temperature(model, prompts):
    tokens, mask = prompts

    @jax.jit
    def run(key, temperature, top_p):
        return generate(key, model.policy, model.params, tokens, mask, L, temperature=temperature, top_p=top_p)

    out = run(jax.random.key(0), 0.0, 1.0)
    np.testing.assert_array_equal(out.tokens, _gen(model, prompts, temperature=0.0).tokens)
    out = run(jax.random.key(2), 1.0, 0.9)
    np.testing.assert_array_equal(out.tokens, _gen(model, prompts, key=2, temperature=1.0, top_p=0.9).tokens)


@pytest.fixture(scope="module")
def other_params(model):
    return model.policy.init(jax.random.key(1))  # a second policy of the same model definition


@pytest.mark.parametrize("kind, weight", [("geometric", 0.3), ("dera", 1.4)])
def test_mixture_matches_uncached_mixture_decoding(model, prompts, other_params, kind, weight):
    tokens, mask = prompts
    out = _gen(model, prompts, num_samples=2, temperature=1.0, mixture=Mixture(other_params, weight, kind))
    rep_tokens, rep_mask = jnp.repeat(tokens, 2, axis=0), jnp.repeat(mask, 2, axis=0)
    ref_tokens, ref_logps = _uncached(
        model,
        [model.params, other_params],
        rep_tokens,
        rep_mask,
        jax.random.key(0),
        temperature=1.0,
        pad_id=model.pad_id,
        mix=(kind, weight),
    )
    np.testing.assert_array_equal(out.tokens, ref_tokens)
    np.testing.assert_allclose(out.logprobs, ref_logps, atol=2e-5)
    # the logprobs are the normalised mixture's: they differ from either policy's own
    alone = response_token_logprobs(model.policy, model.params, rep_tokens, rep_mask, out.tokens, out.mask)
    assert np.abs(np.asarray(alone) - np.asarray(out.logprobs)).max() > 1e-3


def test_mixture_edge_cases_reduce_to_one_policy(model, prompts, other_params):
    alone = _gen(model, prompts, num_samples=2, temperature=1.0)
    dera = _gen(model, prompts, num_samples=2, temperature=1.0, mixture=Mixture(other_params, 1.0, "dera"))
    np.testing.assert_array_equal(dera.tokens, alone.tokens)
    np.testing.assert_allclose(dera.logprobs, alone.logprobs, atol=1e-5)
    tokens, mask = prompts
    ref_greedy = generate(
        jax.random.key(0), model.policy, other_params, tokens, mask, L, num_samples=2, temperature=0.0
    )
    geo = _gen(model, prompts, num_samples=2, temperature=0.0, mixture=Mixture(other_params, 1.0, "geometric"))
    np.testing.assert_array_equal(geo.tokens, ref_greedy.tokens)
    np.testing.assert_allclose(geo.logprobs, ref_greedy.logprobs, atol=1e-5)
    with pytest.raises(ValueError, match="Mixture.kind"):
        Mixture(other_params, 0.5, "arithmetic")


def test_bucket_length():
    assert [bucket_length(n) for n in (0, 1, 16, 17, 32, 33, 100)] == [16, 16, 16, 32, 32, 64, 128]
    assert [bucket_length(n, minimum=1) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert bucket_length(70, maximum=90) == 90
    with pytest.raises(ValueError, match="maximum"):
        bucket_length(91, maximum=90)


def test_generate_text_buckets_prompts_and_does_not_recompile(model):
    key = jax.random.key(0)
    # chat prompts of 23-30 tokens -> 32 slots; 3 or 4 prompts -> 4 rows
    first = generate_text(model, ["hi", "hello", "hi there"], 6, temperature=0.0, key=key)
    before = dict(TRACE_COUNTS)
    second = generate_text(model, ["hey", "a longer one", "x", "yo"], 6, temperature=0.0, key=key)
    assert dict(TRACE_COUNTS) == before, "prompts within one bucket recompiled"
    assert len(first) == 3 and len(second) == 4
    # each text is the greedy response to its prompt (unbucketed, unpadded batch: left padding is invisible)
    tokens, mask = model.encode(["hey", "a longer one", "x", "yo"])
    out = generate(key, model.policy, model.params, tokens, mask, 6, temperature=0.0, eos_id=model.eos_id)
    assert second == model.decode(np.asarray(out.tokens), np.asarray(out.mask))


def test_pretrained_generate_is_generate_text(model):
    key = jax.random.key(3)
    texts = model.generate(["hi", "hello there"], 5, temperature=1.0, key=key, num_samples=2)
    assert texts == generate_text(model, ["hi", "hello there"], 5, temperature=1.0, key=key, num_samples=2)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)


def test_bad_input(model, prompts):
    tokens, mask = prompts
    args = (jax.random.key(0), model.policy, model.params, tokens, mask)
    with pytest.raises(ValueError, match="max_len=128.*at most 104 new tokens"):
        generate(*args, 105)
    for kw, field in [
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=2.0), "num_samples"),
    ]:
        with pytest.raises(ValueError, match=field):
            generate(*args, L, **kw)
    with pytest.raises(ValueError, match="prompts and prompt_mask"):
        generate(jax.random.key(0), model.policy, model.params, tokens, mask[:, 1:], L)
    with pytest.raises(ValueError, match="context of 128 tokens"):
        generate_text(model, ["hi"], 120, key=jax.random.key(0))
    with pytest.raises(ValueError, match="list of strings"):
        generate_text(model, "hi", 4, key=jax.random.key(0))
