"""Tests of cdb.models: the NNX decoder against a numpy reference, padding, KV cache, samplers."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cdb.models import (
    Mixture,
    Policy,
    TransformerConfig,
    dera_logits,
    generate,
    geometric_mixture_logits,
    mixture_logits,
    positions_from_mask,
    process_logits,
    response_logits,
    response_logprob,
    response_token_logprobs,
    token_logprobs,
)

VOCAB, LP, L = 12, 5, 6
BASE = dict(vocab_size=VOCAB, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=32, max_len=16)
# A larger init scale than HF's 0.02 gives peaked, well-separated logits (no near-ties in argmax).
CONFIG = TransformerConfig(**BASE, init_std=0.5)
UNTIED = TransformerConfig(**{**BASE, "num_layers": 1}, tie_embeddings=False, qkv_bias=True, init_std=0.5)
POLICY = Policy(CONFIG)


@functools.partial(jax.jit, static_argnums=0)
def _apply(policy, params, tokens, mask):
    return policy.apply(params, tokens, mask)


@pytest.fixture(scope="module")
def params():
    return jax.jit(POLICY.init)(jax.random.key(0))


@pytest.fixture(scope="module")
def ref_params():
    return jax.jit(POLICY.init)(jax.random.key(1))


@pytest.fixture(scope="module")
def prompts():
    """Three left-padded prompts with 5, 3 and 1 real tokens; pad slots hold junk tokens."""
    mask = jnp.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
    tokens = jnp.array([[3, 1, 4, 1, 5], [9, 9, 2, 6, 5], [7, 7, 7, 7, 3]], jnp.int32)
    return tokens, mask


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_model=-4), "d_model"),
        (dict(num_layers=0), "num_layers"),
        (dict(num_heads=0), "num_heads"),
        (dict(num_kv_heads=0), "num_kv_heads"),
        (dict(d_ff=0), "d_ff"),
        (dict(max_len=0), "max_len"),
        (dict(num_kv_heads=3), "num_kv_heads"),  # 3 does not divide 4 heads
        (dict(d_model=18), "d_model"),  # 18 is not a multiple of 4 heads
        (dict(d_model=12), "d_model"),  # head_dim 3 is odd: no rotary pairs
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(norm_eps=-1e-6), "norm_eps"),
        (dict(dtype=jnp.int32), "dtype"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(architecture="bert"), "architecture"),
        (dict(activation="relu"), "activation"),
        (dict(rotary_pct=0.0), "rotary_pct"),
        (dict(rotary_pct=0.3), "d_model"),  # int(4 * 0.3) = 1 rotated dimension: odd
        (dict(rope_scaling=(8.0, 4.0, 1.0, 8192)), "rope_scaling"),  # low_freq_factor > high_freq_factor
        (dict(lora_rank=-1), "lora_rank"),
        (dict(lora_rank=2, lora_alpha=0.0), "lora_alpha"),
        (dict(lora_targets=("lm_head",)), "lora_targets"),
        (dict(architecture="gpt2", lora_rank=2, lora_targets=("gate_proj",)), "lora_targets"),
    ],
)
def test_config_rejects_bad_values(change, field):
    with pytest.raises(ValueError, match=rf"TransformerConfig\.{field}="):
        TransformerConfig(**{**BASE, **change})


def test_gpt2_needs_no_rotary_pairs():
    config = TransformerConfig(**{**BASE, "d_model": 12}, architecture="gpt2")  # odd head_dim 3 is fine
    assert not config.uses_rope
    tree = nnx.to_pure_dict(Policy(config).abstract_params())
    assert tree["embed_positions"]["embedding"].shape == (16, 12)  # learned positions [max_len, D]
    assert "gate_proj" not in tree["layers"][0]["mlp"]


def test_config_is_hashable_and_policy_is_static():
    assert hash(Policy(TransformerConfig(**BASE))) == hash(Policy(TransformerConfig(**BASE)))
    assert Policy(TransformerConfig(**BASE)) == Policy(TransformerConfig(**BASE))
    assert CONFIG.head_dim == 4


# ------------------------------------------------------------------------------ parameters and shapes


def test_parameter_names_follow_the_llama_tree(params):
    tree = nnx.to_pure_dict(params)
    attn = tree["layers"][1]["self_attn"]
    assert attn["q_proj"]["kernel"].shape == (16, 16)
    assert attn["k_proj"]["kernel"].shape == (16, 8)  # 2 kv heads of size 4
    assert attn["v_proj"]["kernel"].shape == (16, 8)
    assert attn["o_proj"]["kernel"].shape == (16, 16)
    mlp = tree["layers"][0]["mlp"]
    assert mlp["gate_proj"]["kernel"].shape == (16, 32) and mlp["down_proj"]["kernel"].shape == (32, 16)
    assert tree["embed_tokens"]["embedding"].shape == (VOCAB, 16)
    assert set(tree) == {"embed_tokens", "layers", "norm"}  # tied: no lm_head module
    assert "bias" not in attn["q_proj"]
    abstract = nnx.to_pure_dict(POLICY.abstract_params())
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, tree)


def test_untied_config_has_lm_head_and_qkv_bias():
    tree = nnx.to_pure_dict(Policy(UNTIED).abstract_params())
    assert tree["lm_head"]["kernel"].shape == (16, VOCAB)
    assert tree["layers"][0]["self_attn"]["q_proj"]["bias"].shape == (16,)
    assert "bias" not in tree["layers"][0]["self_attn"]["o_proj"]


def test_output_shapes(params, prompts):
    tokens, mask = prompts
    logits, hidden = _apply(POLICY, params, tokens, mask)
    assert logits.shape == (3, LP, VOCAB) and logits.dtype == jnp.float32
    assert hidden.shape == (3, LP, 16)
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(hidden))


def test_positions_from_mask():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])


# ------------------------------------------------------------------------------ numpy reference


def _reference_forward(config: TransformerConfig, params, tokens, mask):
    """An independent numpy Llama forward (HF conventions: repeat_kv, rotate_half), one row at a time."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(params))
    hd, h_q, h_kv = config.head_dim, config.num_heads, config.num_kv_heads

    def rms(x, scale):
        return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + config.norm_eps) * scale

    def linear(x, layer):
        return x @ layer["kernel"] + layer.get("bias", 0.0)

    def rope(x, pos):  # x [T, heads, hd]
        inv = 1.0 / config.rope_theta ** (np.arange(0, hd, 2) / hd)
        ang = np.concatenate([pos[:, None] * inv, pos[:, None] * inv], axis=-1)[:, None, :]
        rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
        return x * np.cos(ang) + rot * np.sin(ang)

    out = []
    for row, row_mask in zip(np.asarray(tokens), np.asarray(mask), strict=True):
        real = row[row_mask.astype(bool)]  # left padding: drop it, positions start at 0
        t = len(real)
        pos = np.arange(t, dtype=np.float64)
        h = p["embed_tokens"]["embedding"][real]
        for i in range(config.num_layers):
            lyr = p["layers"][i]
            x = rms(h, lyr["input_layernorm"]["scale"])
            q = rope(linear(x, lyr["self_attn"]["q_proj"]).reshape(t, h_q, hd), pos)
            k = rope(linear(x, lyr["self_attn"]["k_proj"]).reshape(t, h_kv, hd), pos)
            v = linear(x, lyr["self_attn"]["v_proj"]).reshape(t, h_kv, hd)
            k, v = np.repeat(k, h_q // h_kv, axis=1), np.repeat(v, h_q // h_kv, axis=1)  # HF repeat_kv
            att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
            att = np.where(np.tril(np.ones((t, t), bool)), att, -np.inf)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            h = h + linear(np.einsum("hts,shd->thd", att, v).reshape(t, h_q * hd), lyr["self_attn"]["o_proj"])
            x = rms(h, lyr["post_attention_layernorm"]["scale"])
            gate = linear(x, lyr["mlp"]["gate_proj"])
            h = h + linear(gate / (1 + np.exp(-gate)) * linear(x, lyr["mlp"]["up_proj"]), lyr["mlp"]["down_proj"])
        h = rms(h, p["norm"]["scale"])
        out.append(h @ p["embed_tokens"]["embedding"].T if config.tie_embeddings else linear(h, p["lm_head"]))
    return out  # per row: logits of its real tokens [t_b, V]


@pytest.mark.parametrize("config", [CONFIG, UNTIED], ids=["tied-gqa", "untied-bias"])
def test_matches_numpy_reference(config, prompts):
    policy = Policy(config)
    params = policy.init(jax.random.key(5))
    if config.qkv_bias:  # zero-initialised biases would not test anything
        module = policy.module(params)
        for i, proj in enumerate((module.layers[0].self_attn.q_proj, module.layers[0].self_attn.k_proj)):
            proj.bias[...] = jax.random.normal(jax.random.key(10 + i), proj.bias.shape)
        params = nnx.state(module)
    tokens, mask = prompts
    logits, _ = _apply(policy, params, tokens, mask)
    for b, expected in enumerate(_reference_forward(config, params, tokens, mask)):
        got = np.asarray(logits[b])[np.asarray(mask[b])]
        np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ causality, padding, cache


def test_causality(params):
    tokens = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]], jnp.int32)
    changed = tokens.at[0, 5].set(11)
    a, _ = _apply(POLICY, params, tokens, jnp.ones_like(tokens, bool))
    b, _ = _apply(POLICY, params, changed, jnp.ones_like(tokens, bool))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert np.abs(np.asarray(a[:, 5:] - b[:, 5:])).max() > 1e-3


def test_left_padding_gives_the_same_logits_as_no_padding(params):
    real = jnp.array([4, 2, 9, 1, 7], jnp.int32)
    pads = (0, 1, 3)
    tokens = jnp.stack(
        [jnp.concatenate([jnp.full((k,), 8 + k, jnp.int32), real, jnp.zeros(3 - k, jnp.int32)]) for k in pads]
    )
    # rows: k left pads, the 5 real tokens, then 3 − k filler tokens; the mask is 1 on the real tokens only
    mask = jnp.stack([jnp.arange(8) >= k for k in pads]) & jnp.stack([jnp.arange(8) < k + 5 for k in pads])
    logits, _ = _apply(POLICY, params, tokens, mask)
    for row, k in enumerate(pads):
        np.testing.assert_allclose(logits[row, k : k + 5], logits[0, :5], atol=1e-5)
    # and the pad token values are irrelevant
    other = tokens.at[2, :3].set(0)
    logits2, _ = _apply(POLICY, params, other, mask)
    np.testing.assert_allclose(logits2[2, 3:8], logits[2, 3:8], atol=1e-6)


@jax.jit
def _incremental(params, tokens, mask):
    """Prefill 4 tokens, then a chunk of 2, then one token at a time, against one preallocated cache."""
    cache = POLICY.init_cache(tokens.shape[0], tokens.shape[1])
    count = jnp.zeros(tokens.shape[0], jnp.int32)
    out = []
    for lo, hi in [(0, 4), (4, 6)] + [(t, t + 1) for t in range(6, tokens.shape[1])]:
        m = mask[:, lo:hi]
        pos = count[:, None] + jnp.maximum(jnp.cumsum(m, axis=1) - 1, 0)
        logits, _, cache = POLICY.apply_cached(params, tokens[:, lo:hi], m, pos, cache)
        count = count + jnp.sum(m, axis=1)
        out.append(logits)
    return jnp.concatenate(out, axis=1), cache


def test_kv_cache_matches_full_forward(params):
    tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [0, 0, 0, 7, 1, 8, 2, 8, 1, 8]], jnp.int32)
    mask = jnp.array([[1] * 10, [0, 0, 0] + [1] * 7], bool)
    full, _ = _apply(POLICY, params, tokens, mask)
    incremental, cache = _incremental(params, tokens, mask)
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(incremental)[real], np.asarray(full)[real], atol=1e-5)
    assert int(cache.index) == 10
    np.testing.assert_array_equal(cache.mask, mask)


def test_cache_size_is_bounded_by_max_len():
    with pytest.raises(ValueError, match="size"):
        POLICY.init_cache(2, CONFIG.max_len + 1)


# ------------------------------------------------------------------------------ log-probs and sampling
# (the sampler itself, cdb.models.generate, is checked against uncached decoding in test_generate.py)


def test_greedy_sampling_equals_stepwise_argmax(params, prompts):
    tokens, mask = prompts
    out = generate(jax.random.key(3), POLICY, params, tokens, mask, L, temperature=0.0)
    # independent: full forward passes over [prompt; response so far]; causality makes the
    # not-yet-generated slots (zeros) irrelevant to the logits read at position Lp - 1 + t.
    seq = jnp.concatenate([tokens, jnp.zeros((3, L), jnp.int32)], axis=1)
    full_mask = jnp.concatenate([mask, jnp.ones((3, L), bool)], axis=1)
    for t in range(L):
        logits, _ = _apply(POLICY, params, seq, full_mask)
        seq = seq.at[:, LP + t].set(jnp.argmax(logits[:, LP - 1 + t], axis=-1))
    np.testing.assert_array_equal(out.tokens, seq[:, LP:])
    assert out.tokens.dtype == jnp.int32 and out.tokens.shape == (3, L)
    assert bool(jnp.all(out.mask))


def test_sampler_logprobs_equal_teacher_forced_logprobs(params, prompts):
    tokens, mask = prompts
    out = generate(jax.random.key(4), POLICY, params, tokens, mask, L, temperature=1.0)
    lp = response_token_logprobs(POLICY, params, tokens, mask, out.tokens, out.mask)
    assert lp.shape == (3, L)
    np.testing.assert_allclose(lp, out.logprobs, atol=1e-5)
    np.testing.assert_allclose(response_logprob(POLICY, params, tokens, mask, out.tokens), lp.sum(-1), atol=1e-5)
    assert np.all(np.asarray(out.logprobs) < 0)
    # logprobs are untempered: a tempered draw still reports log softmax(h), not of h / T
    hot = generate(jax.random.key(4), POLICY, params, tokens, mask, L, temperature=2.5, top_p=0.9)
    np.testing.assert_allclose(
        response_token_logprobs(POLICY, params, tokens, mask, hot.tokens), hot.logprobs, atol=1e-5
    )


def test_eos_emits_pad_and_masks(params, prompts):
    tokens, mask = prompts
    greedy = generate(jax.random.key(0), POLICY, params, tokens, mask, L, temperature=0.0)
    eos = int(greedy.tokens[0, 1])
    out = generate(jax.random.key(0), POLICY, params, tokens, mask, L, temperature=0.0, eos_id=eos, pad_id=0)
    g = np.asarray(greedy.tokens)
    for b in range(3):
        hits = np.flatnonzero(g[b] == eos)
        stop = hits[0] + 1 if hits.size else L  # the EOS itself is kept
        np.testing.assert_array_equal(out.tokens[b, :stop], g[b, :stop])
        np.testing.assert_array_equal(out.tokens[b, stop:], 0)
        np.testing.assert_array_equal(out.mask[b], np.arange(L) < stop)
        np.testing.assert_array_equal(out.logprobs[b, stop:], 0.0)
    assert not bool(out.mask[0, 2])  # row 0 stopped at step 1 by construction
    lp = response_token_logprobs(POLICY, params, tokens, mask, out.tokens, out.mask)
    np.testing.assert_allclose(lp, out.logprobs, atol=1e-5)


def test_top_p_tiny_is_greedy(params, prompts):
    tokens, mask = prompts
    greedy = generate(jax.random.key(7), POLICY, params, tokens, mask, L, temperature=0.0)
    nucleus = generate(jax.random.key(7), POLICY, params, tokens, mask, L, temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(nucleus.tokens, greedy.tokens)


def test_process_logits_hand_made():
    logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
    kept = lambda p: np.isfinite(np.asarray(process_logits(logits, 1.0, p)))[0].tolist()  # noqa: E731
    assert kept(0.4) == [True, False, False, False]
    assert kept(0.75) == [True, False, True, False]
    assert kept(0.85) == [True, False, True, True]
    assert kept(1.0) == [True, True, True, True]
    np.testing.assert_allclose(process_logits(logits, 2.0, 1.0), logits / 2.0, rtol=1e-6)


def test_same_key_same_samples_and_jit(params, prompts):
    tokens, mask = prompts
    a = generate(jax.random.key(11), POLICY, params, tokens, mask, L)
    b = generate(jax.random.key(11), POLICY, params, tokens, mask, L)
    c = generate(jax.random.key(12), POLICY, params, tokens, mask, L)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)

    @jax.jit
    def rollout(key, params):  # the samplers nest inside a user's jit (e.g. an agent step)
        out = generate(key, POLICY, params, tokens, mask, L)
        return out, response_token_logprobs(POLICY, params, tokens, mask, out.tokens)

    inner, lp = rollout(jax.random.key(11), params)
    np.testing.assert_array_equal(inner.tokens, a.tokens)
    np.testing.assert_allclose(lp, a.logprobs, atol=1e-5)


def test_response_logprob_is_differentiable(params, prompts):
    tokens, mask = prompts
    responses = jnp.array([[1, 2, 3, 4, 5, 6]] * 3, jnp.int32)
    grads = jax.grad(lambda p: response_logprob(POLICY, p, tokens, mask, responses).sum())(params)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_sampling_rejects_too_long_sequences(params, prompts):
    tokens, mask = prompts
    with pytest.raises(ValueError, match="max_len"):
        generate(jax.random.key(0), POLICY, params, tokens, mask, CONFIG.max_len)


# ------------------------------------------------------------------------------ mixtures


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_geometric_mixture_and_dera_hand_computed():
    a = np.array([[[1.0, 0.0, -1.0], [2.0, 2.0, 0.0]]], np.float32)  # [1, 2, 3]
    b = np.array([[[0.0, 3.0, 0.0], [-1.0, 0.5, 1.0]]], np.float32)
    # geometric, β = 0.25: 0.75·log_softmax(a) + 0.25·log_softmax(b)
    la = np.log(np.exp(a) / np.exp(a).sum(-1, keepdims=True))
    lb = np.log(np.exp(b) / np.exp(b).sum(-1, keepdims=True))
    np.testing.assert_allclose(geometric_mixture_logits(a, b, 0.25), 0.75 * la + 0.25 * lb, rtol=1e-5, atol=1e-6)
    # first entry by hand: log_softmax(a)[0,0,0] = 1 − log(e + 1 + 1/e) = −0.40760596
    #                      log_softmax(b)[0,0,0] = 0 − log(2 + e³)       = −3.09492447
    expected = 0.75 * -0.40760596 + 0.25 * -3.09492447
    np.testing.assert_allclose(geometric_mixture_logits(a, b, 0.25)[0, 0, 0], expected, rtol=1e-5)
    # the normalised mixture is ∝ π_a^{0.75} π_b^{0.25}
    mix = np.exp(_log_softmax(geometric_mixture_logits(a, b, 0.25)))
    pa, pb = np.exp(la), np.exp(lb)
    unnorm = pa**0.75 * pb**0.25
    np.testing.assert_allclose(mix, unnorm / unnorm.sum(-1, keepdims=True), rtol=1e-5)
    # DeRa, λ = 1.5 (extrapolation): 1.5·a − 0.5·b
    np.testing.assert_allclose(dera_logits(a, b, 1.5), 1.5 * a - 0.5 * b, rtol=1e-6)
    np.testing.assert_allclose(dera_logits(a, b, 0.5)[0, 1], [0.5, 1.25, 0.5], rtol=1e-6)
    # edge cases reduce to one policy
    np.testing.assert_allclose(_log_softmax(geometric_mixture_logits(a, b, 0.0)), la, atol=1e-5)
    np.testing.assert_allclose(_log_softmax(geometric_mixture_logits(a, b, 1.0)), lb, atol=1e-5)
    np.testing.assert_array_equal(dera_logits(a, b, 1.0), a)
    np.testing.assert_array_equal(dera_logits(a, b, 0.0), b)
    with pytest.raises(ValueError, match="mixture"):
        mixture_logits("arithmetic", a, b, 0.5)


@pytest.mark.parametrize("mixture, weight", [("geometric", 0.3), ("dera", 1.4)])
def test_mixture_sampler_logprobs_match_teacher_forced_mixture(params, ref_params, prompts, mixture, weight):
    tokens, mask = prompts
    out = generate(jax.random.key(9), POLICY, params, tokens, mask, L, mixture=Mixture(ref_params, weight, mixture))
    la = response_logits(POLICY, params, tokens, mask, out.tokens)
    lb = response_logits(POLICY, ref_params, tokens, mask, out.tokens)
    expected = token_logprobs(mixture_logits(mixture, la, lb, weight), out.tokens)
    np.testing.assert_allclose(out.logprobs, expected, atol=1e-5)
    # the mixture differs from either policy alone
    assert np.abs(np.asarray(expected) - np.asarray(token_logprobs(la, out.tokens))).max() > 1e-3


def test_remat_recomputes_the_same_gradient(params, prompts):
    """``remat`` trades memory for compute only: the same loss and gradient."""
    tokens, mask = prompts
    responses = jnp.array([[1, 2, 3, 4, 5, 6]] * 3, jnp.int32)
    remat = Policy(dataclasses.replace(CONFIG, remat=True))

    def grad(policy):
        return jax.jit(jax.value_and_grad(lambda p: response_logprob(policy, p, tokens, mask, responses).sum()))(params)

    (value, grads), (value_r, grads_r) = grad(POLICY), grad(remat)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r), strict=True):
        np.testing.assert_allclose(g_r, g, rtol=1e-4, atol=1e-5)  # the recomputed forward may round differently
    with pytest.raises(ValueError, match="remat"):
        TransformerConfig(**BASE, remat="yes")
