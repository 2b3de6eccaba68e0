"""Pair-selection rules against hand-made score tensors and plain numpy references."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from cdb import selection
from cdb.selection import (
    BAITS,
    EETS,
    Boltzmann,
    EnsembleDoubleTS,
    GreedyPair,
    Infomax,
    Passive,
    Uncertainty,
    pairwise_preference_variance,
    select_pairs,
)

ALL_RULES = (
    Passive(),
    GreedyPair(),
    EETS(),
    EETS(max_tries=1, fallback="random"),
    BAITS(),
    BAITS(variance="logit"),
    Uncertainty(),
    Infomax(),
    EnsembleDoubleTS(),
    EnsembleDoubleTS(max_resamples=0),
    Boltzmann(temperature=0.5),
)

# Module-level jits, reused across tests (rules are frozen dataclasses, hence valid static args).
select_pairs_jit = jax.jit(select_pairs, static_argnums=0)
_rule_jit = jax.jit(lambda rule, key, scores: rule(key, scores), static_argnums=0)
_many_keys_jit = jax.jit(lambda rule, keys, scores: jax.vmap(rule, in_axes=(0, None))(keys, scores), static_argnums=0)


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _pairs(rule, scores, n, seed=0):
    """``rule`` applied to the same ``scores`` under ``n`` keys: ``[n, 2]`` numpy."""
    return np.asarray(_many_keys_jit(rule, _keys(n, seed), jnp.asarray(scores, jnp.float32)))


def _np_variance(scores, kind):
    scores = np.asarray(scores, np.float64)
    num = scores.shape[1]
    out = np.zeros((num, num))
    for i in range(num):
        for j in range(num):
            d = scores[:, i] - scores[:, j]
            out[i, j] = np.var(1.0 / (1.0 + np.exp(-d)) if kind == "probability" else d)
    return out


def _np_best_pair(scores, kind):
    var = _np_variance(scores, kind)
    num = var.shape[0]
    pairs = [(i, j) for i in range(num) for j in range(i + 1, num)]
    return max(pairs, key=lambda p: var[p])


class DeterministicRulesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_greedy_top_two_of_member_mean(self):
        # mean = [0, 2, 2, 2.25]: best 3, then the tie 1 / 2 goes to the lower index.
        scores = jnp.array([[0.0, 3.0, 1.0, 2.0], [0.0, 1.0, 3.0, 2.5]])
        pair = self.variant(GreedyPair())(jax.random.key(0), scores)
        np.testing.assert_array_equal(pair, [3, 1])
        assert pair.dtype == jnp.int32 and pair.shape == (2,)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("probability", "probability"), ("logit", "logit"))
    def test_pairwise_preference_variance_matches_numpy_loops(self, kind):
        scores = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32) * 2.0
        var = self.variant(pairwise_preference_variance, static_argnums=1)(jnp.asarray(scores), kind)
        assert var.shape == (5, 5)
        np.testing.assert_allclose(var, _np_variance(scores, kind), rtol=1e-4, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("uncertainty", Uncertainty(), "logit"), ("infomax", Infomax(), "probability"))
    def test_variance_pair_rules_match_brute_force(self, rule, kind):
        fn = self.variant(rule)
        rng = np.random.default_rng(1)
        for _ in range(3):
            scores = rng.normal(size=(4, 5)).astype(np.float32) * 2.0
            pair = fn(jax.random.key(0), jnp.asarray(scores))
            assert tuple(np.asarray(pair)) == _np_best_pair(scores, kind)

    @chex.variants(with_jit=True, without_jit=True)
    def test_uncertainty_and_infomax_differ_when_the_sigmoid_saturates(self):
        # Pair (0, 2) has the largest logit variance (36) but its preference is ~1 under both
        # members; pair (1, 2) has logit differences -1 / +1, the largest probability variance.
        scores = jnp.array([[10.0, 0.0, 1.0, 0.2], [20.0, 0.0, -1.0, 0.0]])
        assert _np_best_pair(scores, "logit") == (0, 2) and _np_best_pair(scores, "probability") == (1, 2)
        key = jax.random.key(0)
        np.testing.assert_array_equal(self.variant(Uncertainty())(key, scores), [0, 2])
        np.testing.assert_array_equal(self.variant(Infomax())(key, scores), [1, 2])


class RandomRulesTest(chex.TestCase):
    def _over_keys(self, rule, scores, n):
        """``rule`` under ``n`` keys (module-level jit); the variant must agree on the first keys."""
        scores = jnp.asarray(scores, jnp.float32)
        pairs = _pairs(rule, scores, n)
        fn = self.variant(rule)
        for key, pair in zip(_keys(2), pairs[:2], strict=True):
            np.testing.assert_array_equal(fn(key, scores), pair)
        return pairs

    @chex.variants(with_jit=True, without_jit=True)
    def test_eets_agreeing_members_fall_back_to_second_best_of_the_drawn_member(self):
        # Both members put 3 first; member 0 puts 1 second, member 1 puts 2 second.
        scores = [[0.0, 5.0, 1.0, 9.0], [0.0, 1.0, 5.0, 9.0]]
        pairs = self._over_keys(EETS(max_tries=4), scores, 40)
        assert (pairs[:, 0] == 3).all()
        assert set(pairs[:, 1]) == {1, 2}

    @chex.variants(with_jit=True, without_jit=True)
    def test_eets_single_member_always_falls_back(self):
        pairs = self._over_keys(EETS(), [[0.0, 5.0, 1.0, 9.0]], 8)
        np.testing.assert_array_equal(pairs, np.tile([3, 1], (8, 1)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_eets_random_fallback_is_uniform_over_the_others(self):
        scores = [[0.0, 5.0, 1.0, 9.0], [0.0, 1.0, 5.0, 9.0]]
        pairs = self._over_keys(EETS(fallback="random"), scores, 600)
        assert (pairs[:, 0] == 3).all()
        freq = np.bincount(pairs[:, 1], minlength=4) / len(pairs)
        assert freq[3] == 0.0
        np.testing.assert_allclose(freq[:3], 1 / 3, atol=0.08)

    @chex.variants(with_jit=True, without_jit=True)
    def test_eets_disagreeing_members_pair_two_member_argmaxes(self):
        # Member m puts m first and 3 second: the second-best fallback (3) must never be used,
        # because every other member's argmax differs from a1.
        scores = [[9.0, 0.0, 0.0, 5.0], [0.0, 9.0, 0.0, 5.0], [0.0, 0.0, 9.0, 5.0]]
        pairs = self._over_keys(EETS(max_tries=2), scores, 120)
        assert set(pairs[:, 0]) == {0, 1, 2}  # the first member is drawn per key
        assert (pairs[:, 1] != 3).all() and (pairs[:, 0] != pairs[:, 1]).all()
        assert len({tuple(p) for p in pairs}) == 6  # every ordered pair of argmaxes occurs

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("probability", "probability"), ("logit", "logit"))
    def test_baits_challenger_has_max_variance_against_a1(self, kind):
        scores = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32) * 2.0
        pairs = self._over_keys(BAITS(variance=kind), scores, 32)
        var = _np_variance(scores, kind)
        assert set(pairs[:, 0]) <= set(scores.argmax(axis=1))
        assert len(set(pairs[:, 0])) > 1  # members disagree on this seed, so a1 varies with the key
        for a1, a2 in pairs:
            row = np.where(np.arange(6) == a1, -np.inf, var[a1])
            assert a2 == row.argmax()

    @chex.variants(with_jit=True, without_jit=True)
    def test_baits_masks_a1_when_every_variance_is_zero(self):
        scores = [[3.0, 1.0, 0.0, 2.0]] * 2  # identical members: all variances are exactly 0; a1 = 0
        for kind in ("probability", "logit"):
            pairs = self._over_keys(BAITS(variance=kind), scores, 4)
            np.testing.assert_array_equal(pairs, np.tile([0, 1], (4, 1)))  # unmasked argmax would be 0

    @chex.variants(with_jit=True, without_jit=True)
    def test_ensemble_double_ts_agreeing_members_fall_back_to_uniform_other(self):
        scores = [[0.0, 5.0, 1.0, 9.0], [1.0, 0.0, 5.0, 9.0]]
        pairs = self._over_keys(EnsembleDoubleTS(max_resamples=3), scores, 300)
        assert (pairs[:, 0] == 3).all()
        assert set(pairs[:, 1]) == {0, 1, 2}

    @chex.variants(with_jit=True, without_jit=True)
    def test_ensemble_double_ts_resampling_finds_the_disagreeing_member(self):
        scores = [[9.0, 0.0, 5.0, 0.0], [5.0, 0.0, 9.0, 0.0]]  # argmaxes 0 and 2
        with_resamples = self._over_keys(EnsembleDoubleTS(max_resamples=8), scores, 300)
        without = self._over_keys(EnsembleDoubleTS(max_resamples=0), scores, 300)

        def argmax_pair_rate(pairs):
            return np.mean([set(p) == {0, 2} for p in pairs])

        # P(miss) = 2^-9 per key with 8 redraws; with none, 1/2 · 2/3 of keys get a uniform other.
        assert argmax_pair_rate(with_resamples) > 0.97
        assert argmax_pair_rate(without) < 0.85
        assert (without[:, 0] != without[:, 1]).all()

    @chex.variants(with_jit=True, without_jit=True)
    def test_boltzmann_low_temperature_is_greedy(self):
        scores = [[0.1, 0.5, 0.3, 0.9], [0.1, 0.5, 0.3, 0.9]]
        pairs = self._over_keys(Boltzmann(temperature=1e-3), scores, 20)
        np.testing.assert_array_equal(pairs, np.tile([3, 1], (20, 1)))


def test_boltzmann_frequencies_follow_sampling_without_replacement():
    mean = np.array([0.0, 1.0, 2.0])
    p = np.exp(mean) / np.exp(mean).sum()
    expected_second = np.array([sum(p[i] * p[j] / (1 - p[i]) for i in range(3) if i != j) for j in range(3)])
    pairs = _pairs(Boltzmann(temperature=1.0), [mean - 0.5, mean + 0.5], 4000)
    np.testing.assert_allclose(np.bincount(pairs[:, 0], minlength=3) / 4000, p, atol=0.03)
    np.testing.assert_allclose(np.bincount(pairs[:, 1], minlength=3) / 4000, expected_second, atol=0.03)


def test_passive_ordered_pairs_are_roughly_uniform():
    pairs = _pairs(Passive(), np.zeros((1, 4)), 3000)
    counts = np.zeros((4, 4))
    np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
    assert np.trace(counts) == 0
    off_diagonal = counts[~np.eye(4, dtype=bool)] / len(pairs)
    np.testing.assert_allclose(off_diagonal, 1 / 12, atol=0.025)


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_every_rule_returns_distinct_valid_arms(rule):
    num_arms = 3
    rng = np.random.default_rng(0)
    continuous = rng.normal(size=(24, 3, num_arms))
    ties = rng.integers(0, 2, size=(24, 3, num_arms)).astype(float)  # many exact ties
    constant = np.zeros((8, 3, num_arms))
    scores = jnp.asarray(np.concatenate([continuous, ties, constant]), jnp.float32)
    pairs = np.asarray(select_pairs_jit(rule, jax.random.PRNGKey(3), scores))  # raw uint32 keys work too
    assert pairs.shape == (56, 2) and pairs.dtype == np.int32
    assert ((pairs >= 0) & (pairs < num_arms)).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()


def test_select_pairs_splits_the_key_per_context():
    scores = jnp.asarray(np.random.default_rng(4).normal(size=(6, 3, 5)), jnp.float32)
    key = jax.random.key(5)
    rule = EETS()
    pairs = select_pairs_jit(rule, key, scores)
    expected = [_rule_jit(rule, k, s) for k, s in zip(jax.random.split(key, 6), scores, strict=True)]
    np.testing.assert_array_equal(pairs, np.stack(expected))
    passive = np.asarray(select_pairs_jit(Passive(), key, jnp.zeros((6, 1, 5))))
    assert len({tuple(p) for p in passive}) > 1  # contexts get different keys


def test_min_members():
    assert {type(r).__name__: r.min_members for r in ALL_RULES} == {
        "Passive": 1,
        "GreedyPair": 1,
        "Boltzmann": 1,
        "EETS": 2,
        "BAITS": 2,
        "Uncertainty": 2,
        "Infomax": 2,
        "EnsembleDoubleTS": 2,
    }
    assert all(isinstance(r, selection.SelectionRule) for r in ALL_RULES)


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda: EETS(max_tries=0), "EETS.max_tries=0"),
        (lambda: EETS(max_tries=2.0), "EETS.max_tries=2.0"),
        (lambda: EETS(fallback="best"), "EETS.fallback='best'"),
        (lambda: BAITS(variance="entropy"), "BAITS.variance='entropy'"),
        (lambda: EnsembleDoubleTS(max_resamples=-1), "EnsembleDoubleTS.max_resamples=-1"),
        (lambda: Boltzmann(temperature=0.0), "Boltzmann.temperature=0.0"),
        (lambda: Boltzmann(temperature=float("nan")), "Boltzmann.temperature=nan"),
        (lambda: pairwise_preference_variance(jnp.zeros((2, 3)), "entropy"), "kind='entropy'"),
        (lambda: GreedyPair()(jax.random.key(0), jnp.zeros((3, 1))), "GreedyPair: scores has shape (3, 1)"),
        (lambda: Passive()(jax.random.key(0), jnp.zeros((4,))), "Passive: scores has shape (4,)"),
        (lambda: select_pairs(EETS(), jax.random.key(0), jnp.zeros((3, 4))), "select_pairs: scores has"),
    ],
)
def test_bad_hyper_parameters_and_shapes_raise(make, where):
    with pytest.raises(ValueError, match=re.escape(where)):
        make()


def test_first_argmax_matches_jnp_argmax_on_ties_and_nans():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 3, size=(50, 6, 9)).astype(np.float32)  # many ties
    values[0, 0, [2, 5]] = np.nan  # NaN counts as the maximum, first NaN wins
    values[1, 1] = -np.inf
    values[2, 2, 4] = np.inf
    for axis in (0, 1, 2, -1):
        np.testing.assert_array_equal(selection.first_argmax(values, axis=axis), jnp.argmax(values, axis=axis))
    assert int(selection.first_argmax(values[0, 0])) == 2


def test_members_argmax_is_each_members_first_argmax():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(7, 4, 9)).astype(np.float32)  # [B, E, K], many ties
    scores[0, 1, [3, 6]] = np.nan
    scores[2, 0] = -np.inf
    expected = np.array([[int(np.argmax(scores[b, e])) for e in range(4)] for b in range(7)])
    np.testing.assert_array_equal(selection.members_argmax(scores), expected)
    np.testing.assert_array_equal(selection.members_argmax(scores[3]), expected[3])
    assert selection.members_argmax(scores).dtype == jnp.int32
