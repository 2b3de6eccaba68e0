"""The reward-ensemble recipes the agents' presets use, one function each.

* :func:`arm_feature_ensemble` — tier 1 (arm features): the reward model of the
  :class:`~cdb.agents.reward_model_agent.RewardModelAgent` presets (``ee_ts``, ``bai_ts``, ...);
* :func:`toy_policy_ensemble` — tiers 2-3 on the toy policy's features: :func:`~cdb.agents.ee4llm`'s;
* :func:`oat_ensemble` — SEA's reward model as its authors train it: :func:`~cdb.agents.sea`'s.

Each returns a :class:`cdb.ensemble.MLPEnsemble`; ``dataclasses.replace`` changes any field.
"""

from __future__ import annotations

from cdb.ensemble import MLPEnsemble

__all__ = ["arm_feature_ensemble", "oat_ensemble", "toy_policy_ensemble"]


def arm_feature_ensemble(num_members: int = 8) -> MLPEnsemble:
    """A small MLP ensemble with prior functions, sized for tier-1 problems on a laptop: two ReLU
    layers of 32, prior scale 1, no anchoring (:class:`cdb.ensemble.MLPEnsemble`'s other defaults)."""
    return MLPEnsemble(num_members=num_members, hidden_sizes=(32, 32), prior_scale=1.0, anchor=0.0)


def toy_policy_ensemble(num_members: int = 8) -> MLPEnsemble:
    """A small reward ensemble with prior functions, sized for the toy policy's 32-dimensional
    features: two ReLU layers of 64, Adam at 3e-3, 2 steps a round on minibatches of 64 from a
    buffer of 4096 pairs. The default of :func:`~cdb.agents.alignment_presets.ee4llm`."""
    return MLPEnsemble(
        num_members=num_members,
        hidden_sizes=(64, 64),
        prior_scale=1.0,
        steps_per_update=2,
        batch_size=64,
        buffer_capacity=4096,
        learning_rate=3e-3,
    )


def oat_ensemble(num_members: int = 20) -> MLPEnsemble:
    """SEA's epistemic reward model as its authors train it (Oat 0.2.4, ``oat/rm``, ``oat/args.py``).

    ``num_members`` = 20 heads (``num_ensemble``), two ReLU hidden layers of 128 (``rm_hidden_dim``,
    ``rm_act_fn``), weights ``N(0, (0.5/√fan_in)²)`` truncated at two standard deviations and zero
    biases (``rm/networks.py: init_weights``), no prior functions; Adam at 1e-3 (``rm_lr``) with
    weight decay 5e-5 (``rm_wd``), 5 steps per round (``rm_sgd_steps``), each on one minibatch of 128
    distinct stored pairs shared by all heads (``RewardModel.train_bs``, ``UniformBuffer.sample``),
    none until 128 pairs are stored; anchoring to the initial weights with λ = 0.5 (``enn_lambda``)
    scaled by 128/N_t (``rm_fixed_reg=False``) on the mean squared distance
    (``EnsembleModel.regularization``). See :class:`cdb.ensemble.MLPEnsemble` for the objective.

    Departures: the replay buffer holds 4096 pairs where Oat keeps 50 000 (``r_buffer_maxlen``):
    4096 is every oracle pair of the toy benchmark (256 rounds × 16) and keeps the per-seed state
    small when seeds are vmapped; ``dataclasses.replace(oat_ensemble(), buffer_capacity=50_000)``
    matches Oat beyond that. Only oracle pairs enter the buffer: Oat also stores the model-labelled
    pairs with a loss mask whose broadcast (``[1, B]`` against ``[E, B, 1]``) still trains on them.
    """
    return MLPEnsemble(
        num_members=num_members,
        hidden_sizes=(128, 128),
        prior_scale=0.0,
        anchor=0.5,
        anchor_schedule="data",
        anchor_reduction="mean",
        weight_decay=5e-5,
        init_scale=0.5,
        minibatch="shared",
        learning_rate=1e-3,
        steps_per_update=5,
        batch_size=128,
        buffer_capacity=4096,
    )
