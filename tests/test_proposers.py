"""Proposers (where an alignment agent's candidate responses come from) on the tiny SequenceDuel's π_ref.

π_θ is made visibly different from π_ref by scaling every parameter (``SHARP``): same model
definition, a much more peaked next-token distribution, so "which policy sampled this" can be
told apart from first-token frequencies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sequence_fixtures as seq
from sequence_fixtures import tiny_env  # noqa: F401  (a pytest fixture)

from cdb.proposers import (
    GeometricMixtureSamples,
    PolicyAndReference,
    PolicySamples,
    ProposerInputs,
    ReferenceSamples,
)
from cdb.sequences import score_responses

M = 3
KEY = jax.random.key(0)
SHARP = 3.0
FREQ_ROWS = 3000


@pytest.fixture(scope="module")
def ref(tiny_env):  # noqa: F811
    return tiny_env.reference


@pytest.fixture(scope="module")
def sharp(ref):
    """π_θ ≠ π_ref: every parameter of π_ref times ``SHARP``."""
    return jax.tree.map(lambda x: SHARP * x, ref.params)


@pytest.fixture(scope="module")
def prompts():
    return jax.random.randint(jax.random.key(1), (seq.B, seq.LP), 0, seq.V, jnp.int32)


def _propose(proposer, ref, policy_params, reference_params, prompts, key=KEY):
    return np.asarray(
        proposer(key, ProposerInputs(ref.policy, policy_params, reference_params, prompts, None, seq.L)).tokens
    )


PROPOSERS = {
    "policy": PolicySamples(M),
    "reference": ReferenceSamples(M),
    "policy_and_reference": PolicyAndReference(),
    "geometric_mixture": GeometricMixtureSamples(M, beta=0.5),
}


@pytest.mark.parametrize("name", sorted(PROPOSERS))
def test_candidates_have_the_right_shape_and_tokens(name, ref, sharp, prompts):
    proposer = PROPOSERS[name]
    out = proposer(KEY, ProposerInputs(ref.policy, sharp, ref.params, prompts, None, seq.L)).tokens
    assert out.shape == (seq.B, proposer.num_candidates, seq.L) and out.dtype == jnp.int32
    assert np.all((np.asarray(out) >= 0) & (np.asarray(out) < seq.V))
    np.testing.assert_array_equal(_propose(proposer, ref, sharp, ref.params, prompts), out)  # same key, same draw
    assert not np.array_equal(_propose(proposer, ref, sharp, ref.params, prompts, jax.random.key(5)), out)


def test_policy_and_reference_samples_coincide_when_the_policy_is_the_reference(ref, prompts):
    policy = _propose(PolicySamples(M), ref, ref.params, ref.params, prompts)
    reference = _propose(ReferenceSamples(M), ref, ref.params, ref.params, prompts)
    np.testing.assert_array_equal(policy, reference)


def test_policy_samples_come_from_the_policy_and_reference_samples_from_the_reference(ref, sharp, prompts):
    policy = _propose(PolicySamples(M), ref, sharp, ref.params, prompts)
    reference = _propose(ReferenceSamples(M), ref, sharp, ref.params, prompts)
    assert not np.array_equal(policy, reference)
    # each reads only its own parameters
    np.testing.assert_array_equal(policy, _propose(PolicySamples(M), ref, sharp, sharp, prompts))
    np.testing.assert_array_equal(reference, _propose(ReferenceSamples(M), ref, ref.params, ref.params, prompts))
    np.testing.assert_array_equal(reference, _propose(PolicySamples(M), ref, ref.params, sharp, prompts))


def test_geometric_mixture_endpoints_are_the_two_policies(ref, sharp, prompts):
    """β = 1 is π_ref and β = 0 is π_θ, draw for draw (the samplers share their key schedule)."""
    to_ref = _propose(GeometricMixtureSamples(M, beta=1.0), ref, sharp, ref.params, prompts)
    np.testing.assert_array_equal(to_ref, _propose(ReferenceSamples(M), ref, sharp, ref.params, prompts))
    to_policy = _propose(GeometricMixtureSamples(M, beta=0.0), ref, sharp, ref.params, prompts)
    np.testing.assert_array_equal(to_policy, _propose(PolicySamples(M), ref, sharp, ref.params, prompts))
    assert not np.array_equal(to_ref, to_policy)


def _first_token_probs(ref, params, prompt):
    """Exact ``π(y_0 = v | x)`` for every token v, from one teacher-forced pass."""
    responses = jnp.zeros((seq.V, seq.L), jnp.int32).at[:, 0].set(jnp.arange(seq.V))
    scored = jax.jit(score_responses, static_argnums=0)(ref.policy, params, jnp.tile(prompt, (seq.V, 1)), responses)
    return np.exp(np.asarray(scored.token_logprob[:, 0], np.float64))


def test_policy_and_reference_draws_one_sample_of_each(ref, sharp):
    """Candidate 0 is distributed as π_θ, candidate 1 as π_ref; each reads only its own parameters."""
    prompt = jnp.array([[2, 5]], jnp.int32)
    out = _propose(PolicyAndReference(), ref, sharp, ref.params, jnp.tile(prompt, (FREQ_ROWS, 1)))
    assert out.shape == (FREQ_ROWS, 2, seq.L) and PolicyAndReference.num_candidates == 2
    p_policy, p_ref = _first_token_probs(ref, sharp, prompt), _first_token_probs(ref, ref.params, prompt)
    assert np.abs(p_policy - p_ref).max() > 0.15  # the two distributions can be told apart
    for candidate, probs in ((0, p_policy), (1, p_ref)):
        freq = np.bincount(out[:, candidate, 0], minlength=seq.V) / FREQ_ROWS
        assert np.abs(freq - probs).max() < 0.04, (candidate, freq, probs)  # ~4 standard errors
    # candidate 1 does not depend on π_θ, candidate 0 not on π_ref
    small = jnp.tile(prompt, (seq.B, 1))
    base = _propose(PolicyAndReference(), ref, sharp, ref.params, small)
    np.testing.assert_array_equal(base[:, 1], _propose(PolicyAndReference(), ref, ref.params, ref.params, small)[:, 1])
    np.testing.assert_array_equal(base[:, 0], _propose(PolicyAndReference(), ref, sharp, sharp, small)[:, 0])


@pytest.mark.parametrize("proposer", [PolicySamples, ReferenceSamples, GeometricMixtureSamples])
def test_fewer_than_two_candidates_is_rejected(proposer):  # M < 2: no pair to duel
    with pytest.raises(ValueError, match=r"num_candidates=1 is out of range"):
        proposer(num_candidates=1)


def test_sampled_candidates_carry_their_samplers_log_probs(ref, sharp, prompts):
    """π_θ's samples come with log π_θ(y|x) and π_ref's with log π_ref(y|x), equal to a teacher-forced pass."""
    from cdb.sequences import score_candidates

    score = jax.jit(score_candidates, static_argnums=0)
    own = PolicySamples(M)(KEY, ProposerInputs(ref.policy, sharp, ref.params, prompts, None, seq.L))
    np.testing.assert_allclose(own.policy_logprob, score(ref.policy, sharp, prompts, own.tokens).logprob, atol=2e-5)
    assert own.reference_logprob is None
    frozen = ReferenceSamples(M)(KEY, ProposerInputs(ref.policy, sharp, ref.params, prompts, None, seq.L))
    np.testing.assert_allclose(
        frozen.reference_logprob, score(ref.policy, ref.params, prompts, frozen.tokens).logprob, atol=2e-5
    )
    assert frozen.policy_logprob is None
    for proposer in (PolicyAndReference(), GeometricMixtureSamples(M, beta=0.5)):  # no single sampler to ask
        out = proposer(KEY, ProposerInputs(ref.policy, sharp, ref.params, prompts, None, seq.L))
        assert out.policy_logprob is None and out.reference_logprob is None
    pair = PolicyAndReference()(KEY, ProposerInputs(ref.policy, sharp, ref.params, prompts, None, seq.L))
    np.testing.assert_array_equal(pair.reference_sample, pair.tokens[:, 1])  # XPO's ỹ is candidate 1
