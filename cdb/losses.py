"""Preference losses.

``bradley_terry_nll`` trains reward models; the direct-alignment (DAP) family trains policies.
All functions are pure, unbatched in spirit (they act elementwise) and jit-able.

DAP family (docs/design.md §6, one code path after GPO, Tang et al., 2024):

* :class:`DAPLoss` — frozen config; ``loss, info = DAPLoss(kind, beta, ...)(pc, pr, rc, rr)``
  for DPO / cDPO, IPO, SLiC, exponential, truncated quadratic, savage, SimPO, and mDPO / mIPO
  (``[N, k]`` inputs), with optional length normalisation (IPO's default), an optional SFT
  term and per-prompt weights;
* :func:`dap_objective` — the elementwise convex function ``f`` of each kind;
* :func:`implicit_reward`, :func:`multi_response_logratio`, :func:`weighted_mean`;
* :func:`xpo_term` — XPO's exploration term ``α · mean log π_θ(ỹ)``, ỹ ~ π_ref.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cdb.validation import check_choice, check_float

Array = jax.Array


def bradley_terry_nll(score_first: Array, score_second: Array, label: Array) -> Array:
    """Bradley–Terry negative log-likelihood, elementwise.

    With Δ = r(first) − r(second) and z = 1 when the first arm won,
    ``−[z log σ(Δ) + (1 − z) log σ(−Δ)]`` (Bradley & Terry, 1952). Numerically stable via
    ``log_sigmoid``; ``z`` may be soft (in [0, 1]).
    """
    delta = score_first - score_second
    return -(label * jax.nn.log_sigmoid(delta) + (1.0 - label) * jax.nn.log_sigmoid(-delta))


# ------------------------------------------------------------------------------------------ DAP

DAP_KINDS = ("dpo", "ipo", "slic", "exponential", "truncated_quadratic", "savage", "simpo")
_SMOOTHABLE = ("dpo", "simpo")
_LENGTH_NORMALISED = ("ipo", "simpo")  # DAPLoss.length_normalization=None


def implicit_reward(policy_logp: Array, ref_logp: Array, beta: float | Array) -> Array:
    """DPO's implicit reward ``β (log π_θ(y|x) − log π_ref(y|x))``, elementwise (Rafailov et al., 2023)."""
    return beta * (policy_logp - ref_logp)


def multi_response_logratio(policy_logp: Array, ref_logp: Array | None = None) -> Array:
    """Group log-ratio of k responses per prompt: ``[N, k] -> [N]``.

    ``(1/k) Σ_i [log π_θ(y_i|x) − log π_ref(y_i|x)]``, the mean over the trailing axis (the
    multi-sample mDPO / mIPO statistic of Wang et al., 2024, "Preference Optimization with
    Multi-Sample Comparisons"). With ``ref_logp=None`` it is the plain mean of ``policy_logp``.
    A 1-D input ``[N]`` (k = 1) is returned as its own log-ratio.
    """
    ratio = policy_logp if ref_logp is None else policy_logp - ref_logp
    return ratio if ratio.ndim == 1 else jnp.mean(ratio, axis=-1)


def dap_objective(
    kind: str,
    delta: Array,
    beta: float | Array,
    *,
    label_smoothing: float | Array = 0.0,
    simpo_margin: float | Array = 0.0,
) -> Array:
    """The convex function of the GPO family (Tang et al., 2024) applied elementwise to ``Δ``.

    ``Δ`` is the log-ratio margin ``[log π_θ(y_w) − log π_ref(y_w)] − [log π_θ(y_l) − log π_ref(y_l)]``
    (for ``'simpo'``: the length-normalised ``log π_θ(y_w)/|y_w| − log π_θ(y_l)/|y_l|``). With
    ``x = βΔ`` and ``ε = label_smoothing``:

    ========================  ===============================================================
    ``'dpo'``                 ``−(1−ε) log σ(x) − ε log σ(−x)``   (DPO; ε > 0 is cDPO)
    ``'ipo'``                 ``(Δ − 1/(2β))²``                   (Azar et al., 2023, τ = β)
    ``'slic'``                ``max(0, 1 − x)``                   (SLiC hinge, Zhao et al., 2023)
    ``'exponential'``         ``exp(−x)``
    ``'truncated_quadratic'`` ``max(0, 1 − x)²``
    ``'savage'``              ``1 / (1 + exp(x))² = σ(−x)²``
    ``'simpo'``               ``−(1−ε) log σ(x − γ) − ε log σ(γ − x)``  (Meng et al., 2024)
    ========================  ===============================================================

    IPO is GPO's squared loss: ``(Δ − 1/(2β))² = (2βΔ − 1)² / (4β²)``. Label smoothing applies
    to ``'dpo'`` and ``'simpo'`` only (it is ignored by the others); γ = ``simpo_margin``.
    Computed stably through ``log_sigmoid``; shapes are preserved.
    """
    x = beta * delta
    if kind == "dpo":
        return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(x) - label_smoothing * jax.nn.log_sigmoid(-x)
    if kind == "simpo":
        z = x - simpo_margin
        return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
    if kind == "ipo":
        return (delta - 1.0 / (2.0 * beta)) ** 2
    if kind == "slic":
        return jax.nn.relu(1.0 - x)
    if kind == "exponential":
        return jnp.exp(-x)
    if kind == "truncated_quadratic":
        return jax.nn.relu(1.0 - x) ** 2
    if kind == "savage":
        return jnp.exp(2.0 * jax.nn.log_sigmoid(-x))
    raise ValueError(f"dap_objective kind={kind!r} is not allowed; expected one of {DAP_KINDS}")


def weighted_mean(values: Array, weight: Array | None = None) -> Array:
    """``Σ w v / Σ w`` over all entries, and exactly 0 (with finite gradients) when ``Σ w = 0``.

    ``weight=None`` is the plain mean. Rows with zero weight must still hold finite values.
    """
    if weight is None:
        return jnp.mean(values)
    weight = jnp.broadcast_to(jnp.asarray(weight, values.dtype), values.shape)
    total = jnp.sum(weight)
    safe_total = jnp.where(total > 0, total, 1.0)
    return jnp.sum(weight * values) / safe_total


@dataclasses.dataclass(frozen=True)
class DAPLoss:
    """Direct-alignment loss, one code path for the GPO family (Tang et al., 2024).

    Per prompt ``n``, ``loss_n = f(βΔ_n) + sft_weight · nll_n`` with ``f`` from
    :func:`dap_objective`, and the returned loss is the ``weight``-ed mean over prompts::

        Δ = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]

    * **Length normalisation** (``length_normalization=True``): each response's log-ratio is
      divided by its length in tokens, ``|y_w|`` = ``chosen_length``, ``|y_l|`` = ``rejected_length``
      (then required; pass ones when the log-probs are already per-token means)::

          Δ = [log π_θ(y_w|x) − log π_ref(y_w|x)] / |y_w| − [log π_θ(y_l|x) − log π_ref(y_l|x)] / |y_l|

      ``None`` (the default) normalises for ``'ipo'`` and ``'simpo'`` only. IPO's default is the
      convention of TRL (1.16, ``DPOTrainer``, ``loss_type='ipo'``, which reports that the IPO
      authors' published results use it) and of Oat (0.2.4, average log-probs for IPO): with
      sequence sums, ``1/(2β)`` would be a margin per sequence rather than per token, and the
      squared loss would grow with the response length. ``length_normalization=False`` gives
      IPO on sequence sums (Azar et al. 2023's formula as written).
    * ``'simpo'`` uses no reference: ``Δ = log π_θ(y_w)/|y_w| − log π_θ(y_l)/|y_l|`` (always
      length-normalised), and loss ``−log σ(βΔ − γ)``, γ = ``simpo_margin``.
    * **mDPO / mIPO** (Wang et al., 2024, multi-sample comparisons): give the log-probs as
      ``[N, k]`` (k chosen and k' rejected responses per prompt) with ``kind='dpo'`` or
      ``'ipo'``. Each side's log-ratio is averaged over its trailing axis
      (:func:`multi_response_logratio`)::

          Δ = (1/k) Σ_i [log π_θ(y_w,i) − log π_ref(y_w,i)] − (1/k') Σ_j [log π_θ(y_l,j) − log π_ref(y_l,j)]

      The same group mean applies to every kind (and to SimPO's per-token scores).
    * SFT term (RPO-style): ``nll = −log π_θ(y_w|x) / |y_w|`` — the per-token mean — when
      ``chosen_length`` is given, else the sequence sum ``−log π_θ(y_w|x)``; averaged over the
      k chosen responses in the ``[N, k]`` case.

    Call::

        loss, info = DAPLoss('dpo', beta=0.1)(policy_chosen, policy_rejected, ref_chosen,
                                               ref_rejected, weight=mask)

    Inputs are sequence log-probs ``[N]`` or ``[N, k]``; lengths broadcast against them;
    ``weight`` is ``[N]`` (a 0/1 mask or soft weights). With all weights 0 the loss is 0.
    The reference log-probs are constants: no gradient flows into them (``stop_gradient``).
    ``info`` holds scalars: ``dap_loss`` (the f term), ``sft_loss`` (the nll, unscaled),
    ``chosen_reward`` / ``rejected_reward`` (β × each side's log-ratio, per token when normalised),
    ``implicit_reward_margin`` (βΔ) and ``preference_accuracy`` (fraction with Δ > 0), all
    weighted means. The dataclass is frozen and hashable, so it may be a static jit argument.
    """

    kind: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_margin: float = 0.0
    sft_weight: float = 0.0
    length_normalization: bool | None = None

    def __post_init__(self):
        check_choice(self, "kind", self.kind, DAP_KINDS)
        check_float(self, "beta", self.beta, low=0.0, low_inclusive=False)
        check_float(self, "label_smoothing", self.label_smoothing, low=0.0, high=0.5, high_inclusive=False)
        if self.label_smoothing > 0 and self.kind not in _SMOOTHABLE:
            raise ValueError(
                f"DAPLoss.label_smoothing={self.label_smoothing!r} is not supported for kind={self.kind!r}; "
                f"expected 0.0, or a kind in {_SMOOTHABLE}"
            )
        check_float(self, "simpo_margin", self.simpo_margin)
        check_float(self, "sft_weight", self.sft_weight, low=0.0)
        if self.length_normalization not in (None, True, False):
            raise ValueError(
                f"DAPLoss.length_normalization={self.length_normalization!r} is not allowed; "
                "expected None (the kind's default), True or False"
            )
        if self.kind == "simpo" and self.length_normalization is False:
            raise ValueError(
                "DAPLoss.length_normalization=False is not allowed for kind='simpo' (SimPO is defined on "
                "length-normalised log-probs); expected None or True"
            )

    @property
    def normalizes_length(self) -> bool:
        """Whether each log-ratio is divided by its response length (``length_normalization``, or
        the kind's default: ``'ipo'`` and ``'simpo'``)."""
        if self.length_normalization is None:
            return self.kind in _LENGTH_NORMALISED
        return bool(self.length_normalization)

    def __call__(
        self,
        policy_chosen: Array,
        policy_rejected: Array,
        ref_chosen: Array | None = None,
        ref_rejected: Array | None = None,
        *,
        chosen_length: Array | None = None,
        rejected_length: Array | None = None,
        weight: Array | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        policy_chosen = _logps(policy_chosen, "policy_chosen")
        policy_rejected = _logps(policy_rejected, "policy_rejected")
        if self.normalizes_length and (chosen_length is None or rejected_length is None):
            hint = "" if self.kind == "simpo" else ", or length_normalization=False for sequence sums"
            raise ValueError(
                f"DAPLoss(kind={self.kind!r}) divides each log-ratio by its response length and needs "
                f"chosen_length and rejected_length (lengths in tokens; ones for per-token-mean log-probs{hint})"
            )
        if self.kind == "simpo":
            chosen_ratio, rejected_ratio = policy_chosen, policy_rejected
        else:
            if ref_chosen is None or ref_rejected is None:
                raise ValueError(f"DAPLoss(kind={self.kind!r}) needs ref_chosen and ref_rejected; got None")
            ref_chosen = jax.lax.stop_gradient(_logps(ref_chosen, "ref_chosen"))
            ref_rejected = jax.lax.stop_gradient(_logps(ref_rejected, "ref_rejected"))
            chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
        if self.normalizes_length:
            chosen_ratio = chosen_ratio / jnp.asarray(chosen_length, chosen_ratio.dtype)
            rejected_ratio = rejected_ratio / jnp.asarray(rejected_length, rejected_ratio.dtype)
        chosen_ratio = multi_response_logratio(chosen_ratio)
        rejected_ratio = multi_response_logratio(rejected_ratio)
        delta = chosen_ratio - rejected_ratio
        per_prompt = dap_objective(
            self.kind, delta, self.beta, label_smoothing=self.label_smoothing, simpo_margin=self.simpo_margin
        )
        nll = -policy_chosen
        if chosen_length is not None:
            nll = nll / jnp.asarray(chosen_length, nll.dtype)
        nll = multi_response_logratio(nll)
        if weight is not None:
            weight = jnp.asarray(weight, delta.dtype)
            if weight.shape != delta.shape:
                raise ValueError(f"DAPLoss weight has shape {weight.shape}; expected {delta.shape} (one per prompt)")
        dap_loss = weighted_mean(per_prompt, weight)
        sft_loss = weighted_mean(nll, weight)
        loss = dap_loss + self.sft_weight * sft_loss if self.sft_weight else dap_loss
        info = {
            "dap_loss": dap_loss,
            "sft_loss": sft_loss,
            "chosen_reward": weighted_mean(self.beta * chosen_ratio, weight),
            "rejected_reward": weighted_mean(self.beta * rejected_ratio, weight),
            "implicit_reward_margin": weighted_mean(self.beta * delta, weight),
            "preference_accuracy": weighted_mean((delta > 0).astype(delta.dtype), weight),
        }
        return loss, info


def xpo_term(policy_logp_of_ref_samples: Array, alpha: float | Array, *, weight: Array | None = None) -> Array:
    """XPO's exploration bonus, to be ADDED to the DAP loss being minimised: ``α · mean log π_θ(ỹ|x)``.

    Xie et al. (2024, "Exploratory Preference Optimization", Algorithm 1) update
    ``π ← argmin_π  α Σ log π(ỹ|x) − Σ log σ(β log π(y⁺)/π_ref(y⁺) − β log π(y⁻)/π_ref(y⁻))``
    with ``ỹ ~ π_ref``: minimising ``+α log π_θ(ỹ)`` pushes mass off the reference's typical
    responses, an optimism bonus that drives exploration beyond π_ref's support. α ≥ 0.
    ``policy_logp_of_ref_samples`` holds sequence log-probs ``[N]`` (or ``[N, k]``); ``weight``
    as in :func:`weighted_mean`.
    """
    logp = jnp.asarray(policy_logp_of_ref_samples)
    if logp.ndim == 2:
        logp = jnp.mean(logp, axis=-1)
    return alpha * weighted_mean(logp, weight)


def _logps(x: Array, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"DAPLoss {name} has shape {x.shape}; expected [N] or [N, k] sequence log-probs")
    return x


# ------------------------------------------------------------------------------------------ SAIL

# variant -> (response term: responses sampled from π_θ, preference term: labels sampled from π_θ)
SAIL_VARIANTS = {"pr": (True, False), "pp": (True, True), "dp": (False, True)}


def sail_term(
    policy_chosen: Array,
    policy_rejected: Array,
    ref_chosen: Array,
    ref_rejected: Array,
    *,
    beta: float | Array,
    coefficient: float | Array,
    variant: str = "pr",
    weight: Array | None = None,
) -> Array:
    """SAIL's self-improving term, a surrogate to be ADDED to the DPO loss being minimised.

    Ding et al. (2024, "SAIL: Self-Improving Efficient Online Alignment of Large Language
    Models", arXiv 2406.15567) reduce online RLHF (a bilevel problem) to the single-level DPO
    objective taken under a distribution that itself depends on π_θ::

        J(θ) = E_{x, (y_w, y_l) ~ q_θ(·|x)} [ ℓ_θ ],   ℓ_θ = log σ(β log π_θ(y_w|x)/π_ref(y_w|x)
                                                                 − β log π_θ(y_l|x)/π_ref(y_l|x))

    so ``∇J = E[∇ℓ_θ] + E[ℓ_θ ∇ log q_θ(y_w, y_l|x)]``: the first part is the DPO gradient, the
    second the self-improving term (the score function of the sampling distribution). For the
    loss ``−J`` (DPO ``−ℓ``, minimised) the extra gradient is ``−ℓ_θ ∇ log q_θ``. ``log q_θ`` holds

    * ``log π_θ(y_w|x) + log π_θ(y_l|x)`` when the two responses are sampled from π_θ;
    * ``log σ(βΔ) = ℓ_θ`` when the label is sampled from π_θ's own Bradley–Terry model
      (y_w is the first response with probability ``σ(βΔ)``; ``Δ`` the log-ratio margin), whose
      extra gradient ``−ℓ_θ ∇ℓ_θ = ∇(−½ ℓ_θ²)``.

    The variants (the paper's names; the authors' code calls them DPR / DPP / DDP):

    ======== ======================= ========================================= ====================
    variant  responses               labels                                    extra gradient
    ======== ======================= ========================================= ====================
    ``'pr'`` sampled from π_θ        oracle / reward model (fixed)             ``−ℓ ∇(log π_w + log π_l)``
    ``'pp'`` sampled from π_θ        sampled from π_θ's implicit BT σ(βΔ)      both terms
    ``'dp'`` offline dataset (fixed) sampled from π_θ's implicit BT σ(βΔ)      ``−ℓ ∇ℓ``
    ======== ======================= ========================================= ====================

    each scaled by ``coefficient`` (the paper's hyper-parameters: γ for PR, π for PP, ρ for DP;
    the exact gradient of J is coefficient = 1). Returned, with ``sg`` = stop-gradient::

        coefficient · mean_w[ −sg(ℓ) · (resp · (log π_θ(y_w) + log π_θ(y_l)) + pref · ℓ) ]

    Only its gradient is meaningful (its value is not a loss). Inside: ``ℓ`` multiplying the
    log-likelihood is stop-gradient; the log-likelihood ``log π_θ(y_w) + log π_θ(y_l)`` is NOT
    (it carries the score); the reference log-probs are constants (stop-gradient). Pass
    **sequence** log-probs (sums over tokens) ``[N]``: the score needs the full likelihood of
    the sampled response. For ``'pp'`` / ``'dp'`` the labels must be *sampled* from
    ``Bernoulli(σ(βΔ))`` (not the argmax) for the term to be the score function. ``weight``
    as in :func:`weighted_mean` (e.g. the mask of pairs from this variant's route); with
    ``DAPLoss('dpo', beta)(…, weight=w) + sail_term(…, weight=w)`` the gradient is that of J.

    Source note: the preference term matches the authors' code (johnding1996/SAIL,
    ``cdpo_trainer.py``: ``losses -= 0.5·ρ·logsigmoid(βΔ)²``). For the response term that
    code adds ``−c·sg(ℓ)/sg(log π_θ(y))`` to the gradient of each sequence log-prob (a division
    by ``log π_θ(y)`` that flips the sign); here it is the score-function term ``−c·sg(ℓ)``
    that the derivation of J gives.
    """
    if variant not in SAIL_VARIANTS:
        raise ValueError(f"sail_term variant={variant!r} is not allowed; expected one of {tuple(SAIL_VARIANTS)}")
    responses_from_policy, labels_from_policy = SAIL_VARIANTS[variant]
    policy_chosen = _sail_logps(policy_chosen, "policy_chosen")
    policy_rejected = _sail_logps(policy_rejected, "policy_rejected")
    ref_chosen = jax.lax.stop_gradient(_sail_logps(ref_chosen, "ref_chosen"))
    ref_rejected = jax.lax.stop_gradient(_sail_logps(ref_rejected, "ref_rejected"))
    delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    objective = jax.nn.log_sigmoid(beta * delta)  # ℓ = log σ(βΔ) ≤ 0
    log_likelihood = jnp.zeros_like(objective)
    if responses_from_policy:
        log_likelihood = log_likelihood + policy_chosen + policy_rejected
    if labels_from_policy:
        log_likelihood = log_likelihood + objective
    per_pair = -jax.lax.stop_gradient(objective) * log_likelihood
    return coefficient * weighted_mean(per_pair, weight)


def _sail_logps(x: Array, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim != 1:
        raise ValueError(f"sail_term {name} has shape {x.shape}; expected [N] sequence log-probs")
    return x
