"""Agents, each assembled from the parts in ``cdb`` (docs/design.md §4). Installed as ``cdb.agents``.

Tier 1 (arm features):

* reward-model agents — :func:`passive`, :func:`greedy_pair`, :func:`ee_ts`, :func:`bai_ts`,
  :func:`uncertainty`, :func:`infomax`, :func:`ensemble_double_ts`, :func:`boltzmann`: one
  :class:`RewardModelAgent` with different selection rules;
* linear — :class:`MaxInP` (Saha 2021), :class:`CoLSTIM` (Bengs et al. 2022);
* optimal design — :class:`OptimalDesignAgent` (label-free sequential D-optimal design) and
  :func:`run_offline_design` (Scheid et al. 2024: the whole query set up front);
* K-armed — :class:`DoubleThompsonSampling` (Wu & Liu 2016), :class:`RUCB` (Zoghi et al. 2014).

Tiers 2-3 (token sequences, ``SequenceDuel`` / ``LLMDuel``): one :class:`AlignmentAgent`
(:mod:`cdb.agents.alignment`) and its presets (:mod:`cdb.agents.alignment_presets`) —
:func:`offline_dpo`, :func:`frozen_sampler_dpo`, :func:`online_dap` (:func:`online_dpo`,
:func:`online_ipo`, :func:`online_slic`), :func:`sea`, :func:`apl`, :func:`xpo`, :func:`ee4llm`,
:func:`nash_md`, :func:`sail`.

Reward-ensemble recipes (:mod:`cdb.agents.ensembles`): :func:`arm_feature_ensemble` (tier 1),
:func:`toy_policy_ensemble` (EE4LLM's default), :func:`oat_ensemble` (SEA's, as its authors train it).
"""

from cdb.agents.alignment import AlignmentAgent, policy_optimizer
from cdb.agents.alignment_presets import (
    apl,
    ee4llm,
    frozen_sampler_dpo,
    nash_md,
    offline_dpo,
    online_dap,
    online_dpo,
    online_ipo,
    online_slic,
    sail,
    sea,
    xpo,
)
from cdb.agents.ensembles import arm_feature_ensemble, oat_ensemble, toy_policy_ensemble
from cdb.agents.karmed import RUCB, DoubleThompsonSampling
from cdb.agents.linear import CoLSTIM, LinearDuelingAgent, MaxInP
from cdb.agents.optimal_design import OfflineOptimalDesign, OptimalDesignAgent, run_offline_design
from cdb.agents.reward_model_agent import (
    RewardModelAgent,
    bai_ts,
    boltzmann,
    ee_ts,
    ensemble_double_ts,
    greedy_pair,
    infomax,
    passive,
    uncertainty,
)

__all__ = [
    "RUCB",
    "AlignmentAgent",
    "CoLSTIM",
    "DoubleThompsonSampling",
    "LinearDuelingAgent",
    "MaxInP",
    "OfflineOptimalDesign",
    "OptimalDesignAgent",
    "RewardModelAgent",
    "bai_ts",
    "boltzmann",
    "ee_ts",
    "ensemble_double_ts",
    "greedy_pair",
    "infomax",
    "passive",
    "run_offline_design",
    "uncertainty",
    "apl",
    "arm_feature_ensemble",
    "ee4llm",
    "frozen_sampler_dpo",
    "nash_md",
    "oat_ensemble",
    "offline_dpo",
    "online_dap",
    "online_dpo",
    "online_ipo",
    "online_slic",
    "policy_optimizer",
    "sail",
    "sea",
    "toy_policy_ensemble",
    "xpo",
]
