"""The named alignment agents of the SEA paper's comparison: :class:`~cdb.agents.alignment.AlignmentAgent`
configurations (docs/design.md §4), one function each.

Every preset takes the reference policy first (``SequenceDuel.reference`` or a
:class:`cdb.models.Pretrained`) and passes any other keyword to :class:`AlignmentAgent` (e.g.
``optimizer=``, ``gradient_accumulation=``, ``trainable=``, ``features=``, ``recommender=``)::

    from cdb.agents import sea, online_dpo
    agent = sea(reference)                                   # SEA as its authors run it
    agent = sea(reference, rule="ee_ts", gamma=1.0)          # E&E-TS, every pair to the oracle

They are also reachable as ``cdb.agents.alignment.<name>``.
"""

from __future__ import annotations

import dataclasses

from cdb import selection
from cdb.agents.alignment import AlignmentAgent
from cdb.agents.ensembles import oat_ensemble, toy_policy_ensemble
from cdb.ensemble import RewardModel
from cdb.labelers import MIXING_DRAWS, EntropyQueries, MixedLabeler, OracleLabeler, QueryBudget
from cdb.losses import DAPLoss
from cdb.objectives import SAILTerm, XPOTerm
from cdb.proposers import GeometricMixtureSamples, PolicyAndReference, PolicySamples, ReferenceSamples
from cdb.recommenders import BestOfN
from cdb.scorers import EnsembleScores, ImplicitReward
from cdb.validation import check_choice, check_float, check_int

__all__ = [
    "apl",
    "ee4llm",
    "frozen_sampler_dpo",
    "nash_md",
    "offline_dpo",
    "online_dap",
    "online_dpo",
    "online_ipo",
    "online_slic",
    "sail",
    "sea",
    "xpo",
]


def offline_dpo(reference, budget: int, *, loss: DAPLoss = DAPLoss("dpo"), **kwargs) -> AlignmentAgent:
    """Offline DPO: ``budget`` pairs from π_ref labelled once (the first rounds), then DPO on that dataset."""
    return AlignmentAgent(
        reference,
        proposer=ReferenceSamples(2),
        labeler=QueryBudget(budget),
        policy_loss=loss,
        name="offline_dpo",
        **kwargs,
    )


def frozen_sampler_dpo(reference, *, loss: DAPLoss = DAPLoss("dpo"), **kwargs) -> AlignmentAgent:
    """Online DPO whose sampler never moves: pairs from π_ref each round, labelled online (Oat's "offline")."""
    return AlignmentAgent(
        reference, proposer=ReferenceSamples(2), policy_loss=loss, name="frozen_sampler_dpo", **kwargs
    )


def online_dap(reference, *, loss: DAPLoss = DAPLoss("dpo"), **kwargs) -> AlignmentAgent:
    """Online DPO / IPO / SLiC with passive exploration: two samples of π_θ, a random pair, the oracle labels it.

    The baseline SEA's headline claim is measured against (the paper's "passive online").
    """
    return AlignmentAgent(reference, proposer=PolicySamples(2), policy_loss=loss, name=f"online_{loss.kind}", **kwargs)


def online_dpo(reference, *, beta: float = 0.1, **kwargs) -> AlignmentAgent:
    """Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"):
    :func:`online_dap` with ``DAPLoss('dpo', beta)``."""
    return online_dap(reference, loss=DAPLoss("dpo", beta=beta), **kwargs)


def online_ipo(reference, *, beta: float = 0.1, **kwargs) -> AlignmentAgent:
    """Online IPO (Calandriello et al. 2024): :func:`online_dap` with ``DAPLoss('ipo', beta)``."""
    return online_dap(reference, loss=DAPLoss("ipo", beta=beta), **kwargs)


def online_slic(reference, *, beta: float = 0.1, **kwargs) -> AlignmentAgent:
    """Online SLiC (Zhao et al. 2023's hinge, online): :func:`online_dap` with ``DAPLoss('slic', beta)``."""
    return online_dap(reference, loss=DAPLoss("slic", beta=beta), **kwargs)


def sea(
    reference,
    *,
    num_candidates: int = 8,
    rule: str = "bai_ts",
    variance: str | None = None,
    gamma: float = 0.7,
    mixing: str = "fixed_count",
    burn_in: int = 5,
    model_pair: str = "best_worst",
    reward_model: RewardModel | None = None,
    loss: DAPLoss = DAPLoss("dpo"),
    **kwargs,
) -> AlignmentAgent:
    """SEA (Liu et al. 2024, "Sample-Efficient Alignment for LLMs"), by default as its authors run it.

    π_θ proposes ``num_candidates`` responses per prompt; an epistemic reward ensemble scores them
    (on ``features``, by default π_ref's last hidden state); a Thompson-sampling rule picks the pair:

    * ``rule='bai_ts'`` (best-arm identification): a₁ = the best candidate of a random member,
      a₂ = ``argmax_{j≠a₁} Var_e[σ(r_e(a₁) − r_e(j))]`` (``variance='probability'``, the default of
      :class:`cdb.selection.BAITS`) or ``Var_e[r_e(a₁) − r_e(j)]`` (``variance='logit'``, Oat's);
    * ``rule='ee_ts'`` (explore & exploit): a₂ = the best candidate of another member (E&E-TS).

    Mixed preference learning (:class:`cdb.labelers.MixedLabeler`): after ``burn_in`` rounds of
    oracle pairs only, ``⌊(1 − γ)·B⌋`` prompts of each batch, a random subset, are labelled by a
    random member instead of the oracle (``model_pair='best_worst'``: that member's best against
    its worst candidate) — never sent to the oracle, never counted as queries. ``mixing='bernoulli'``
    sends each prompt to the oracle with probability γ instead; ``gamma=1`` sends every pair. The
    policy learns from both kinds of pair by the DAP ``loss``; the reward model from oracle pairs only.

    **The defaults are the authors' recipe**, from their code (Oat 0.2.4): BAI-TS
    (``exp_method='EnnBAITS'``), mixed preference learning with 30 % of each batch model-labelled
    (``model_rollout``, ``max_model_data_ratio=0.3``: ``int(0.3·B)`` prompts, a shuffled subset)
    after a burn-in of 5 batches (``burn_in_period=5``), the model pair of largest margin under a
    random member (``model_data_strategy='random'``), the reward model :func:`oat_ensemble`
    (whose docstring cites Oat's settings), and DPO with β = 0.1. Departures from Oat, and why:

    * BAI-TS's challenger maximises the variance of the preference *probability*, the rule as the
      library's :class:`~cdb.selection.BAITS` states it for the paper; Oat's ``EnnBAITS`` takes the
      variance of the logit difference (``variance='logit'`` reproduces it). The two rules often
      pick different challengers.
    * a₁'s member is drawn per prompt (Thompson sampling per context); Oat draws one member per
      batch. a₂ is never a₁ (Oat's argmax includes a₁, whose variance is 0: it is picked only
      when every variance is 0, and the identical pair is then masked out of the loss).
    * Model-labelled pairs keep the model's label and never reach the oracle. Oat also sends them
      to the oracle without counting them and trains the policy on the oracle's label, and its
      reward model trains on them through a loss mask that broadcasts; copying that would give
      the agent oracle labels for free.
    * The reward model's buffer holds 4096 pairs, not 50 000 (:func:`oat_ensemble`: every oracle
      pair of the toy benchmark); everything else of the ensemble is Oat's.
    * ``num_candidates=8``: Oat's generic default is 2 (``num_samples``) and its README runs SEA
      with 10; 8 is the toy tier's setting, the proposer's cost growing with M.
    * The policy's optimiser is the agent's default (clip at norm 1, Adam 1e-3, one step per round
      of B pairs): Oat's (Adam 5e-7 on a cosine schedule, one step per 128 pairs) is set for a
      billion-parameter LLM, not for the toy policy; pass ``optimizer=`` / ``policy_steps=``.
    * With ``rule='ee_ts'``, up to 8 other members are tried (with replacement) before the
      member's second best is played; Oat tries every other member once and otherwise plays an
      identical pair.

    ``sea(reference, rule='ee_ts', gamma=1.0, reward_model=toy_policy_ensemble())`` is the plain
    E&E-TS variant: every pair to the oracle, 8 heads of 64 with prior functions.
    """
    rules = {"ee_ts": selection.EETS(), "bai_ts": selection.BAITS()}
    check_choice("sea", "rule", rule, tuple(rules))
    if variance is not None:
        if rule != "bai_ts":
            raise ValueError(f"sea: variance={variance!r} is not allowed with rule={rule!r}; it applies to 'bai_ts'")
        check_choice("sea", "variance", variance, selection.VARIANCE_KINDS)
        rules["bai_ts"] = selection.BAITS(variance=variance)
    check_float("sea", "gamma", gamma, low=0.0, high=1.0)
    check_choice("sea", "mixing", mixing, MIXING_DRAWS)
    check_int("sea", "burn_in", burn_in, low=0)
    if gamma == 1.0:
        labeler = OracleLabeler()
    else:
        labeler = MixedLabeler(gamma, model_pair, draw=mixing, burn_in=burn_in)
    return AlignmentAgent(
        reference,
        proposer=PolicySamples(num_candidates),
        selector=rules[rule],
        scorer=EnsembleScores(),
        labeler=labeler,
        reward_model=oat_ensemble() if reward_model is None else reward_model,
        policy_loss=loss,
        name=f"sea_{rule}" + ("" if gamma == 1.0 else f"_gamma{gamma:g}"),
        **kwargs,
    )


def apl(
    reference, *, num_candidates: int = 8, query_fraction: float = 0.5, loss: DAPLoss = DAPLoss("dpo"), **kwargs
) -> AlignmentAgent:
    """APL (Muldrew et al. 2024): query the highest-entropy prompts, on the pair of largest implicit-reward margin."""
    return AlignmentAgent(
        reference,
        proposer=PolicySamples(num_candidates),
        selector=selection.MaxMargin(),
        scorer=ImplicitReward(loss.beta),
        labeler=EntropyQueries(query_fraction),
        policy_loss=loss,
        name="apl",
        **kwargs,
    )


def xpo(reference, *, alpha: float = 1e-2, loss: DAPLoss = DAPLoss("dpo"), **kwargs) -> AlignmentAgent:
    """XPO (Xie et al. 2024): one π_θ and one π_ref sample; DPO plus α·E[log π_θ(ỹ)], ỹ ~ π_ref."""
    check_float("xpo", "alpha", alpha, low=0.0, low_inclusive=False)
    return AlignmentAgent(
        reference,
        proposer=PolicyAndReference(),
        selector=selection.Passive(),
        policy_loss=loss,
        policy_terms=(XPOTerm(alpha),),
        name="xpo",
        **kwargs,
    )


def ee4llm(
    reference,
    *,
    num_candidates: int = 8,
    rule: str = "double_ts",
    reward_model: RewardModel | None = None,
    best_of_n: int = 8,
    **kwargs,
) -> AlignmentAgent:
    """EE4LLM-style (Dwaracherla et al. 2024): reward ensemble only, double TS or infomax over π_ref
    candidates; the policy is never trained and is evaluated as best-of-N under the ensemble mean."""
    rules = {"double_ts": selection.EnsembleDoubleTS(), "infomax": selection.Infomax()}
    check_choice("ee4llm", "rule", rule, tuple(rules))
    return AlignmentAgent(
        reference,
        proposer=ReferenceSamples(num_candidates),
        selector=rules[rule],
        scorer=EnsembleScores(),
        reward_model=toy_policy_ensemble() if reward_model is None else reward_model,
        policy_loss=None,
        recommender=BestOfN(best_of_n),
        name=f"ee4llm_{rule}",
        **kwargs,
    )


def nash_md(reference, *, mixture_beta: float = 0.125, loss: DAPLoss = DAPLoss("ipo"), **kwargs) -> AlignmentAgent:
    """Nash-MD / online IPO (Munos et al. 2023; Calandriello et al. 2024): pairs from the geometric
    mixture π_θ^{1−β}π_ref^{β}, IPO loss."""
    return AlignmentAgent(
        reference, proposer=GeometricMixtureSamples(2, mixture_beta), policy_loss=loss, name="nash_md", **kwargs
    )


def sail(
    reference,
    *,
    variant: str = "pr",
    coefficient: float = 0.3,
    policy_label_fraction: float = 0.5,
    budget: int | None = None,
    loss: DAPLoss = DAPLoss("dpo"),
    **kwargs,
) -> AlignmentAgent:
    """SAIL (Ding et al. 2024, "SAIL: Self-Improving Efficient Online Alignment of Large Language
    Models", arXiv 2406.15567): DPO plus the self-improving gradient term.

    The single-level objective ``J(θ) = E_{x,(y_w,y_l)~q_θ}[ℓ_θ]``, ``ℓ_θ = log σ(βΔ_θ)``, has the
    gradient ``E[∇ℓ_θ] + E[ℓ_θ ∇log q_θ]``; the second part is added through
    :func:`cdb.losses.sail_term` (a stop-gradient surrogate). Variants by where responses and
    labels come from:

    * ``'pr'`` — online DPO on two π_θ samples, labels from the oracle:
      ``∇log q_θ = ∇log π_θ(y_w) + ∇log π_θ(y_l)``;
    * ``'pp'`` — as ``'pr'``, but a fraction ``policy_label_fraction`` of the prompts is labelled by
      the policy's own preference, sampled ``z ~ Bernoulli(σ(β·Δ_θ))`` (never sent to the oracle),
      which adds the label term ``ℓ_θ ∇ℓ_θ`` for those pairs;
    * ``'dp'`` (name ``sail_dp``) — offline DPO's composition (:func:`offline_dpo`): a fixed dataset
      of ``budget`` pairs of π_ref samples, labelled once by the oracle in the first rounds
      (``budget`` queries in all, none after), and on each minibatch of it the loss::

          −log σ(βΔ_θ) + ρ · sg(−ℓ_θ) · ℓ_θ,   gradient   −∇ℓ_θ − ρ ℓ_θ ∇ℓ_θ = ∇[−ℓ_θ − ½ρ ℓ_θ²]

      (ρ = ``coefficient``; :func:`cdb.losses.sail_term` with ``variant='dp'``). The responses are
      fixed, so only the label term remains; as in the authors' code (``−½ρ·logsigmoid(βΔ)²``) it
      is evaluated at the dataset's oracle labels, whereas the derivation takes labels sampled from
      π_θ's own Bradley–Terry model.

    ``coefficient`` defaults to 0.3, the authors' released configuration (their DPR γ); with 1.0
    the surrogate's variance destabilised training on SequenceDuel (measured in the benchmark).
    The same default is used for ``'dp'``'s ρ without a measured reason. ``budget`` (the dataset
    size N) is required by ``'dp'`` and refused by the others.
    """
    check_choice("sail", "variant", variant, ("pr", "pp", "dp"))
    check_float("sail", "coefficient", coefficient, low=0.0, low_inclusive=False)
    if variant == "dp":
        check_int("sail", "budget", budget, low=1)
        agent = offline_dpo(reference, budget, loss=loss, policy_terms=(SAILTerm(coefficient, loss.beta),), **kwargs)
        return dataclasses.replace(agent, name="sail_dp")
    if budget is not None:
        raise ValueError(f"sail.budget={budget!r} is not allowed with variant={variant!r}; expected None (or 'dp')")
    if variant == "pr":
        return AlignmentAgent(
            reference,
            proposer=PolicySamples(2),
            policy_loss=loss,
            policy_terms=(SAILTerm(coefficient, loss.beta),),
            name="sail_pr",
            **kwargs,
        )
    check_float("sail", "policy_label_fraction", policy_label_fraction, low=0.0, high=1.0)
    labeler = MixedLabeler(1.0 - policy_label_fraction, model_pair="selected", label_mode="sample")
    return AlignmentAgent(
        reference,
        proposer=PolicySamples(2),
        scorer=ImplicitReward(loss.beta),
        labeler=labeler,
        policy_loss=loss,
        policy_terms=(SAILTerm(coefficient, loss.beta),),
        name="sail_pp",
        **kwargs,
    )
