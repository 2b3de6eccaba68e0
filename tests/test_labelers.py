"""Labelers (which pairs go to the oracle, which are labelled by the agent's model) on hand-made tensors.

Scores are ``[B, E, M]`` (prompts, ensemble members, candidates), selector pairs ``[B, 2]``.
Where a labeler draws a random member, the scores are built so that every member leads to a
distinguishable outcome; the tests then check the outcome belongs to *some* member and that
every member is drawn, without depending on how the labeler splits its key.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.labelers import EntropyQueries, LabelerInputs, Labels, MixedLabeler, OracleLabeler, QueryBudget


def _label(labeler, key, pairs, scores, policy_logprob=None, queries_so_far=None):
    """``labeler(key, LabelerInputs(...))``, the one way every labeler is called."""
    return labeler(key, LabelerInputs(pairs, scores, policy_logprob, queries_so_far))


KEY = jax.random.key(0)


def _pairs(batch, pair=(0, 1)):
    return jnp.tile(jnp.asarray(pair, jnp.int32), (batch, 1))


def _np(labels: Labels):
    return {k: np.asarray(getattr(labels, k)) for k in ("pairs", "query", "model_label", "model_trained")}


# --- OracleLabeler -----------------------------------------------------------------------------


def test_oracle_labeler_queries_every_pair_unchanged():
    pairs = jnp.array([[0, 1], [2, 0], [1, 2]], jnp.int32)
    out = _np(_label(OracleLabeler(), KEY, pairs, jnp.zeros((3, 1, 3))))
    np.testing.assert_array_equal(out["pairs"], pairs)
    np.testing.assert_array_equal(out["query"], True)
    np.testing.assert_array_equal(out["model_trained"], False)
    np.testing.assert_array_equal(out["model_label"], 0.0)
    assert out["query"].dtype == np.bool_ and out["pairs"].dtype == np.int32
    assert not OracleLabeler.uses_model_labels


# --- QueryBudget -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "so_far, expected",
    [(0, [1, 1, 1, 1]), (3, [1, 1, 0, 0]), (4, [1, 0, 0, 0]), (5, [0, 0, 0, 0]), (11, [0, 0, 0, 0])],
)
def test_query_budget_queries_the_first_pairs_only(so_far, expected):
    out = _np(_label(QueryBudget(5), KEY, _pairs(4), jnp.zeros((4, 1, 2)), None, jnp.int32(so_far)))
    np.testing.assert_array_equal(out["query"], np.asarray(expected, bool))
    np.testing.assert_array_equal(out["model_trained"], False)
    np.testing.assert_array_equal(out["pairs"], _pairs(4))


def test_query_budget_across_rounds_spends_exactly_the_budget():
    labeler = jax.jit(QueryBudget(10))  # the count of earlier queries is traced, as inside an agent
    so_far, per_round = jnp.int32(0), []
    for _ in range(5):
        query = _label(labeler, KEY, _pairs(4), jnp.zeros((4, 1, 2)), None, so_far).query
        per_round.append(int(query.sum()))
        so_far = so_far + query.sum()
    assert per_round == [4, 4, 2, 0, 0]


# --- MixedLabeler ------------------------------------------------------------------------------

# Three members over M = 4 candidates; each member's (argmax, argmin) pair names it.
MEMBER_SCORES = jnp.array(
    [
        [3.0, 1.0, 2.0, 0.0],  # member 0: best 0, worst 3
        [0.0, 3.0, 1.0, 2.0],  # member 1: best 1, worst 0
        [1.0, 0.0, 3.0, 2.0],  # member 2: best 2, worst 1
    ]
)
BEST_WORST = {(0, 3), (1, 0), (2, 1)}


def _tiled(scores, batch):
    return jnp.tile(scores[None], (batch, 1, 1))


def test_mixed_gamma_zero_labels_every_pair_with_a_sampled_members_best_and_worst():
    batch = 600
    selected = _pairs(batch, (3, 2))  # not any member's (best, worst) pair
    out = _np(_label(MixedLabeler(0.0, "best_worst"), KEY, selected, _tiled(MEMBER_SCORES, batch)))
    np.testing.assert_array_equal(out["query"], False)  # no queries at all
    np.testing.assert_array_equal(out["model_trained"], True)
    np.testing.assert_array_equal(out["model_label"], 1.0)  # the first arm (argmax) is preferred
    played = [tuple(p) for p in out["pairs"]]
    assert set(played) == BEST_WORST  # some member's (argmax, argmin), and every member is drawn
    for pair in BEST_WORST:
        assert abs(played.count(pair) / batch - 1 / 3) < 0.07


def test_mixed_gamma_one_sends_every_selected_pair_to_the_oracle():
    batch = 50
    selected = jnp.asarray(
        np.random.default_rng(0).permuted(np.tile([0, 1, 2, 3], (batch, 1)), axis=1)[:, :2], jnp.int32
    )
    for model_pair in ("best_worst", "selected"):
        out = _np(_label(MixedLabeler(1.0, model_pair), KEY, selected, _tiled(MEMBER_SCORES, batch)))
        np.testing.assert_array_equal(out["query"], True)
        np.testing.assert_array_equal(out["pairs"], selected)
        np.testing.assert_array_equal(out["model_trained"], False)
        np.testing.assert_array_equal(out["model_label"], 0.0)


def test_mixed_queries_a_gamma_fraction_and_never_model_labels_a_query():
    batch, gamma = 4000, 0.3
    selected = _pairs(batch, (3, 2))
    out = _np(_label(MixedLabeler(gamma, "best_worst"), KEY, selected, _tiled(MEMBER_SCORES, batch)))
    query = out["query"]
    assert abs(query.mean() - gamma) < 0.03
    np.testing.assert_array_equal(out["pairs"][query], selected[query])  # the oracle sees the selector's pair
    np.testing.assert_array_equal(out["model_label"][query], 0.0)
    np.testing.assert_array_equal(out["model_trained"], ~query)  # every member here is informative
    assert {tuple(p) for p in out["pairs"][~query]} == BEST_WORST


def test_mixed_selected_labels_by_the_sampled_members_order():
    # Pair (0, 1). Block A: members 0 and 1 prefer candidate 0, member 2 prefers candidate 1.
    # Block B: every member prefers candidate 1.
    block_a = jnp.array([[1.0, 0.0, 5.0], [2.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    block_b = jnp.array([[0.0, 1.0, 2.0], [-3.0, 2.0, 0.0], [0.5, 0.6, 0.0]])
    n = 3000
    scores = jnp.concatenate([_tiled(block_a, n), _tiled(block_b, n)])
    selected = _pairs(2 * n, (0, 1))
    out = _np(_label(MixedLabeler(0.0, "selected"), KEY, selected, scores))
    np.testing.assert_array_equal(out["pairs"], selected)  # the selector's pair is kept
    np.testing.assert_array_equal(out["query"], False)
    np.testing.assert_array_equal(out["model_trained"], True)
    assert set(np.unique(out["model_label"][:n])) == {0.0, 1.0}
    assert abs(out["model_label"][:n].mean() - 2 / 3) < 0.03  # 2 of the 3 members prefer the first arm
    np.testing.assert_array_equal(out["model_label"][n:], 0.0)  # unanimous: the second arm


@pytest.mark.parametrize("model_pair", ["best_worst", "selected"])
def test_mixed_all_tied_candidates_are_not_model_trained(model_pair):
    batch = 40
    selected = _pairs(batch, (2, 1))
    out = _np(_label(MixedLabeler(0.0, model_pair), KEY, selected, jnp.ones((batch, 3, 4))))
    np.testing.assert_array_equal(out["query"], False)
    np.testing.assert_array_equal(out["model_trained"], False)  # nothing to learn from a tie
    np.testing.assert_array_equal(out["pairs"], selected)  # a valid pair is still played


def test_mixed_tie_on_the_selected_pair_only_is_not_model_trained():
    scores = jnp.array([[[1.0, 1.0, 0.0]], [[2.0, 1.0, 0.0]]])  # E = 1: row 0 ties on (0, 1), row 1 does not
    out = _np(_label(MixedLabeler(0.0, "selected"), KEY, _pairs(2, (0, 1)), scores))
    np.testing.assert_array_equal(out["model_trained"], [False, True])
    np.testing.assert_array_equal(out["model_label"], [0.0, 1.0])


def test_mixed_sampled_labels_follow_the_members_bradley_terry_probability():
    batch = 4000
    scores = _tiled(jnp.array([[math.log(3.0), 0.0]]), batch)  # σ(log 3) = 0.75
    out = _np(_label(MixedLabeler(0.0, "selected", label_mode="sample"), KEY, _pairs(batch), scores))
    np.testing.assert_array_equal(out["model_trained"], True)
    assert abs(out["model_label"].mean() - 0.75) < 0.03
    with pytest.raises(ValueError, match="label_mode"):
        MixedLabeler(0.5, "best_worst", label_mode="sample")


def test_mixed_labeler_is_deterministic_in_its_key():
    scores, selected = _tiled(MEMBER_SCORES, 64), _pairs(64, (3, 2))
    labeler = MixedLabeler(0.5)
    a, b = _np(_label(labeler, KEY, selected, scores)), _np(_label(labeler, KEY, selected, scores))
    c = _np(_label(labeler, jax.random.key(1), selected, scores))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["query"], c["query"])


# --- MixedLabeler as the authors run it: a fixed count after a burn-in --------------------------


@pytest.mark.parametrize("gamma, batch, k", [(0.7, 16, 4), (0.7, 10, 3), (0.5, 4, 2), (0.0, 5, 5), (1.0, 8, 0)])
def test_fixed_count_model_labels_the_floor_of_one_minus_gamma_times_b(gamma, batch, k):
    """⌊(1 − γ)·B⌋ exactly (Oat's int(B · ratio)); 4.8 → 4 and, on decimals, (1 − 0.7)·10 → 3."""
    labeler = MixedLabeler(gamma, draw="fixed_count")
    assert labeler.model_labelled_count(batch) == k
    scores, selected = _tiled(MEMBER_SCORES, batch), _pairs(batch, (3, 2))
    for seed in range(5):
        out = _np(_label(labeler, jax.random.key(seed), selected, scores))
        assert int((~out["query"]).sum()) == k
        np.testing.assert_array_equal(out["model_trained"], ~out["query"])  # every member is informative here
        np.testing.assert_array_equal(out["pairs"][out["query"]], selected[out["query"]])
        assert {tuple(p) for p in out["pairs"][~out["query"]]} <= BEST_WORST


def test_fixed_count_draws_a_uniformly_random_subset_of_the_prompts():
    """B = 4, 2 model-labelled: each of the C(4, 2) = 6 subsets with probability 1/6."""
    batch, draws = 4, 3000
    labeler = jax.jit(MixedLabeler(0.5, draw="fixed_count").__call__)
    scores, selected = _tiled(MEMBER_SCORES, batch), _pairs(batch, (3, 2))
    subsets = [
        tuple(np.flatnonzero(~np.asarray(_label(labeler, k, selected, scores).query)))
        for k in jax.random.split(jax.random.key(3), draws)
    ]
    assert {len(s) for s in subsets} == {2}
    counts = np.array([subsets.count(s) for s in sorted(set(subsets))])
    assert len(counts) == 6
    np.testing.assert_allclose(counts / draws, 1 / 6, atol=0.025)  # s.d. of each frequency ≈ 0.007


@pytest.mark.parametrize("draw", ["fixed_count", "bernoulli"])
def test_burn_in_rounds_send_every_pair_to_the_oracle(draw):
    """Rounds played in order with the queries accumulated as an agent does: the first `burn_in`
    rounds are all oracle pairs, then the mixing starts (exactly B − ⌊(1 − γ)B⌋ queries a round for
    'fixed_count')."""
    batch, burn_in, rounds = 16, 5, 12
    labeler = MixedLabeler(0.7, draw=draw, burn_in=burn_in)
    step = jax.jit(lambda key, *args: _label(labeler, key, *args))
    scores, selected = _tiled(MEMBER_SCORES, batch), _pairs(batch, (3, 2))
    so_far, per_round = jnp.zeros((), jnp.int32), []
    for t in range(rounds):
        out = step(jax.random.key(t), selected, scores, None, so_far)
        per_round.append(int(out.query.sum()))
        if t < burn_in:
            np.testing.assert_array_equal(np.asarray(out.pairs), np.asarray(selected))
            np.testing.assert_array_equal(np.asarray(out.model_trained), False)
        so_far = so_far + out.query.sum()
    assert per_round[:burn_in] == [batch] * burn_in
    if draw == "fixed_count":
        assert per_round[burn_in:] == [batch - 4] * (rounds - burn_in)
    else:
        assert sum(per_round[burn_in:]) < batch * (rounds - burn_in)  # 7 rounds of Bernoulli(0.7) draws


def test_burn_in_needs_the_query_count():
    with pytest.raises(ValueError, match="queries_so_far"):
        _label(MixedLabeler(0.7, burn_in=2), KEY, _pairs(4), _tiled(MEMBER_SCORES, 4))


@pytest.mark.parametrize(
    "kwargs, field", [({"draw": "poisson"}, "draw"), ({"burn_in": -1}, "burn_in"), ({"burn_in": 1.5}, "burn_in")]
)
def test_mixed_labeler_rejects_bad_mixing(kwargs, field):
    with pytest.raises(ValueError, match=f"MixedLabeler.{field}="):
        MixedLabeler(0.7, **kwargs)


# --- EntropyQueries ----------------------------------------------------------------------------

# Ĥ = −mean_m log π(y_m|x) per prompt: [1, 4, 2, 0.5, 3.5] → order of entropy: 1, 4, 2, 0, 3.
LOGPROB = jnp.array([[-1.0, -1.0], [-5.0, -3.0], [-2.0, -2.0], [-0.5, -0.5], [-3.0, -4.0]])


@pytest.mark.parametrize(
    "fraction, queried",
    [(0.1, [1]), (0.2, [1]), (0.4, [1, 4]), (0.5, [1, 4, 2]), (0.8, [1, 4, 2, 0]), (1.0, [0, 1, 2, 3, 4])],
)
def test_entropy_queries_take_the_highest_entropy_prompts(fraction, queried):
    pairs = _pairs(5)
    out = _np(_label(EntropyQueries(fraction), KEY, pairs, jnp.zeros((5, 1, 2)), LOGPROB))
    expected = np.zeros(5, bool)
    expected[queried] = True
    np.testing.assert_array_equal(out["query"], expected)
    assert out["query"].sum() == math.ceil(fraction * 5 - 1e-9)
    np.testing.assert_array_equal(out["pairs"], pairs)
    np.testing.assert_array_equal(out["model_trained"], False)  # the others are neither queried nor learnt from


def test_entropy_queries_need_log_probabilities():
    with pytest.raises(ValueError, match="log-probabilities"):
        _label(EntropyQueries(0.5), KEY, _pairs(5), jnp.zeros((5, 1, 2)))


@pytest.mark.parametrize("fraction, batch, k", [(0.07, 100, 7), (0.28, 25, 7), (0.55, 100, 55)])
def test_entropy_query_count_is_exact_for_decimal_fractions(fraction, batch, k):
    logprob = -jnp.arange(1.0, 2 * batch + 1).reshape(batch, 2)
    out = _label(EntropyQueries(fraction), KEY, _pairs(batch), jnp.zeros((batch, 1, 2)), logprob)
    assert int(out.query.sum()) == k
