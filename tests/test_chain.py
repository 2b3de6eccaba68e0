"""Exact chain computations (Viterbi, log-partition, FFBS, entropy) against brute-force enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.environments import chain

V, L = 3, 3


def _all_sequences(v, length):
    return np.array(list(itertools.product(range(v), repeat=length)), dtype=np.int32)  # [V^L, L]


def _np_scores(unary, pairwise, seqs):
    unary, pairwise = np.asarray(unary, np.float64), np.asarray(pairwise, np.float64)
    pos = np.arange(seqs.shape[1])
    return unary[pos, seqs].sum(-1) + pairwise[seqs[:, :-1], seqs[:, 1:]].sum(-1)


def _problem(seed, v=V, length=L):
    ku, kp = jax.random.split(jax.random.key(seed))
    return (
        jax.random.normal(ku, (length, v)) * 1.5,
        jax.random.normal(kp, (v, v)) * 1.5,
    )


@pytest.mark.parametrize("seed", range(5))
def test_viterbi_matches_enumeration(seed):
    unary, pairwise = _problem(seed)
    seqs = _all_sequences(V, L)
    scores = _np_scores(unary, pairwise, seqs)
    tokens, best = jax.jit(chain.viterbi)(unary, pairwise)
    assert tokens.dtype == jnp.int32 and tokens.shape == (L,)
    np.testing.assert_allclose(best, scores.max(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tokens, seqs[np.argmax(scores)])
    np.testing.assert_allclose(chain.chain_score(unary, pairwise, tokens), scores.max(), atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 4])
def test_viterbi_and_log_partition_other_lengths(length):
    unary, pairwise = _problem(7, v=2, length=length)
    seqs = _all_sequences(2, length)
    scores = _np_scores(unary, pairwise, seqs)
    tokens, best = chain.viterbi(unary, pairwise)
    np.testing.assert_array_equal(tokens, seqs[np.argmax(scores)])
    np.testing.assert_allclose(best, scores.max(), atol=1e-5)
    np.testing.assert_allclose(chain.log_partition(unary, pairwise), np.logaddexp.reduce(scores), atol=1e-5)


def test_chain_score_matches_numpy():
    unary, pairwise = _problem(3)
    seqs = _all_sequences(V, L)
    got = jax.vmap(chain.chain_score, in_axes=(None, None, 0))(unary, pairwise, seqs)
    np.testing.assert_allclose(got, _np_scores(unary, pairwise, seqs), atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_log_partition_entropy_marginals_match_enumeration(seed):
    unary, pairwise = _problem(seed + 10)
    seqs = _all_sequences(V, L)
    scores = _np_scores(unary, pairwise, seqs)
    log_z = np.logaddexp.reduce(scores)
    p = np.exp(scores - log_z)
    np.testing.assert_allclose(chain.log_partition(unary, pairwise), log_z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chain.entropy(unary, pairwise), -(p * np.log(p)).sum(), atol=1e-4)
    expected_marginals = np.stack([np.bincount(seqs[:, t], weights=p, minlength=V) for t in range(L)])
    np.testing.assert_allclose(chain.marginals(unary, pairwise), expected_marginals, atol=1e-5)


def test_ffbs_frequencies_match_gibbs_probabilities():
    unary, pairwise = _problem(21)
    seqs = _all_sequences(V, L)
    scores = _np_scores(unary, pairwise, seqs)
    p = np.exp(scores - np.logaddexp.reduce(scores))
    n = 20_000
    samples = np.asarray(jax.jit(chain.sample, static_argnums=3)(jax.random.key(0), unary, pairwise, n))
    assert samples.shape == (n, L) and samples.dtype == np.int32
    index = (samples * (V ** np.arange(L - 1, -1, -1))).sum(-1)  # lexicographic, as itertools.product
    counts = np.bincount(index, minlength=V**L)
    # Pearson chi-square with 26 degrees of freedom: mean 26, sd ~7.2; 80 is far in the tail.
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < 80, chi2
    # ... and it is sensitive: against the uniform distribution the statistic explodes.
    chi2_uniform = ((counts - n / V**L) ** 2 / (n / V**L)).sum()
    assert chi2_uniform > 10 * chi2


def test_sample_single_and_determinism():
    unary, pairwise = _problem(4)
    a = chain.sample(jax.random.key(1), unary, pairwise)
    b = chain.sample(jax.random.key(1), unary, pairwise)
    assert a.shape == (L,)
    np.testing.assert_array_equal(a, b)
    many = chain.sample(jax.random.key(2), unary, pairwise, 64)
    assert len({tuple(r) for r in np.asarray(many)}) > 1


def test_low_temperature_samples_concentrate_on_viterbi():
    unary, pairwise = _problem(5)
    tokens, _ = chain.viterbi(unary, pairwise)
    samples = chain.sample(jax.random.key(0), unary / 1e-3, pairwise / 1e-3, 32)
    np.testing.assert_array_equal(samples, np.broadcast_to(tokens, samples.shape))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="pairwise"):
        chain.viterbi(jnp.zeros((3, 4)), jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="unary"):
        chain.log_partition(jnp.zeros((2, 3, 4)), jnp.zeros((4, 4)))
