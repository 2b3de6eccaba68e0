"""cdb.objectives: the policy's objective as a chain of typed terms, checked on hand-made scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdb.losses import DAPLoss, sail_term
from cdb.objectives import DAPTerm, PairBatch, PairScores, SAILTerm, XPOTerm, objective, part_totals

B, L = 4, 3


def _batch(weight, routes):
    zeros = jnp.zeros((B, L), jnp.int32)
    return PairBatch(
        prompts=jnp.zeros((B, 2), jnp.int32),
        prompt_mask=None,
        chosen=zeros,
        rejected=zeros,
        ref_chosen=jnp.asarray([-3.0, -2.0, -4.0, -1.0]),
        ref_rejected=jnp.asarray([-2.5, -2.5, -3.0, -2.0]),
        weight=jnp.asarray(weight, jnp.float32),
        routes={k: jnp.asarray(v, jnp.float32) for k, v in routes.items()},
    )


SCORES = PairScores(
    chosen=jnp.asarray([-2.0, -1.0, -5.0, -1.5]),
    rejected=jnp.asarray([-3.0, -2.0, -2.0, -1.0]),
    chosen_length=jnp.full((B,), 3.0),
    rejected_length=jnp.full((B,), 3.0),
    reference_sample=jnp.asarray([-4.0, -6.0, -5.0, -7.0]),
)


def test_dpo_term_by_hand():
    batch = _batch([1, 1, 0, 1], {})
    loss, info = objective((DAPTerm(DAPLoss("dpo", beta=0.5)),), SCORES, batch)
    delta = np.array([(-2 + 3) - (-3 + 2.5), (-1 + 2) - (-2 + 2.5), 0.0, (-1.5 + 1) - (-1 + 2)])
    want = np.array([np.log1p(np.exp(-0.5 * d)) for d in delta])
    assert float(loss) == pytest.approx((want[0] + want[1] + want[3]) / 3, rel=1e-6)
    assert float(info["dap_loss"]) == pytest.approx(float(loss), rel=1e-6)


def test_xpo_and_sail_terms_add_their_parts():
    batch = _batch([1, 1, 0, 1], {"pr": [1, 0, 0, 1], "pp": [0, 1, 0, 0]})
    dap = DAPTerm(DAPLoss("dpo", beta=0.1))
    base, _ = objective((dap,), SCORES, batch)
    with_xpo, _ = objective((dap, XPOTerm(0.5)), SCORES, batch)
    assert float(with_xpo - base) == pytest.approx(0.5 * (-4 - 6 - 7) / 3, rel=1e-6)
    with_sail, _ = objective((dap, SAILTerm(0.3, beta=0.1)), SCORES, batch)
    args = (SCORES.chosen, SCORES.rejected, batch.ref_chosen, batch.ref_rejected)
    parts = [sail_term(*args, beta=0.1, coefficient=0.3, variant=v, weight=w) for v, w in batch.routes.items()]
    assert float(with_sail - base) == pytest.approx(float(sum(parts)), rel=1e-6)


def test_micro_batch_shares_sum_to_the_whole_batch():
    """Each half's objective, scaled by its share of each part's weight, sums to the whole's."""
    batch = _batch([1, 1, 0, 1], {"pr": [1, 0, 0, 1], "pp": [0, 1, 0, 0]})
    terms = (DAPTerm(DAPLoss("ipo", beta=0.2)), XPOTerm(0.1), SAILTerm(0.3, beta=0.2))
    whole, whole_info = objective(terms, SCORES, batch)
    totals = part_totals(terms, batch)
    assert set(totals) == {"dap", "xpo", "sail_pr", "sail_pp"}
    halves = [jax.tree.map(lambda x, s=s: x[s], (SCORES, batch)) for s in (slice(0, 2), slice(2, 4))]
    parts = [objective(terms, scores, half, totals) for scores, half in halves]
    assert float(sum(p[0] for p in parts)) == pytest.approx(float(whole), rel=1e-5)
    assert float(sum(p[1]["dap_loss"] for p in parts)) == pytest.approx(float(whole_info["dap_loss"]), rel=1e-5)


def test_bad_terms_are_named():
    with pytest.raises(ValueError, match=r"SAILTerm\.coefficient"):
        SAILTerm(0.0)
    with pytest.raises(ValueError, match="routes"):
        SAILTerm(0.3).rows(_batch([1, 1, 1, 1], {"qq": [1, 1, 1, 1]}))
