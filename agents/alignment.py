"""Agents that align a policy from online preference feedback (tiers 2-3), assembled from parts.

One class, :class:`AlignmentAgent`, runs every agent of the SEA paper's comparison (Liu et al.
2024, "Sample-Efficient Alignment for LLMs"); they differ by configuration only:

* offline DPO — π_ref, M=2 → random pair → the first N pairs to the oracle → DPO on that dataset;
* frozen-sampler DPO — π_ref, M=2 → random pair → oracle → DPO online;
* online DPO / IPO / SLiC — π_θ, M=2 → random pair → oracle → DAP online;
* SEA — π_θ, M → ensemble scores → BAI-TS / E&E-TS → the oracle, or (mixed preference learning,
  after a burn-in) a fixed share of the prompts labelled by a random member and never sent to
  the oracle → DAP on both + the reward model on oracle pairs;
* APL — π_θ, M → implicit reward → max margin → the highest-entropy prompts → DPO online;
* XPO — one π_θ and one π_ref sample → the pair → oracle → DPO + α·log π_θ(ỹ_ref);
* EE4LLM — π_ref, M → ensemble → double TS / infomax → oracle → the reward model only
  (best-of-N policy);
* Nash-MD / online IPO — the geometric mixture π_θ^{1−β}π_ref^{β}, M=2 → random pair → oracle → IPO;
* SAIL-PR / PP — π_θ, M=2 → random pair → oracle / the policy's own preference → DPO + self-improving term;
* SAIL-DP — offline DPO's dataset → DPO + SAIL's preference term on the dataset pairs.

The presets (:func:`~cdb.agents.alignment_presets.sea`, ...) live in
:mod:`cdb.agents.alignment_presets` and are exported by ``cdb.agents``.

Every part is called one way, with a key when it draws randomness and one input::

    candidates = proposer(key, ProposerInputs(...))    # cdb.proposers: Candidates [B, M, L]
    scores     = scorer(ScorerInputs(...))             # cdb.scorers: [B, E, M]
    pairs      = select_pairs(selector, key, scores)   # cdb.selection: rule(key, scores [E, M]) per prompt
    labels     = labeler(key, LabelerInputs(...))      # cdb.labelers: oracle queries vs model labels
    arms       = recommender(key, RecommendInputs(...))  # cdb.recommenders: the BAI recommendation

A round, for a batch of B prompts::

    candidates [B, M, L]  = proposer(π_θ, π_ref, prompts)   # with the sampler's own log-probs
    features [B, M, D]    = features(candidates)            # π_ref's pass over every candidate only if read
    scores [B, E, M]      = scorer(candidates)              # ensemble members / implicit reward / zeros
    pairs [B, 2]          = selector(scores)
    labels                = labeler(pairs, scores)
    log π_ref of the pair (one teacher-forced pass, each prompt once)
    ... the environment answers the queried pairs ...
    reward model  ← Bradley–Terry on oracle pairs only
    policy        ← Σ terms on a PairBatch (cdb.objectives: the DAP loss on oracle and
                    model-labelled pairs, + XPO / SAIL terms)

SAIL's term follows each pair's route (``PairBatch.routes``): π_θ's samples labelled by the oracle
get the ``'pr'`` term, those labelled by the policy's own sampled preference the ``'pp'`` term,
and the pairs of an offline labeler's dataset (fixed π_ref responses) the ``'dp'`` term.

The reference policy is given the way an SFT checkpoint would be: ``reference`` holds the model
definition and its params — ``SequenceDuel.reference`` (tier 2) or a :class:`cdb.models.Pretrained`
(tier 3). π_θ starts as a float32 copy of π_ref (or only some of its leaves train, ``trainable``:
LoRA adapters over a frozen base); its forward passes run in π_ref's dtype. Lengths, ``eos_id``
and ``pad_id`` come from the environment's :class:`~cdb.types.EnvSpec`: tier-3 prompts arrive
left-padded with ``obs.prompt_mask`` and responses end at EOS; every log-prob, loss and feature
counts the real tokens only.

Policy updates: ``policy_steps`` optimiser steps per round (an ``optax.GradientTransformation``,
by default clipping at global norm 1 then Adam 1e-3), each on the gradient of the round's batch
accumulated over ``gradient_accumulation`` micro-batches. Every term of the loss is a weighted
mean ``Σ_i w_i ℓ_i / Σ_i w_i`` over the batch; micro-batch ``k`` contributes
``Σ_{i∈k} w_i ℓ_i / Σ_i w_i`` (its own weighted mean times its share of the batch's weight), so the
accumulated gradient is exactly the full-batch gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from cdb import selection
from cdb.ensemble import RewardModel
from cdb.features import FeatureMap, reference_hidden_features
from cdb.labelers import Labeler, LabelerInputs, Labels, OracleLabeler
from cdb.losses import DAPLoss
from cdb.objectives import DAPTerm, PairBatch, PairScores, PolicyTerm, objective, part_totals
from cdb.proposers import PolicySamples, Proposer, ProposerInputs
from cdb.recommenders import GreedyDecoding, Recommender, RecommendInputs
from cdb.scorers import NoScores, Scorer, ScorerInputs
from cdb.sequences import ResponseScores, repeat_prompts, response_mask, score_candidates
from cdb.types import Duel, EnvSpec, Feedback, Observation
from cdb.validation import check_float, check_int

Array = jax.Array


def policy_optimizer(learning_rate: float | optax.Schedule = 1e-3, *, max_norm: float = 1.0):
    """The default policy optimiser: clip the gradient at global norm ``max_norm``, then Adam.

    ``learning_rate`` is a float or an ``optax`` schedule (e.g. ``optax.warmup_cosine_decay_schedule``).
    """
    if not callable(learning_rate):
        check_float("policy_optimizer", "learning_rate", learning_rate, low=0.0, low_inclusive=False)
    check_float("policy_optimizer", "max_norm", max_norm, low=0.0, low_inclusive=False)
    return optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(learning_rate))


DEFAULT_OPTIMIZER = policy_optimizer()


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """The static token shapes of an environment (from its :class:`~cdb.types.EnvSpec` at ``init``).

    Attributes:
      prompt_length: Lp; response_length: L.
      eos_id: the token ending a response (``None``: fixed-length responses, tier 2).
      pad_id: the token after an EOS.
    """

    prompt_length: int
    response_length: int
    eos_id: int | None = None
    pad_id: int = 0


@struct.dataclass
class PairDataset:
    """A fixed-size dataset of labelled pairs (offline DPO): ``[N, ...]`` arrays and a fill count."""

    prompts: Array
    prompt_mask: Array
    chosen: Array
    rejected: Array
    ref_chosen: Array
    ref_rejected: Array
    size: Array


_PAIR_FIELDS = ("prompts", "prompt_mask", "chosen", "rejected", "ref_chosen", "ref_rejected")


@struct.dataclass
class AlignmentState:
    """All an alignment agent carries between rounds.

    Attributes:
      policy_params: π_θ's parameters (``None`` when the policy is never trained).
      opt_state: the policy optimiser's state.
      reward_model: the ensemble's state (``None`` without one).
      queries: oracle queries so far.
      dataset: the offline pair dataset (``None`` unless the labeler is a :class:`QueryBudget`).
      layout: the environment's static :class:`TokenLayout` (not a leaf: static under ``jit``).
    """

    policy_params: Any
    opt_state: Any
    reward_model: Any
    queries: Array
    dataset: Any = None
    layout: TokenLayout | None = struct.field(pytree_node=False, default=None)


def _check_part(owner: str, field: str, value: Any, protocol: type, hint: str) -> None:
    if isinstance(value, str):
        raise ValueError(f"{owner}: {field}={value!r} is not allowed (no string switches); expected {hint}")
    if not isinstance(value, protocol):
        raise ValueError(f"{owner}: {field}={value!r} is not a {protocol.__name__}; expected {hint}")


@dataclasses.dataclass(frozen=True, eq=False)
class AlignmentAgent:
    """proposer → scorer → selector → labeler → learners, on a policy initialised from ``reference``.

    Attributes:
      reference: the SFT reference policy (``.policy`` model definition, ``.params``):
        ``SequenceDuel.reference`` (tier 2, which also fixes the lengths) or a
        :class:`cdb.models.Pretrained` (tier 3, lengths from the environment).
      proposer: a :class:`cdb.proposers.Proposer` (where the M candidates come from).
      selector: a :class:`cdb.selection.SelectionRule`, applied to the scores ``[E, M]`` of each prompt.
      scorer: a :class:`cdb.scorers.Scorer` — :class:`~cdb.scorers.EnsembleScores` (reward model on
        ``features``), :class:`~cdb.scorers.ImplicitReward` (``β·log π_θ/π_ref``) or
        :class:`~cdb.scorers.NoScores`.
      labeler: a :class:`cdb.labelers.Labeler`.
      reward_model: a :class:`cdb.ensemble.RewardModel` (required by the ensemble scorer, by
        best-of-N recommendations; trained on oracle pairs whenever present).
      features: a :class:`cdb.features.FeatureMap` of the reward model; default the frozen π_ref's
        last hidden state at the last real token (pluggable, e.g. a frozen sentence encoder).
      policy_loss: the DAP loss of the policy (:class:`cdb.losses.DAPLoss`), or ``None`` to never
        train the policy (EE4LLM).
      optimizer: the policy's ``optax.GradientTransformation`` (default :func:`policy_optimizer`:
        clip at global norm 1, Adam 1e-3).
      policy_steps: optimiser steps on each round's pairs.
      gradient_accumulation: k, micro-batches per step (the batch's rows must divide by k); the
        accumulated gradient equals the full-batch gradient (module docstring).
      trainable: ``params -> pytree of bool`` (the structure of the params), the leaves that train
        (e.g. ``cdb.models.lora.lora_trainable``: adapters only, π_ref is the frozen base); ``None``:
        every leaf. Frozen leaves get no gradient and no optimiser state.
      policy_terms: terms of the policy's objective besides the DAP loss (:mod:`cdb.objectives`):
        :class:`~cdb.objectives.XPOTerm` (XPO, Xie et al. 2024; needs a proposer that provides a
        π_ref sample, :class:`~cdb.proposers.PolicyAndReference`), :class:`~cdb.objectives.SAILTerm`
        (SAIL, Ding et al. 2024; its variant follows each pair's route: ``'pr'`` / ``'pp'`` online,
        ``'dp'`` on an offline labeler's dataset).
      recommender: a :class:`cdb.recommenders.Recommender` (``GreedyDecoding()``, ``DeRa(lam)``, ``BestOfN(n)``).
      name: a label for results.
    """

    reference: Any
    proposer: Proposer = PolicySamples(2)
    selector: selection.SelectionRule = selection.Passive()
    scorer: Scorer = NoScores()
    labeler: Labeler = OracleLabeler()
    reward_model: RewardModel | None = None
    features: FeatureMap = reference_hidden_features
    policy_loss: DAPLoss | None = DAPLoss()
    optimizer: optax.GradientTransformation = DEFAULT_OPTIMIZER
    policy_steps: int = 1
    gradient_accumulation: int = 1
    trainable: Callable[[Any], Any] | None = None
    policy_terms: tuple[PolicyTerm, ...] = ()
    recommender: Recommender = GreedyDecoding()
    name: str = "alignment_agent"

    def __post_init__(self):
        _check_part(self.name, "proposer", self.proposer, Proposer, "a cdb.proposers part, e.g. PolicySamples(2)")
        _check_part(
            self.name, "selector", self.selector, selection.SelectionRule, "a cdb.selection rule, e.g. Passive()"
        )
        _check_part(
            self.name,
            "scorer",
            self.scorer,
            Scorer,
            "a cdb.scorers part: EnsembleScores(), ImplicitReward(beta), NoScores()",
        )
        _check_part(self.name, "labeler", self.labeler, Labeler, "a cdb.labelers part, e.g. OracleLabeler()")
        _check_part(
            self.name,
            "recommender",
            self.recommender,
            Recommender,
            "a cdb.recommenders part: GreedyDecoding(), DeRa(lam), BestOfN(n)",
        )
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise ValueError(
                f"{self.name}: optimizer={self.optimizer!r} is not allowed; expected an optax.GradientTransformation "
                "(e.g. cdb.agents.alignment.policy_optimizer(1e-3))"
            )
        if self.trainable is not None and not callable(self.trainable):
            raise ValueError(f"{self.name}: trainable={self.trainable!r}; expected None or params -> pytree of bool")
        check_int(self, "policy_steps", self.policy_steps, low=1)
        check_int(self, "gradient_accumulation", self.gradient_accumulation, low=1)
        if not isinstance(self.policy_terms, tuple) or not all(isinstance(t, PolicyTerm) for t in self.policy_terms):
            raise ValueError(
                f"{self.name}: policy_terms={self.policy_terms!r} is not allowed; expected a tuple of cdb.objectives "
                "terms, e.g. (XPOTerm(0.01),)"
            )
        if self.labeler.uses_model_labels and not self.scorer.provides_labels:
            raise ValueError(
                f"{self.name}: labeler={type(self.labeler).__name__} labels pairs with the scorer's "
                f"model; scorer={type(self.scorer).__name__}() has none (use EnsembleScores or ImplicitReward)"
            )
        needs_rm = self.scorer.needs_reward_model or self.recommender.needs_reward_model
        if needs_rm and self.reward_model is None:
            raise ValueError(
                f"{self.name}: reward_model=None is not allowed with scorer={self.scorer!r}, "
                f"recommender={self.recommender!r}; expected a cdb.ensemble reward model"
            )
        members = self.scorer.num_members(self.reward_model)
        if members < self.selector.min_members:
            raise ValueError(
                f"{self.name}: reward_model.num_members={members} is out of range; "
                f"{type(self.selector).__name__} needs at least {self.selector.min_members}"
            )
        if self.proposer.num_candidates < 2:
            raise ValueError(f"{self.name}: proposer.num_candidates={self.proposer.num_candidates}; expected >= 2")
        if self.scorer.needs_policy_logprob and self.policy_loss is None:
            raise ValueError(
                f"{self.name}: scorer={self.scorer!r} scores with the trained policy; policy_loss=None "
                "(a policy that never trains) is not allowed with it"
            )
        if self.policy_terms and self.policy_loss is None:
            raise ValueError(f"{self.name}: policy_terms={self.policy_terms!r} need a trained policy; policy_loss=None")
        for term in self.policy_terms:
            term.check(self.name, self.proposer, self.labeler)

    # --- pieces --------------------------------------------------------------------------------

    @property
    def policy(self):
        return self.reference.policy

    @property
    def _trains_policy(self) -> bool:
        return self.policy_loss is not None

    @property
    def _terms(self) -> tuple:
        """The policy's objective: the DAP loss, then ``policy_terms``."""
        return (DAPTerm(self.policy_loss), *self.policy_terms)

    @property
    def _needs_reference_sample(self) -> bool:
        return any(term.needs_reference_sample for term in self._terms)

    def _trainable_mask(self, params):
        return None if self.trainable is None else self.trainable(params)

    def _optimizer(self) -> optax.GradientTransformation:
        """``optimizer`` on the trainable leaves; the frozen ones get no update and no state."""
        if self.trainable is None:
            return self.optimizer

        def labels(params):
            return jax.tree.map(lambda t: "train" if t else "frozen", self.trainable(params))

        return optax.multi_transform({"train": self.optimizer, "frozen": optax.set_to_zero()}, labels)

    def init(self, key: Array, spec: EnvSpec) -> AlignmentState:
        if spec.prompt_length is None or spec.response_length is None:
            raise ValueError(
                f"{self.name} needs a token environment (EnvSpec.prompt_length, response_length); got {spec}"
            )
        fixed = (getattr(self.reference, "prompt_length", None), getattr(self.reference, "response_length", None))
        if fixed != (None, None) and (spec.prompt_length, spec.response_length) != fixed:
            raise ValueError(
                f"{self.name}: the environment has prompt_length={spec.prompt_length}, "
                f"response_length={spec.response_length}; the reference policy was built for "
                f"prompt_length={fixed[0]}, response_length={fixed[1]}"
            )
        config = self.policy.config
        if spec.prompt_length + spec.response_length > config.max_len:
            raise ValueError(
                f"{self.name}: prompt_length={spec.prompt_length} + response_length={spec.response_length} "
                f"exceeds the reference's max_len={config.max_len}; expected a total <= max_len"
            )
        if spec.vocab_size is not None and spec.vocab_size > config.vocab_size:
            raise ValueError(
                f"{self.name}: EnvSpec.vocab_size={spec.vocab_size} exceeds the reference's vocab_size="
                f"{config.vocab_size}; expected at most {config.vocab_size}"
            )
        layout = TokenLayout(spec.prompt_length, spec.response_length, spec.eos_id, spec.pad_id)
        params = self._master_params() if self._trains_policy else None
        opt_state = self._optimizer().init(params) if self._trains_policy else None
        rm_state = None
        if self.reward_model is not None:
            rm_state = self.reward_model.init(key, self._feature_dim(layout))
        dataset = None
        if self.labeler.offline:
            n, lp, length = self.labeler.budget, spec.prompt_length, spec.response_length
            dataset = PairDataset(
                prompts=jnp.zeros((n, lp), jnp.int32),
                prompt_mask=jnp.ones((n, lp), bool),
                chosen=jnp.zeros((n, length), jnp.int32),
                rejected=jnp.zeros((n, length), jnp.int32),
                ref_chosen=jnp.zeros((n,), jnp.float32),
                ref_rejected=jnp.zeros((n,), jnp.float32),
                size=jnp.zeros((), jnp.int32),
            )
        return AlignmentState(params, opt_state, rm_state, jnp.zeros((), jnp.int32), dataset, layout)

    def _feature_dim(self, layout: TokenLayout) -> int:
        """D of the feature map, from its output shape on abstract inputs (nothing is computed)."""
        n, d_model = 1, self.policy.config.d_model
        ref = ResponseScores(
            jnp.zeros((n,)), jnp.zeros((n, layout.response_length)), jnp.zeros((n, d_model)), jnp.zeros((n,))
        )
        prompts = jnp.zeros((n, layout.prompt_length), jnp.int32)
        responses = jnp.zeros((n, layout.response_length), jnp.int32)
        masks = {}
        if layout.eos_id is not None:
            masks = {"prompt_mask": jnp.ones(prompts.shape, bool), "response_mask": jnp.ones(responses.shape, bool)}
        return int(jax.eval_shape(lambda *a: self.features(*a, **masks), ref, prompts, responses).shape[-1])

    def _policy_params(self, state: AlignmentState):
        """π_θ's parameters for a forward pass: the float32 master copy cast to the model's dtype."""
        return self._compute(state.policy_params) if self._trains_policy else self.reference.params

    def _master_params(self):
        """π_θ's initial master weights: π_ref's, with every trained floating leaf in float32."""
        params = self.reference.params
        mask = self._trainable_mask(params)
        if mask is None:
            mask = jax.tree.map(lambda _: True, params)

        def master(x, trained):
            return x.astype(jnp.float32) if trained and jnp.issubdtype(x.dtype, jnp.floating) else x

        return jax.tree.map(master, params, mask)

    def _compute(self, params):
        """``params`` in the reference's parameter dtype (bfloat16 for ``load_pretrained(dtype=jnp.bfloat16)``).

        π_θ trains on float32 master weights with a float32 optimiser state; its forward passes
        (sampling, scoring, the loss) run in the model's dtype, and the gradient flows back
        through the cast to the masters.
        """
        dtype = self.policy.config.param_dtype
        return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

    def _features(self, ref: ResponseScores, prompts, responses, prompt_mask, rmask) -> Array:
        if prompt_mask is None and rmask is None:
            return self.features(ref, prompts, responses)
        return self.features(ref, prompts, responses, prompt_mask=prompt_mask, response_mask=rmask)

    def _uses_reference_pass(self) -> bool:
        return self.reward_model is not None and getattr(self.features, "uses_reference_pass", True)

    def _candidate_features(self, ref: ResponseScores | None, prompts, prompt_mask, candidates, cmask) -> Array:
        """Reward-model features ``[B, K, D]`` of candidates ``[B, K, L]`` (the feature map sees flat rows)."""
        batch, k, length = candidates.shape
        flat_ref = None if ref is None else jax.tree.map(lambda x: x.reshape(batch * k, *x.shape[2:]), ref)
        feats = self._features(
            flat_ref,
            repeat_prompts(prompts, k),
            candidates.reshape(batch * k, length),
            repeat_prompts(prompt_mask, k),
            None if cmask is None else cmask.reshape(batch * k, length),
        )
        return feats.reshape(batch, k, -1)

    def reward_scores(self, state: AlignmentState, prompts, prompt_mask, candidates, cmask) -> Array:
        """The reward members' scores ``[E, B, K]`` of candidates ``[B, K, L]`` of prompts ``[B, Lp]``."""
        ref = None
        if self._uses_reference_pass():
            ref = score_candidates(self.policy, self.reference.params, prompts, candidates, prompt_mask, cmask)
        feats = self._candidate_features(ref, prompts, prompt_mask, candidates, cmask)
        return self.reward_model.scores(state.reward_model, feats)

    # --- the agent API -------------------------------------------------------------------------

    def select(self, key: Array, state: AlignmentState, obs: Observation) -> tuple[Duel, dict]:
        prompts, prompt_mask, layout = obs.prompts, obs.prompt_mask, state.layout
        chex.assert_rank(prompts, 2)
        length = layout.response_length
        k_propose, k_select, k_label = jax.random.split(key, 3)
        policy_params = self._policy_params(state)
        inputs = ProposerInputs(
            self.policy,
            policy_params,
            self.reference.params,
            prompts,
            prompt_mask,
            length,
            layout.eos_id,
            layout.pad_id,
        )
        proposed = self.proposer(k_propose, inputs)
        candidates = proposed.tokens  # [B, M, L]
        m = candidates.shape[1]
        cmask = response_mask(candidates, layout.eos_id)

        def score(params, responses, rmask):
            return score_candidates(self.policy, params, prompts, responses, prompt_mask, rmask)

        # log π_θ of the candidates: the sampler's own when it sampled from π_θ, else one pass
        policy_logprob = proposed.policy_logprob
        needs_policy_logprob = (
            self.scorer.needs_policy_logprob or self.labeler.needs_policy_logprob or self.proposer.from_policy
        )
        if needs_policy_logprob and policy_logprob is None:
            policy_logprob = score(policy_params, candidates, cmask).logprob
        # π_ref over every candidate only where a part reads it; otherwise over the played pair below
        ref_all, ref_logprob = None, proposed.reference_logprob
        if (self.scorer.needs_reference_logprob and ref_logprob is None) or self._uses_reference_pass():
            ref_all = score(self.reference.params, candidates, cmask)
            ref_logprob = ref_all.logprob
        feats = None
        if self.reward_model is not None:
            feats = self._candidate_features(ref_all, prompts, prompt_mask, candidates, cmask)
        inputs = ScorerInputs(self.reward_model, state.reward_model, feats, policy_logprob, ref_logprob, candidates)
        scores = self.scorer(inputs)
        pairs = selection.select_pairs(self.selector, k_select, scores)
        labels: Labels = self.labeler(k_label, LabelerInputs(pairs, scores, policy_logprob, state.queries))
        arms = jnp.take_along_axis(candidates, labels.pairs[:, :, None], axis=1)  # [B, 2, L]
        info = {"model_labelled": jnp.sum(labels.model_trained).astype(jnp.int32)}
        # π_ref's log-probs of the played pair (the DAP loss's reference term) and, for the KL
        # estimate, of candidate 0, an unbiased π_θ sample whatever the selector chose (with M = 2
        # every pair holds it)
        played = labels.pairs if m == 2 or not self.proposer.from_policy else jnp.pad(labels.pairs, ((0, 0), (0, 1)))
        if ref_logprob is not None:
            ref_played = jnp.take_along_axis(ref_logprob, played, axis=1)
        elif self._trains_policy or self.proposer.from_policy:
            rows = jnp.take_along_axis(candidates, played[:, :, None], axis=1)
            ref_played = score(self.reference.params, rows, response_mask(rows, layout.eos_id)).logprob
        else:
            ref_played = jnp.zeros(played.shape, jnp.float32)
        if self.proposer.from_policy:
            # KL(π_θ ‖ π_ref) estimated on the policy's own samples: E_y~π_θ[log π_θ(y) − log π_ref(y)]
            if ref_all is not None:
                info["kl"] = jnp.mean(policy_logprob - ref_logprob)
            else:
                first = jnp.argmax(played == 0, axis=1)
                info["kl"] = jnp.mean(policy_logprob[:, 0] - jnp.take_along_axis(ref_played, first[:, None], 1)[:, 0])
        aux = {
            "ref_logprob": ref_played[:, :2],  # [B, 2]
            "model_label": labels.model_label,
            "model_trained": labels.model_trained,
            "features": None if feats is None else jnp.take_along_axis(feats, labels.pairs[:, :, None], axis=1),
            "reference_sample": proposed.reference_sample if self._needs_reference_sample else None,
        }
        return Duel(arms=arms, query=labels.query, aux=aux), info

    def update(self, key: Array, state: AlignmentState, obs: Observation, duel: Duel, feedback: Feedback):
        aux, info = duel.aux, {}
        oracle = feedback.queried
        state = state.replace(queries=state.queries + jnp.sum(oracle, dtype=jnp.int32))
        if self.reward_model is not None:
            feats = aux["features"]
            rm_state, rm_info = self.reward_model.update(
                key, state.reward_model, feats[:, 0], feats[:, 1], feedback.preference, oracle
            )
            state = state.replace(reward_model=rm_state)
            info.update(rm_info)
        if not self._trains_policy:
            return state, info
        label = jnp.where(oracle, feedback.preference, aux["model_label"])
        first_wins = label > 0.5
        batch = PairBatch(
            prompts=obs.prompts,
            prompt_mask=obs.prompt_mask,
            chosen=jnp.where(first_wins[:, None], duel.arms[:, 0], duel.arms[:, 1]),
            rejected=jnp.where(first_wins[:, None], duel.arms[:, 1], duel.arms[:, 0]),
            ref_chosen=jnp.where(first_wins, aux["ref_logprob"][:, 0], aux["ref_logprob"][:, 1]),
            ref_rejected=jnp.where(first_wins, aux["ref_logprob"][:, 1], aux["ref_logprob"][:, 0]),
            weight=(oracle | aux["model_trained"]).astype(jnp.float32),
            # each pair's route (SAIL's variant): π_θ's samples with oracle labels / with the policy's own labels
            routes={"pr": oracle.astype(jnp.float32), "pp": (~oracle & aux["model_trained"]).astype(jnp.float32)},
            reference_sample=aux["reference_sample"],
        )
        if self.labeler.offline:
            state, batch = self._offline_batch(key, state, batch, oracle)
        params, opt_state, loss_info = self._policy_steps(state.policy_params, state.opt_state, batch, state.layout)
        info.update(loss_info)
        return state.replace(policy_params=params, opt_state=opt_state), info

    def _offline_batch(self, key, state: AlignmentState, batch: PairBatch, oracle: Array):
        """Stores the queried pairs; once the dataset is full, trains on a uniform minibatch of it."""
        data = state.dataset
        masked = batch.prompt_mask is not None
        new = batch if masked else batch.replace(prompt_mask=jnp.ones(batch.prompts.shape, bool))
        slots = jnp.where(oracle, data.size + jnp.cumsum(oracle) - 1, data.prompts.shape[0])  # full: dropped
        data = data.replace(
            **{k: getattr(data, k).at[slots].set(getattr(new, k), mode="drop") for k in _PAIR_FIELDS},
            size=jnp.minimum(data.size + jnp.sum(oracle, dtype=jnp.int32), data.prompts.shape[0]),
        )
        full = data.size == data.prompts.shape[0]
        index = jax.random.randint(key, (batch.prompts.shape[0],), 0, data.prompts.shape[0])
        rows = {k: getattr(data, k)[index] for k in _PAIR_FIELDS}
        if not masked:
            rows["prompt_mask"] = None
        weight = jnp.full(index.shape, full, jnp.float32)
        # SAIL-DP: fixed (offline) responses, so only the preference term
        return state.replace(dataset=data), PairBatch(**rows, weight=weight, routes={"dp": weight})

    def policy_scores(self, params, batch: PairBatch, layout: TokenLayout) -> PairScores:
        """π_θ's one teacher-forced pass over a batch: chosen, rejected (and the π_ref sample) of each prompt,
        the prompt run once (:func:`cdb.sequences.score_candidates`)."""
        responses = [batch.chosen, batch.rejected]
        if self._needs_reference_sample:
            responses.append(batch.reference_sample)
        responses = jnp.stack(responses, axis=1)  # [B, 2 or 3, L]
        scored = score_candidates(
            self.policy,
            self._compute(params),
            batch.prompts,
            responses,
            batch.prompt_mask,
            response_mask(responses, layout.eos_id),
        )
        return PairScores(
            chosen=scored.logprob[:, 0],
            rejected=scored.logprob[:, 1],
            chosen_length=scored.length[:, 0],
            rejected_length=scored.length[:, 1],
            reference_sample=scored.logprob[:, 2] if self._needs_reference_sample else None,
        )

    def policy_objective(self, params, batch: PairBatch, layout: TokenLayout, totals: dict | None = None):
        """The policy's minimised objective on a batch of pairs: the sum of its terms
        (:func:`cdb.objectives.objective`: the DAP loss, then ``policy_terms``). Returns ``(loss, info)``.

        With ``totals`` (:func:`cdb.objectives.part_totals` of the full batch), ``batch`` is a
        micro-batch and each term is scaled by its share of the full batch's weight, so that the
        micro-batches' objectives sum to the full batch's.
        """
        return objective(self._terms, self.policy_scores(params, batch, layout), batch, totals)

    def policy_gradient(self, params, batch: PairBatch, layout: TokenLayout):
        """``(loss, info, grads)`` of :meth:`policy_objective` on ``batch``, accumulated over
        ``gradient_accumulation`` micro-batches of its rows (equal to the full-batch gradient).

        Frozen leaves (``trainable``) are held constant (``stop_gradient``): their gradient is 0.
        """
        mask = self._trainable_mask(params)

        def value(p, b, totals):
            if mask is not None:
                p = jax.tree.map(lambda x, t: x if t else jax.lax.stop_gradient(x), p, mask)
            return self.policy_objective(p, b, layout, totals)

        k = self.gradient_accumulation
        if k == 1:
            (loss, info), grads = jax.value_and_grad(value, has_aux=True)(params, batch, None)
            return loss, info, grads
        rows = batch.prompts.shape[0]
        if rows % k:
            raise ValueError(
                f"{self.name}: gradient_accumulation={k} does not divide the batch of {rows} pairs; "
                f"expected a divisor of {rows}"
            )
        totals = part_totals(self._terms, batch)
        micro = jax.tree.map(lambda x: x.reshape(k, rows // k, *x.shape[1:]), batch)

        def accumulate(carry, b):
            (loss, info), grads = jax.value_and_grad(value, has_aux=True)(params, b, totals)
            return jax.tree.map(jnp.add, carry, (loss, info, grads)), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: jax.value_and_grad(value, has_aux=True)(params, first, totals))
        (loss0, info0), grads0 = shapes
        init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss0, info0, grads0))
        (loss, info, grads), _ = jax.lax.scan(accumulate, init, micro)
        return loss, info, grads

    def _policy_steps(self, params, opt_state, batch: dict, layout: TokenLayout):
        optimizer = self._optimizer()

        def step(carry, _):
            p, o = carry
            loss, info, grads = self.policy_gradient(p, batch, layout)
            updates, o = optimizer.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), (loss, info)

        if self.policy_steps == 1:
            # a loop of one step would make XLA carry π_θ and its optimiser state through a while
            # loop, which stops it from updating them in place and doubles the step's time
            (params, opt_state), (_, infos) = step((params, opt_state), None)
            infos = jax.tree.map(lambda x: x[None], infos)
        else:
            (params, opt_state), (_, infos) = jax.lax.scan(step, (params, opt_state), None, length=self.policy_steps)
        # the DAP loss proper (XPO / SAIL add terms whose values are surrogates, not losses)
        out = {"policy_loss": infos["dap_loss"][-1]}
        out.update({k: v[-1] for k, v in infos.items() if k in ("implicit_reward_margin", "preference_accuracy")})
        return params, opt_state, out

    def recommend(self, key: Array, state: AlignmentState, obs: Observation) -> Array:
        """The recommender's response per prompt ``[N, L]`` int32 (greedy π_θ, DeRa, or EE4LLM's best of N)."""
        layout = state.layout
        reward = None
        if self.reward_model is not None:

            def reward(prompts, prompt_mask, candidates, cmask):
                return jnp.mean(self.reward_scores(state, prompts, prompt_mask, candidates, cmask), axis=0)

        inputs = RecommendInputs(
            policy=self.policy,
            policy_params=self._policy_params(state),
            reference_params=self.reference.params,
            prompts=obs.prompts,
            prompt_mask=obs.prompt_mask,
            length=layout.response_length,
            eos_id=layout.eos_id,
            pad_id=layout.pad_id,
            reward=reward,
        )
        return self.recommender(key, inputs)
