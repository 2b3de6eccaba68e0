"""Alignment agents on tier-3 shapes: left-padded prompts, EOS-terminated responses, real tokenizers.

1. The tier-3 contract: every preset runs on ``LLMDuel`` through ``cdb.run`` (the micro model on
   the byte tokenizer, a tiny prompt set, a Bradley–Terry oracle on the share of ASCII letters;
   2 rounds, 1 seed, B = 2, L = 6): shapes, query counts, no NaN, one trace per function. The
   other tests use the pure-JAX stand-in :class:`tier3_fixtures.TokenCountDuel`.
2. Padding changes nothing: the same prompt with more left padding gets the same log-probs, the
   same π_ref hidden-state features and the same reward-model scores.
3. Tokens after EOS change nothing: not the policy's objective, not its gradient; SimPO's
   length normalisation uses the real lengths.
4. Gradient accumulation: the gradient accumulated over k micro-batches equals the full-batch
   gradient, computed independently (DPO + SAIL terms with uneven weights).
5. ``trainable``: frozen leaves stay bit-identical through an update and carry no optimiser state.
6. :class:`cdb.features.FrozenEncoderFeatures`: a fake bag-of-bytes encoder on the decoded text,
   through ``jax.pure_callback`` under ``jit`` and ``vmap``.
7. The prompt batch sharded over 4 forced CPU devices (``NamedSharding``): a jitted ``select`` +
   ``update`` equals the single-device one (in a subprocess).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tier3_fixtures as t3
from llm_fixtures import tiny_pretrained
from sequence_fixtures import CheckedAgent

import cdb
from cdb import agents
from cdb.agents.alignment import AlignmentAgent, TokenLayout, policy_optimizer
from cdb.ensemble import MLPEnsemble
from cdb.environments import LLMDuel, PromptSet, RewardOracle
from cdb.features import FrozenEncoderFeatures, reference_hidden_features
from cdb.losses import DAPLoss, sail_term
from cdb.objectives import PairBatch
from cdb.recommenders import DeRa
from cdb.sequences import generate_responses, response_mask, score_responses

ENSEMBLE = MLPEnsemble(num_members=3, hidden_sizes=(8,), steps_per_update=1, batch_size=8, buffer_capacity=32)
LAYOUT = TokenLayout(t3.LP, t3.L, t3.EOS, t3.PAD)


class BagOfBytes:
    """A fake sentence encoder: the normalised histogram of a text's UTF-8 bytes in 16 bins (byte % 16)."""

    calls = 0

    def embed(self, texts):
        BagOfBytes.calls += 1
        out = np.zeros((len(texts), 16), np.float32)
        for row, text in enumerate(texts):
            for byte in text.encode("utf-8"):
                out[row, byte % 16] += 1.0
        return out / np.maximum(out.sum(-1, keepdims=True), 1.0)


@functools.cache
def presets(ref) -> dict[str, AlignmentAgent]:
    """Every preset of cdb.agents on ``ref`` (once per reference: the runs reuse their programs)."""
    return {
        "offline_dpo": agents.offline_dpo(ref, budget=2),
        "frozen_sampler_dpo": agents.frozen_sampler_dpo(ref),
        # an optimiser with a schedule
        "online_dpo": agents.online_dpo(ref, optimizer=policy_optimizer(optax.linear_schedule(1e-3, 1e-4, 4))),
        # length-normalised: the real lengths
        "online_simpo": agents.online_dap(ref, loss=DAPLoss("simpo", beta=2.0)),
        # the ensemble on a frozen sentence encoder of the decoded text
        "sea_ee_ts": agents.sea(
            ref,
            num_candidates=3,
            rule="ee_ts",
            gamma=1.0,
            reward_model=ENSEMBLE,
            features=FrozenEncoderFeatures(BagOfBytes(), ref.tokenizer),
        ),
        # the ensemble on π_ref's last hidden state, with model labels from the first round
        "sea_bai_ts_mixed": agents.sea(
            ref, num_candidates=3, rule="bai_ts", gamma=0.5, burn_in=0, reward_model=ENSEMBLE
        ),
        "apl": agents.apl(ref, num_candidates=3),
        "xpo": agents.xpo(ref),
        "ee4llm": agents.ee4llm(ref, num_candidates=3, reward_model=ENSEMBLE, best_of_n=2),
        "nash_md": agents.nash_md(ref, recommender=DeRa(2.0)),
        "sail_pp": agents.sail(ref, variant="pp"),  # both 'pr' (oracle) and 'pp' (own labels) rows
        "sail_dp": agents.sail(ref, variant="dp", budget=2),
    }


PRESET_NAMES = tuple(presets(t3.micro_pretrained()))


# --------------------------------------------------------------------------------------------
# 1. Every preset through cdb.run
# --------------------------------------------------------------------------------------------

ROUNDS = 2


def letter_share(prompts, responses) -> list[float]:
    """A reward on the decoded text: the share of its characters that are ASCII letters."""
    return [sum(c.isascii() and c.isalpha() for c in text) / max(len(text), 1) for text in responses]


@functools.cache
def llm_duel() -> LLMDuel:
    """``LLMDuel`` around the micro model: one object, so π_ref's programs compile once."""
    return LLMDuel(
        t3.micro_pretrained(),
        PromptSet(list(t3.POOL_TEXTS), name="tiny"),
        RewardOracle(letter_share, scale=4.0, name="letters"),
        batch_size=t3.B,
        max_new_tokens=t3.L,
        eval_prompts=PromptSet(["ok?", "why?"], name="tiny-eval"),
        chat=False,
    )


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_runs_on_llm_duel(name):
    env = llm_duel()
    checked = CheckedAgent(presets(t3.micro_pretrained())[name], t3.B, t3.L, t3.V)
    chex.clear_trace_counter()
    results = cdb.run(checked, env, rounds=ROUNDS, seeds=1, eval_every=ROUNDS, progress=False)
    m = results.metrics
    np.testing.assert_array_equal(m["duels"], t3.B)
    np.testing.assert_array_equal(m["tokens_in_range"], 1)
    np.testing.assert_array_equal(m["queries"], m["marked_for_oracle"])
    if name in ("offline_dpo", "sail_dp"):  # budget 2 = the first round's pairs
        np.testing.assert_array_equal(m["queries"], [[2, 0]])
    for key, values in {**m, **results.eval_metrics}.items():
        assert np.all(np.isfinite(values)), f"{name}: {key} has NaN/inf"
    assert np.all((m["response_length"] >= 1) & (m["response_length"] <= t3.L))
    assert np.all((m["online_win_rate"] >= 0) & (m["online_win_rate"] <= 1))
    win = results.eval_metrics["win_rate"]
    assert win.shape == (1, 2) and np.all((win >= 0) & (win <= 1))


def test_presets_are_importable_from_cdb_agents():
    from cdb.agents import alignment_presets

    for name in alignment_presets.__all__:
        assert callable(getattr(alignment_presets, name))
    for name in ("sea", "online_dpo", "online_dap", "offline_dpo", "frozen_sampler_dpo", "apl", "xpo", "sail"):
        assert getattr(agents, name) is getattr(alignment_presets, name)


# --------------------------------------------------------------------------------------------
# 2-3. Padding and tokens after EOS
# --------------------------------------------------------------------------------------------


def _responses():
    """Two responses: one ends at EOS in the middle (then PAD), one has no EOS."""
    return jnp.asarray([[40, 41, t3.EOS, t3.PAD, t3.PAD, t3.PAD], [50, 51, 52, 53, 54, 55]], jnp.int32)


def test_more_left_padding_gives_the_same_scores_and_features():
    ref = tiny_pretrained()
    short, short_mask = t3.left_padded(["ab", "xyz"], width=3)
    long, long_mask = t3.left_padded(["ab", "xyz"], width=9)
    responses = _responses()
    rmask = response_mask(responses, t3.EOS)
    a = score_responses(ref.policy, ref.params, short, responses, short_mask, rmask)
    b = score_responses(ref.policy, ref.params, long, responses, long_mask, rmask)
    np.testing.assert_allclose(a.logprob, b.logprob, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.token_logprob, b.token_logprob, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.last_hidden, b.last_hidden, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a.length, [3.0, 6.0])
    # the feature is the hidden state at the last REAL token: the EOS of row 0, by an unpadded pass
    exact = ref.policy.apply(ref.params, jnp.asarray([[*short[0, 1:], 40, 41, t3.EOS]]))[1][0, -1]
    np.testing.assert_allclose(a.last_hidden[0], exact, rtol=1e-4, atol=1e-5)
    # the agent's reward scores (features -> ensemble) and the implicit reward's inputs agree too
    agent = agents.sea(tiny_pretrained(), num_candidates=3, reward_model=ENSEMBLE)
    state = agent.init(jax.random.key(0), t3.env().spec)
    np.testing.assert_allclose(
        agent.reward_scores(state, short, short_mask, responses[:, None], rmask[:, None]),
        agent.reward_scores(state, long, long_mask, responses[:, None], rmask[:, None]),
        rtol=1e-4,
        atol=1e-5,
    )
    # sampling: the same key gives the same responses and log-probs whatever the padding
    s = generate_responses(
        jax.random.key(1), ref.policy, ref.params, short, short_mask, t3.L, eos_id=t3.EOS, pad_id=t3.PAD
    )
    t = generate_responses(
        jax.random.key(1), ref.policy, ref.params, long, long_mask, t3.L, eos_id=t3.EOS, pad_id=t3.PAD
    )
    np.testing.assert_array_equal(s.tokens, t.tokens)
    np.testing.assert_allclose(s.logprobs, t.logprobs, rtol=1e-4, atol=1e-5)


def _pair_batch(chosen, rejected, prompts, prompt_mask, weight):
    return PairBatch(
        prompts=prompts,
        prompt_mask=prompt_mask,
        chosen=chosen,
        rejected=rejected,
        ref_chosen=jnp.asarray([-30.0, -31.0, -29.0, -33.0])[: prompts.shape[0]],
        ref_rejected=jnp.asarray([-32.0, -30.0, -30.5, -31.0])[: prompts.shape[0]],
        weight=weight,
        routes={"pr": weight, "pp": 1.0 - weight},
    )


def test_tokens_after_eos_change_neither_the_loss_nor_its_gradient():
    ref = tiny_pretrained()
    prompts, mask = t3.left_padded(["ab", "xyz"])
    chosen = _responses()
    rejected = chosen[::-1]
    garbage = chosen.at[0, 3:].set(jnp.asarray([7, 8, 9]))  # after row 0's EOS
    weight = jnp.ones(2)
    for name in ("online_dpo", "online_simpo", "sail_pp"):
        agent = presets(ref)[name]
        objective = jax.value_and_grad(agent.policy_objective, has_aux=True)
        (clean, _), g_clean = objective(ref.params, _pair_batch(chosen, rejected, prompts, mask, weight), LAYOUT)
        (dirty, _), g_dirty = objective(ref.params, _pair_batch(garbage, rejected, prompts, mask, weight), LAYOUT)
        assert float(clean) == pytest.approx(float(dirty), rel=1e-6), name
        chex.assert_trees_all_close(g_clean, g_dirty, rtol=1e-5, atol=1e-7)
    # SimPO divides by the real lengths: 3 (…EOS) and 6
    agent = presets(ref)["online_simpo"]
    batch = _pair_batch(chosen, rejected, prompts, mask, weight)
    loss, _ = agent.policy_objective(ref.params, batch, LAYOUT)
    lp = score_responses(ref.policy, ref.params, prompts, chosen, mask, response_mask(chosen, t3.EOS)).logprob
    lr = score_responses(ref.policy, ref.params, prompts, rejected, mask, response_mask(rejected, t3.EOS)).logprob
    lengths_c, lengths_r = np.array([3.0, 6.0]), np.array([6.0, 3.0])
    x = 2.0 * (np.asarray(lp) / lengths_c - np.asarray(lr) / lengths_r)
    assert float(loss) == pytest.approx(float(np.mean(np.log1p(np.exp(-x)))), rel=1e-5)


# --------------------------------------------------------------------------------------------
# 4. Gradient accumulation
# --------------------------------------------------------------------------------------------


def test_accumulated_gradient_equals_the_full_batch_gradient():
    """k = 2 micro-batches with uneven weights (3 of 4 pairs, 2 in the first half) vs one hand-written
    full-batch objective: DPO's weighted mean + SAIL's 'pr' and 'pp' terms on their own rows."""
    ref = tiny_pretrained()
    prompts, mask = t3.left_padded(["ab", "xyz", "hello", "q"])
    key_a, key_b = jax.random.split(jax.random.key(5))
    chosen = jax.random.randint(key_a, (4, t3.L), 0, 256).at[1, 2].set(t3.EOS)
    rejected = jax.random.randint(key_b, (4, t3.L), 0, 256).at[3, 4].set(t3.EOS)
    weight = jnp.asarray([1.0, 1.0, 0.0, 1.0])
    batch = _pair_batch(chosen, rejected, prompts, mask, weight)
    base = agents.sail(ref, variant="pr")
    accumulated = dataclasses.replace(base, gradient_accumulation=2)
    loss, _, grads = accumulated.policy_gradient(ref.params, batch, LAYOUT)

    def full(params):
        masks = (response_mask(chosen, t3.EOS), response_mask(rejected, t3.EOS))
        pc = score_responses(ref.policy, params, prompts, chosen, mask, masks[0]).logprob
        pr = score_responses(ref.policy, params, prompts, rejected, mask, masks[1]).logprob
        delta = (pc - batch.ref_chosen) - (pr - batch.ref_rejected)
        dpo = jnp.sum(weight * -jax.nn.log_sigmoid(0.1 * delta)) / jnp.sum(weight)
        sail = [
            sail_term(pc, pr, batch.ref_chosen, batch.ref_rejected, beta=0.1, coefficient=0.3, variant=v, weight=w)
            for v, w in batch.routes.items()
        ]
        return dpo + sum(sail)

    want_loss, want = jax.value_and_grad(full)(ref.params)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want)) > 1e-3
    chex.assert_trees_all_close(grads, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="gradient_accumulation=3"):
        dataclasses.replace(base, gradient_accumulation=3).policy_gradient(ref.params, batch, LAYOUT)


# --------------------------------------------------------------------------------------------
# 5. Trainable leaves
# --------------------------------------------------------------------------------------------


def _norms_only(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: "norm" in jax.tree_util.keystr(path), params)


def test_only_the_trainable_leaves_change():
    ref = tiny_pretrained()
    agent = agents.online_dpo(ref, trainable=_norms_only, optimizer=policy_optimizer(1e-2))
    env = t3.env()
    state = agent.init(jax.random.key(0), env.spec)
    _, obs = env.reset(jax.random.key(1), env.default_params)
    duel, _ = agent.select(jax.random.key(2), state, obs)
    feedback = cdb.types.Feedback(preference=jnp.asarray([1.0, 0.0]), queried=jnp.ones(2, bool))
    new, _ = jax.jit(agent.update)(jax.random.key(3), state, obs, duel, feedback)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.policy_params, state.policy_params)
    want = _norms_only(ref.params)
    assert jax.tree.leaves(want).count(True) == 5
    assert jax.tree.leaves(changed) == jax.tree.leaves(want)  # the norms moved, nothing else did
    # Adam's moments exist for the 5 norm scales only
    moments = [x for x in jax.tree.leaves(new.opt_state) if hasattr(x, "shape") and x.ndim >= 1]
    assert sum(x.size for x in moments) == 2 * sum(
        x.size for x, t in zip(jax.tree.leaves(ref.params), jax.tree.leaves(want), strict=True) if t
    )


# --------------------------------------------------------------------------------------------
# 6. Frozen sentence-encoder features
# --------------------------------------------------------------------------------------------


def test_frozen_encoder_features_embed_the_decoded_text():
    ref = tiny_pretrained()
    encoder = BagOfBytes()
    features = FrozenEncoderFeatures(encoder, ref.tokenizer, include_prompt=True, separator=" | ")
    prompts, mask = t3.left_padded(["ab", "xyz"])
    long, long_mask = t3.left_padded(["ab", "xyz"], width=8)
    responses = _responses()
    rmask = response_mask(responses, t3.EOS)
    # the text of the real tokens only (row 0 stops at its EOS), decoded token by token on the host
    texts = [
        "ab | " + ref.tokenizer.decode([40, 41]),
        "xyz | " + ref.tokenizer.decode([50, 51, 52, 53, 54, 55]),
    ]
    want = encoder.embed(texts)
    got = jax.jit(lambda p, m, y, r: features(None, p, y, prompt_mask=m, response_mask=r))(
        prompts, mask, responses, rmask
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # padding changes nothing; under vmap (cdb.run's seeds) each seed gets its own rows
    np.testing.assert_allclose(features(None, long, responses, prompt_mask=long_mask, response_mask=rmask), want)
    stacked = jax.vmap(lambda y: features(None, prompts, y, prompt_mask=mask, response_mask=rmask))(
        jnp.stack([responses, responses])
    )
    np.testing.assert_allclose(stacked, np.stack([want, want]), rtol=1e-6)
    assert reference_hidden_features is not features


# --------------------------------------------------------------------------------------------
# 7. A sharded prompt batch
# --------------------------------------------------------------------------------------------

SHARDED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import tier3_fixtures as t3
    from llm_fixtures import tiny_pretrained
    from cdb import agents
    from cdb.ensemble import MLPEnsemble
    from cdb.types import Feedback

    assert jax.device_count() == 4, jax.devices()
    ensemble = MLPEnsemble(num_members=3, hidden_sizes=(8,), steps_per_update=1, batch_size=8, buffer_capacity=32)
    agent = agents.sea(tiny_pretrained(), num_candidates=3, reward_model=ensemble)
    env = t3.TokenCountDuel(batch_size=4)
    state = agent.init(jax.random.key(0), env.spec)
    _, obs = env.reset(jax.random.key(1), env.default_params)
    feedback = Feedback(preference=jnp.asarray([1.0, 0.0, 1.0, 0.0]), queried=jnp.ones(4, bool))

    @jax.jit
    def round_(state, obs):
        duel, _ = agent.select(jax.random.key(2), state, obs)
        new, info = agent.update(jax.random.key(3), state, obs, duel, feedback)
        return duel.arms, new.policy_params, new.reward_model, info

    single = round_(state, obs)
    # Auto axes: XLA propagates the batch sharding into the sampler's caches and the losses
    mesh = jax.make_mesh((4,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    batch_sharding = NamedSharding(mesh, P("batch"))
    sharded_obs = jax.device_put(obs, batch_sharding)
    assert len(sharded_obs.prompts.sharding.device_set) == 4
    sharded = round_(state, sharded_obs)
    np.testing.assert_array_equal(np.asarray(sharded[0]), np.asarray(single[0]))
    # π_θ = π_ref in this first update, so every margin Δ is 0 up to rounding and the accuracy
    # 1[Δ > 0] is a step function of the rounding: it is left out
    for info in (sharded[3], single[3]):
        info.pop("preference_accuracy")
    for a, b in zip(jax.tree.leaves(sharded[1:]), jax.tree.leaves(single[1:]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    print("OK")
    """
)


def test_sharded_prompt_batch_equals_single_device():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env_vars = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED],
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
