"""The policy's objective as a chain of typed terms, on a typed batch of pairs (the learner of an alignment agent).

An alignment agent trains π_θ on a :class:`PairBatch` of ``B`` labelled pairs. One teacher-forced
pass of π_θ (:func:`cdb.sequences.score_candidates`) gives its :class:`PairScores`, and the
objective is the sum of its terms, each a weighted mean over the pairs::

    J(θ) = Σ_terms Σ_parts  Σ_i w_i ℓ_i(θ) / Σ_i w_i

* :class:`DAPTerm` — the direct-alignment loss (:class:`cdb.losses.DAPLoss`: DPO, IPO, SLiC, ...) on
  the pairs that carry a label (``batch.weight``);
* :class:`XPOTerm` — XPO's exploration term ``α · E[log π_θ(ỹ|x)]``, ``ỹ ~ π_ref`` (Xie et al.
  2024), on the batch's π_ref samples;
* :class:`SAILTerm` — SAIL's self-improving term (Ding et al. 2024), one part per route of the
  pairs (``batch.routes``): ``'pr'`` π_θ's samples labelled by the oracle, ``'pp'`` labelled by
  the policy's own preference, ``'dp'`` an offline dataset's pairs.

A term is a frozen dataclass called as ``term(scores, batch) -> ({part: weighted mean}, info)``,
with ``rows(batch) -> {part: row weights}`` (so that micro-batches of a batch can each contribute
their share: :meth:`cdb.agents.alignment.AlignmentAgent.policy_gradient`);
``needs_reference_sample`` says that the π_θ pass must also score ``batch.reference_sample``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from cdb.losses import SAIL_VARIANTS, DAPLoss, sail_term, xpo_term
from cdb.validation import check_float

Array = jax.Array


@struct.dataclass
class PairBatch:
    """``B`` pairs the policy learns from (all ``[B, ...]``).

    Attributes:
      prompts: ``[B, Lp]`` int32; prompt_mask: ``[B, Lp]`` bool, or ``None`` (every token real, tier 2).
      chosen, rejected: ``[B, L]`` int32, the preferred and the other response of each pair.
      ref_chosen, ref_rejected: ``[B]`` float32, their log-probabilities under π_ref.
      weight: ``[B]`` float32, 1 for a pair with a label to learn from (oracle or model), 0 otherwise.
      routes: ``{variant: [B]}`` float32, each pair's SAIL route (``'pr'``, ``'pp'``, ``'dp'``).
      reference_sample: ``[B, L]`` int32, a π_ref sample per prompt (XPO), or ``None``.
    """

    prompts: Array
    prompt_mask: Array | None
    chosen: Array
    rejected: Array
    ref_chosen: Array
    ref_rejected: Array
    weight: Array
    routes: dict[str, Array]
    reference_sample: Array | None = None


@struct.dataclass
class PairScores:
    """π_θ's teacher-forced pass over a :class:`PairBatch` (all ``[B]``).

    Attributes:
      chosen, rejected: ``log π_θ(y|x)`` of the chosen and the rejected response.
      chosen_length, rejected_length: their lengths in tokens.
      reference_sample: ``log π_θ(ỹ|x)`` of the batch's π_ref sample, or ``None``.
    """

    chosen: Array
    rejected: Array
    chosen_length: Array
    rejected_length: Array
    reference_sample: Array | None = None


@runtime_checkable
class PolicyTerm(Protocol):
    """One term of the objective: ``term(scores, batch) -> ({part: weighted mean}, info)`` and its row weights."""

    needs_reference_sample: ClassVar[bool]

    def check(self, owner: str, proposer: Any, labeler: Any) -> None:
        """Raises a ``ValueError`` naming ``owner`` when the agent's parts cannot feed the term."""

    def rows(self, batch: PairBatch) -> dict[str, Array]: ...

    def __call__(self, scores: PairScores, batch: PairBatch) -> tuple[dict[str, Array], dict[str, Array]]: ...


@dataclasses.dataclass(frozen=True)
class DAPTerm:
    """The direct-alignment loss of the labelled pairs: ``Σ_i w_i DAP_i / Σ_i w_i`` (:class:`cdb.losses.DAPLoss`).

    Its info: ``dap_loss`` (the loss proper), ``implicit_reward_margin``, ``preference_accuracy``.
    """

    loss: DAPLoss = DAPLoss()
    needs_reference_sample: ClassVar[bool] = False

    def check(self, owner: str, proposer: Any, labeler: Any) -> None:
        pass

    def rows(self, batch: PairBatch) -> dict[str, Array]:
        return {"dap": batch.weight}

    def __call__(self, scores: PairScores, batch: PairBatch):
        value, info = self.loss(
            scores.chosen,
            scores.rejected,
            batch.ref_chosen,
            batch.ref_rejected,
            chosen_length=scores.chosen_length,
            rejected_length=scores.rejected_length,
            weight=batch.weight,
        )
        return {"dap": value}, info


@dataclasses.dataclass(frozen=True)
class XPOTerm:
    """XPO's exploration term ``α · Σ_i w_i log π_θ(ỹ_i|x_i) / Σ_i w_i``, ỹ ~ π_ref (:func:`cdb.losses.xpo_term`)."""

    alpha: float = 1e-2
    needs_reference_sample: ClassVar[bool] = True

    def __post_init__(self):
        check_float(self, "alpha", self.alpha, low=0.0, low_inclusive=False)

    def check(self, owner: str, proposer: Any, labeler: Any) -> None:
        if not proposer.provides_reference_sample:
            raise ValueError(
                f"{owner}: XPOTerm(alpha={self.alpha}) needs a π_ref sample per prompt; "
                f"proposer={type(proposer).__name__} provides none (use proposer=PolicyAndReference())"
            )

    def rows(self, batch: PairBatch) -> dict[str, Array]:
        return {"xpo": batch.weight}

    def __call__(self, scores: PairScores, batch: PairBatch):
        return {"xpo": xpo_term(scores.reference_sample, self.alpha, weight=batch.weight)}, {}


@dataclasses.dataclass(frozen=True)
class SAILTerm:
    """SAIL's self-improving term, one part per route of the pairs (:func:`cdb.losses.sail_term`).

    Each pair's variant follows its route (Ding et al. 2024): ``'pr'`` / ``'pp'`` for π_θ's
    samples labelled by the oracle / by the policy's own sampled preference, ``'dp'`` for the
    pairs of an offline dataset.

    Attributes:
      coefficient: the term's weight (the authors' released configuration: 0.3).
      beta: the β of the implicit reward inside ``ℓ_θ = log σ(βΔ)`` (the DAP loss's β).
    """

    coefficient: float = 0.3
    beta: float = 0.1
    needs_reference_sample: ClassVar[bool] = False

    def __post_init__(self):
        check_float(self, "coefficient", self.coefficient, low=0.0, low_inclusive=False)
        check_float(self, "beta", self.beta, low=0.0, low_inclusive=False)

    def check(self, owner: str, proposer: Any, labeler: Any) -> None:
        # SAIL-PR/PP's term is ℓ·∇log π_θ of the pair, which assumes π_θ sampled it
        if not (proposer.from_policy or labeler.offline):
            raise ValueError(
                f"{owner}: SAILTerm(coefficient={self.coefficient}) needs π_θ's own samples (a proposer with "
                "from_policy, e.g. PolicySamples: SAIL-PR/PP) or an offline dataset (an offline labeler, e.g. "
                f"QueryBudget: SAIL-DP); proposer={type(proposer).__name__} is not sampled from π_θ"
            )

    def rows(self, batch: PairBatch) -> dict[str, Array]:
        unknown = sorted(set(batch.routes) - set(SAIL_VARIANTS))
        if unknown:
            raise ValueError(
                f"SAILTerm: routes {unknown} are not SAIL variants; expected some of {tuple(SAIL_VARIANTS)}"
            )
        return {f"sail_{variant}": rows for variant, rows in batch.routes.items()}

    def __call__(self, scores: PairScores, batch: PairBatch):
        parts = {}
        for name, rows in self.rows(batch).items():
            parts[name] = sail_term(
                scores.chosen,
                scores.rejected,
                batch.ref_chosen,
                batch.ref_rejected,
                beta=self.beta,
                coefficient=self.coefficient,
                variant=name.removeprefix("sail_"),
                weight=rows,
            )
        return parts, {}


def objective(
    terms: tuple[PolicyTerm, ...], scores: PairScores, batch: PairBatch, totals: dict[str, Array] | None = None
) -> tuple[Array, dict[str, Array]]:
    """``Σ`` of every term's parts, and the terms' info (``dap_loss`` and its companions).

    With ``totals`` (each part's row-weight sum over the whole batch, :func:`part_totals`),
    ``batch`` is a micro-batch and each part, and the info, is scaled by the micro-batch's share
    of that weight, so that the micro-batches' objectives (and gradients) sum to the whole batch's.
    """
    loss = jnp.zeros((), jnp.float32)
    info: dict[str, Array] = {}
    for term in terms:
        parts, term_info = term(scores, batch)
        rows = term.rows(batch)
        for name, value in parts.items():
            loss = loss + value * _share(rows[name], totals, name)
        info.update({k: v * _share(batch.weight, totals, "dap") for k, v in term_info.items()})
    return loss, info


def part_totals(terms: tuple[PolicyTerm, ...], batch: PairBatch) -> dict[str, Array]:
    """Each part's row-weight sum over ``batch`` (the denominators of :func:`objective`'s micro-batch shares)."""
    totals = {"dap": jnp.sum(batch.weight)}
    totals.update({name: jnp.sum(rows) for term in terms for name, rows in term.rows(batch).items()})
    return totals


def _share(rows: Array, totals: dict[str, Array] | None, name: str) -> Array:
    """A micro-batch's share of a part's weight over the whole batch (1 without micro-batches)."""
    if totals is None:
        return jnp.ones((), jnp.float32)
    total = totals[name]
    return jnp.sum(rows) / jnp.where(total > 0, total, 1.0)
