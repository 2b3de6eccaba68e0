"""Epistemic reward models: E reward heads whose disagreement is the agent's uncertainty (docs/design.md §6).

A reward model is a frozen dataclass of hyper-parameters with three pure functions::

    state = model.init(key, feature_dim)
    r = model.scores(state, features)                  # [K, d] -> [E, K];  [B, K, d] -> [E, B, K]
    state, info = model.update(key, state, first, second, label, mask)   # [B, d], [B, d], [B], [B]

``label`` is 1.0 when ``first`` won. Only rows with ``mask`` True (pairs really labelled by the
oracle) are learnt from. ``info`` holds two scalars, recorded per round by ``cdb.run``:

* ``rm_loss`` (float32) — the model's training loss, defined per implementation;
* ``rm_correct`` (int32) — how many of the new masked pairs the member-mean score ranked
  correctly *before* the update (online accuracy; ties count as wrong). Dividing its sum by
  the number of queries gives the online accuracy of the reward model.

Two implementations:

* :class:`MLPEnsemble` — E MLP heads (SEA / Oat's epistemic reward model), optional
  randomized prior functions (Osband et al., 2018) and anchoring to the initial weights,
  trained by Adam on the Bradley–Terry NLL over a replay buffer of oracle pairs.
* :class:`LinearEnsemble` — linear-Gaussian heads by ensemble sampling (Lu & Van Roy, 2017),
  exact incremental least squares with a shared Sherman–Morrison inverse; cheap enough for
  thousands of vmapped seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from cdb import linalg, replay, rng
from cdb.losses import bradley_terry_nll
from cdb.validation import check_choice, check_float, check_int

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any


@runtime_checkable
class RewardModel(Protocol):
    """An ensemble of E reward functions over arm features (``[..., d] -> [E, ...]``)."""

    num_members: int

    def init(self, key: PRNGKey, feature_dim: int) -> PyTree: ...

    def scores(self, state: PyTree, features: Array) -> Array:
        """Rewards of every member: features ``[..., d]`` -> ``[E, ...]``."""

    def update(
        self, key: PRNGKey, state: PyTree, first: Array, second: Array, label: Array, mask: Array
    ) -> tuple[PyTree, dict[str, Array]]:
        """Learns from the masked pairs of one round; returns ``(state, {rm_loss, rm_correct})``."""


def _count_correct(score_first: Array, score_second: Array, label: Array, mask: Array) -> Array:
    """Masked pairs whose score difference has the sign of the label; ties count as wrong."""
    won = jnp.asarray(label) > 0.5
    right = jnp.where(won, score_first > score_second, score_second > score_first)
    return jnp.sum(right & jnp.asarray(mask, bool), dtype=jnp.int32)


# --------------------------------------------------------------------------------------------
# MLP ensemble
# --------------------------------------------------------------------------------------------

MINIBATCHES = ("per_member", "shared")
ANCHOR_REDUCTIONS = ("sum", "mean")


def scaled_truncated_normal(scale: float):
    """An ``nnx`` kernel initializer: ``(scale/√fan_in) · z``, z ~ N(0, 1) truncated to [−2, 2].

    For a kernel ``[fan_in, fan_out]``. Oat's reward heads use ``scale = 0.5`` (a normal of standard
    deviation 1/(2√fan_in), redrawn outside two standard deviations); the standard deviation of
    the truncated draw is about 0.88 · scale/√fan_in.
    """

    def init(key, shape, dtype=jnp.float32):
        return (scale / jnp.sqrt(shape[0])).astype(dtype) * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


@functools.cache
def _head_graphdef(feature_dim: int, hidden_sizes: tuple[int, ...]):
    """The (static) graph of a :class:`Head`, built once per shape without allocating weights."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Head(feature_dim, hidden_sizes, rngs=nnx.Rngs(0))))
    return graphdef


class Head(nnx.Module):
    """One reward head: an MLP ``[..., d] -> [...]`` with ReLU hidden layers and a scalar output.

    ``kernel_init`` (an ``nnx`` initializer) draws every layer's weights; ``None`` is ``nnx.Linear``'s
    default (LeCun normal: standard deviation 1/√fan_in). Biases start at zero.
    """

    def __init__(self, feature_dim: int, hidden_sizes: tuple[int, ...], *, rngs: nnx.Rngs, kernel_init=None):
        sizes = (feature_dim, *hidden_sizes)
        init = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs, **init) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(sizes[-1], 1, rngs=rngs, **init)

    def __call__(self, x: Array) -> Array:
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.out(x)[..., 0]


@struct.dataclass
class MLPEnsembleState:
    """State of :class:`MLPEnsemble`; parameter leaves carry a leading member axis ``[E, ...]``.

    Attributes:
      params: trained head parameters ϕ (an ``nnx.State``).
      prior_params: frozen random prior heads, or ``None`` when ``prior_scale == 0``.
      anchor_params: initial parameters ϕ₀, or ``None`` when ``anchor == 0``.
      opt_state: Adam state of ``params``.
      buffer: replay buffer of the oracle pairs seen so far.
      num_queries: int32 scalar, N_t, the number of oracle pairs seen so far.
    """

    params: Any
    prior_params: Any
    anchor_params: Any
    opt_state: Any
    buffer: replay.ReplayBuffer
    num_queries: Array


@dataclasses.dataclass(frozen=True)
class MLPEnsemble:
    """E MLP reward heads trained on the Bradley–Terry NLL over a replay buffer (SEA's ERM).

    Member e scores ``r_e(x) = f(x; ϕ_e) + prior_scale · stop_gradient(f(x; ψ_e))`` with ψ_e a
    frozen random head (randomized prior functions, Osband et al. 2018). Each call of
    :meth:`update` first stores the new masked pairs, then takes ``steps_per_update`` steps of
    Adam (with an L2 ``weight_decay`` added to the gradient, as ``torch.optim.Adam`` does) on

        L(ϕ) = Σ_e [ mean_{i ∈ batch_e} BT(r_e(first_i), r_e(second_i), z_i) + λ_t · A(ϕ_e − ϕ_e⁰) ]

    with the anchoring penalty ``A(δ) = ‖δ‖²`` (``anchor_reduction='sum'``) or ``mean_p δ_p²``
    over the member's P parameters (``'mean'``), and λ_t = ``anchor`` (``anchor_schedule='fixed'``)
    or ``anchor · batch_size / N_t`` (``'data'``, N_t = oracle pairs seen so far, at least 1).
    ``minibatch`` says where ``batch_e`` comes from:

    * ``'per_member'`` — every member draws its own ``batch_size`` pairs from the buffer, with
      replacement (a bootstrapped data order); training starts with the first stored pair;
    * ``'shared'`` — one minibatch of ``batch_size`` distinct pairs (drawn without replacement,
      :func:`cdb.replay.sample_without_replacement`) for all members; no step is taken until the
      buffer holds ``batch_size`` pairs (as in Oat).

    ``rm_loss`` is the BT term of the last step, averaged over members and minibatch (without the
    penalties), computed on the drawn minibatch also when the buffer is too small for the steps
    to be kept.

    **Oat's reward model** (Liu et al. 2024's code, ``oat/rm``) is ``minibatch='shared'``,
    ``prior_scale=0``, ``anchor=0.5`` with the ``'data'`` schedule and ``anchor_reduction='mean'``,
    ``weight_decay=5e-5`` and ``init_scale=0.5`` (``cdb.agents.ensembles.oat_ensemble``). Oat averages
    its loss over members where ``L`` sums them: ``L`` is E times Oat's loss, and
    ``weight_decay`` is applied as ``E · weight_decay`` to the gradient of ``L``, so that Adam,
    which is invariant to the scale of its gradient (up to its ε), takes Oat's steps.

    Attributes:
      num_members: E, number of heads (Oat / SEA default 20).
      hidden_sizes: widths of the hidden layers (default two of 128); ``()`` is a linear head.
      prior_scale: weight of the randomized prior function; 0 disables it.
      anchor: λ of the anchoring penalty to the initial weights; 0 disables it.
      anchor_schedule: ``'data'`` (λ·B/N_t) or ``'fixed'`` (λ).
      anchor_reduction: ``'sum'`` (‖ϕ_e − ϕ_e⁰‖²) or ``'mean'`` (its mean over the member's parameters).
      weight_decay: wd ≥ 0, the L2 coefficient of Oat's (member-averaged) loss; see above.
      init_scale: ``None`` for ``nnx.Linear``'s default weights (standard deviation 1/√fan_in), or
        s > 0 for :func:`scaled_truncated_normal` weights ``(s/√fan_in) · N(0, 1)`` truncated at two
        standard deviations (Oat: 0.5). Biases start at zero either way; the prior heads ψ_e are
        drawn the same way.
      minibatch: ``'per_member'`` or ``'shared'`` (see above).
      learning_rate: Adam step size.
      steps_per_update: gradient steps per :meth:`update` call.
      batch_size: B, replay pairs per minibatch.
      buffer_capacity: slots of the replay buffer (at least ``batch_size`` with ``'shared'``).
    """

    num_members: int = 20
    hidden_sizes: tuple[int, ...] = (128, 128)
    prior_scale: float = 0.0
    anchor: float = 0.0
    anchor_schedule: str = "data"
    learning_rate: float = 1e-3
    steps_per_update: int = 4
    batch_size: int = 64
    buffer_capacity: int = 4096
    anchor_reduction: str = "sum"
    weight_decay: float = 0.0
    init_scale: float | None = None
    minibatch: str = "per_member"

    def __post_init__(self):
        check_int(self, "num_members", self.num_members, low=1)
        if isinstance(self.hidden_sizes, int) or not hasattr(self.hidden_sizes, "__iter__"):
            raise ValueError(
                f"MLPEnsemble.hidden_sizes={self.hidden_sizes!r} is not a sequence; expected a tuple of integers >= 1"
            )
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        for width in self.hidden_sizes:
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(
                    f"MLPEnsemble.hidden_sizes={self.hidden_sizes!r} holds {width!r}; expected a tuple of integers >= 1"
                )
        check_float(self, "prior_scale", self.prior_scale, low=0.0)
        check_float(self, "anchor", self.anchor, low=0.0)
        check_choice(self, "anchor_schedule", self.anchor_schedule, ("data", "fixed"))
        check_choice(self, "anchor_reduction", self.anchor_reduction, ANCHOR_REDUCTIONS)
        check_float(self, "weight_decay", self.weight_decay, low=0.0)
        if self.init_scale is not None:
            check_float(self, "init_scale", self.init_scale, low=0.0, low_inclusive=False)
        check_choice(self, "minibatch", self.minibatch, MINIBATCHES)
        check_float(self, "learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
        check_int(self, "steps_per_update", self.steps_per_update, low=1)
        check_int(self, "batch_size", self.batch_size, low=1)
        check_int(self, "buffer_capacity", self.buffer_capacity, low=1)
        if self.minibatch == "shared" and self.buffer_capacity < self.batch_size:
            raise ValueError(
                f"MLPEnsemble.buffer_capacity={self.buffer_capacity} is below batch_size={self.batch_size}; "
                "minibatch='shared' draws batch_size distinct stored pairs, so expected buffer_capacity >= batch_size"
            )

    # -- the heads ---------------------------------------------------------------------------

    def _head(self, feature_dim: int, key: PRNGKey) -> Head:
        init = None if self.init_scale is None else scaled_truncated_normal(self.init_scale)
        return Head(feature_dim, self.hidden_sizes, rngs=nnx.Rngs(key), kernel_init=init)

    def _graphdef(self, feature_dim: int):
        return _head_graphdef(int(feature_dim), self.hidden_sizes)

    def _init_heads(self, key: PRNGKey, feature_dim: int):
        """E independent heads: a vmapped init over split keys (enn style)."""
        keys = jax.random.split(key, self.num_members)
        return jax.vmap(lambda k: nnx.split(self._head(feature_dim, k))[1])(keys)

    def _apply(self, params, features: Array, shared: bool = True) -> Array:
        """Heads without prior: ``[..., d] -> [E, ...]`` (``shared``) or ``[E, ..., d] -> [E, ...]``."""
        graphdef = self._graphdef(features.shape[-1])
        return jax.vmap(lambda p, x: nnx.merge(graphdef, p)(x), in_axes=(0, None if shared else 0))(params, features)

    def _member_scores(self, params, prior_params, features: Array, shared: bool = True) -> Array:
        out = self._apply(params, features, shared)
        if self.prior_scale > 0:
            out = out + self.prior_scale * jax.lax.stop_gradient(self._apply(prior_params, features, shared))
        return out

    # -- public API --------------------------------------------------------------------------

    def init(self, key: PRNGKey, feature_dim: int) -> MLPEnsembleState:
        """Random heads (and priors), Adam state, an empty buffer of ``buffer_capacity`` pairs."""
        check_int(self, "init feature_dim", feature_dim, low=1)
        k_head, k_prior = jax.random.split(key)
        params = self._init_heads(k_head, feature_dim)
        prior = self._init_heads(k_prior, feature_dim) if self.prior_scale > 0 else None
        anchor = params if self.anchor > 0 else None
        return MLPEnsembleState(
            params=params,
            prior_params=prior,
            anchor_params=anchor,
            opt_state=self._optimizer().init(params),
            buffer=replay.init_buffer(self.buffer_capacity, feature_dim),
            num_queries=jnp.zeros((), jnp.int32),
        )

    def scores(self, state: MLPEnsembleState, features: Array) -> Array:
        """``r_e(x)`` for every member: features ``[..., d]`` -> ``[E, ...]``."""
        features = jnp.asarray(features, jnp.float32)
        return self._member_scores(state.params, state.prior_params, features)

    def anchor_coefficient(self, num_queries: Array) -> Array:
        """λ_t: ``anchor`` (``'fixed'``) or ``anchor · batch_size / max(N_t, 1)`` (``'data'``)."""
        if self.anchor_schedule == "fixed":
            return jnp.asarray(self.anchor, jnp.float32)
        n = jnp.maximum(jnp.asarray(num_queries, jnp.float32), 1.0)
        return self.anchor * self.batch_size / n

    def loss(
        self,
        params,
        state: MLPEnsembleState,
        first: Array,
        second: Array,
        label: Array,
        weight: Array,
    ) -> tuple[Array, Array]:
        """The training objective on one minibatch.

        Args:
          params: head parameters ϕ (leading member axis).
          state: supplies the prior and anchor parameters and N_t.
          first, second: ``[E, b, d]`` per-member minibatches, or ``[b, d]`` one minibatch shared
            by every member; label, weight: ``[E, b]`` or ``[b]`` likewise.

        Returns:
          ``(total, bt)``: ``total = Σ_e [mean_i w_i·BT_{e,i} + λ_t A(ϕ_e − ϕ_e⁰)]`` and ``bt``,
          the BT term averaged over members.
        """
        shared = first.ndim == 2
        s1 = self._member_scores(params, state.prior_params, first, shared=shared)
        s2 = self._member_scores(params, state.prior_params, second, shared=shared)
        bt = jnp.mean(weight * bradley_terry_nll(s1, s2, label), axis=-1)  # [E]
        total = jnp.sum(bt)
        if self.anchor > 0:
            sq = jax.tree.map(lambda p, p0: jnp.sum(jnp.square(p - p0)), params, state.anchor_params)
            penalty = sum(jax.tree.leaves(sq))
            if self.anchor_reduction == "mean":
                penalty = penalty / self.parameters_per_member(params)
            total = total + self.anchor_coefficient(state.num_queries) * penalty
        return total, jnp.mean(bt)

    def parameters_per_member(self, params) -> int:
        """P, the number of trained parameters of one head (``params`` with a leading member axis)."""
        return sum(leaf.size for leaf in jax.tree.leaves(params)) // self.num_members

    def update(
        self,
        key: PRNGKey,
        state: MLPEnsembleState,
        first: Array,
        second: Array,
        label: Array,
        mask: Array,
    ) -> tuple[MLPEnsembleState, dict[str, Array]]:
        """Stores the masked pairs ``[B, d], [B, d], [B], [B]``, then trains ``steps_per_update`` steps."""
        first = jnp.asarray(first, jnp.float32)
        second = jnp.asarray(second, jnp.float32)
        label = jnp.asarray(label, jnp.float32)
        mask = jnp.asarray(mask, bool)

        mean_first = jnp.mean(self.scores(state, first), axis=0)
        mean_second = jnp.mean(self.scores(state, second), axis=0)
        correct = _count_correct(mean_first, mean_second, label, mask)

        buffer = replay.add(state.buffer, first, second, label, mask)
        state = state.replace(buffer=buffer, num_queries=state.num_queries + jnp.sum(mask, dtype=jnp.int32))
        optimizer = self._optimizer()
        if self.minibatch == "shared":
            draw = functools.partial(replay.sample_without_replacement, buffer=buffer, batch_size=self.batch_size)
            trained = buffer.size >= self.batch_size
        else:
            per_member = jax.vmap(lambda k: replay.sample(k, buffer, self.batch_size))
            draw = lambda k: per_member(jax.random.split(k, self.num_members))  # each [E, b, ...]
            trained = buffer.size > 0

        def step(carry, step_key):
            params, opt_state = carry
            grads, bt = jax.grad(self.loss, has_aux=True)(params, state, *draw(step_key))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), bt

        keys = jax.random.split(key, self.steps_per_update)
        (params, opt_state), bts = jax.lax.scan(step, (state.params, state.opt_state), keys)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(trained, a, b), new, old)
        state = state.replace(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state))
        info = {"rm_loss": bts[-1].astype(jnp.float32), "rm_correct": correct}
        return state, info

    def _optimizer(self) -> optax.GradientTransformation:
        adam = optax.adam(self.learning_rate)
        if self.weight_decay == 0:
            return adam
        # torch.optim.Adam's weight_decay: wd·ϕ added to the gradient before Adam; E·wd because L
        # sums the members where Oat's loss averages them (the class docstring)
        return optax.chain(optax.add_decayed_weights(self.weight_decay * self.num_members), adam)


# --------------------------------------------------------------------------------------------
# Linear ensemble sampling
# --------------------------------------------------------------------------------------------


@struct.dataclass
class LinearEnsembleState:
    """State of :class:`LinearEnsemble`.

    Attributes:
      precision_inverse: ``[d, d]`` P = (λI + Σ_i x_i x_iᵀ)⁻¹, shared by all members.
      theta: ``[E, d]`` θ_e, each member's regularised least-squares solution.
      theta_prior: ``[E, d]`` θ_e⁰ ~ N(0, prior_scale² I), the centre of member e's penalty.
      num_queries: int32 scalar, oracle pairs seen so far.
    """

    precision_inverse: Array
    theta: Array
    theta_prior: Array
    num_queries: Array


@dataclasses.dataclass(frozen=True)
class LinearEnsemble:
    """Linear-Gaussian reward heads by ensemble sampling (Lu & Van Roy, 2017).

    On feature differences x_i = φ(first_i) − φ(second_i) with targets y_i = 2z_i − 1 ∈ {−1, 1},
    member e keeps

        θ_e = argmin_θ Σ_i (y_i + ε_{e,i} − θᵀx_i)² + λ‖θ − θ_e⁰‖²
            = P (λθ_e⁰ + Σ_i (y_i + ε_{e,i}) x_i),   P = (λI + Σ_i x_i x_iᵀ)⁻¹,

    with perturbations ε_{e,i} ~ N(0, noise_scale²) and prior draws θ_e⁰ ~ N(0, prior_scale² I).
    Each masked pair is absorbed by recursive least squares (:func:`cdb.linalg.rls_rows`) — a
    Sherman–Morrison rank-one update of the shared P, then θ_e ← θ_e + P_new x (y + ε_e − θ_eᵀx)
    — processed in order with ``lax.scan``; unmasked rows are no-ops. Cost O(B(d² + E·d)) per round, no solves.
    ``scores = φ @ θ_eᵀ``.

    ``rm_loss`` is the mean squared residual (y_i − θ_eᵀx_i)² of the new masked pairs under the
    parameters *before* the update (no perturbation), averaged over members and pairs; 0 when
    no pair is masked. The perturbations of a call are :meth:`perturbations` of its key.

    Attributes:
      num_members: E.
      prior_scale: standard deviation of the prior draws θ_e⁰.
      noise_scale: standard deviation of the target perturbations ε.
      regularization: λ > 0.
    """

    num_members: int = 8
    prior_scale: float = 1.0
    noise_scale: float = 0.5
    regularization: float = 1.0

    def __post_init__(self):
        check_int(self, "num_members", self.num_members, low=1)
        check_float(self, "prior_scale", self.prior_scale, low=0.0)
        check_float(self, "noise_scale", self.noise_scale, low=0.0)
        check_float(self, "regularization", self.regularization, low=0.0, low_inclusive=False)

    def init(self, key: PRNGKey, feature_dim: int) -> LinearEnsembleState:
        """P = I/λ, θ_e = θ_e⁰ = prior_scale · N(0, I) drawn from ``key`` as ``[E, d]``."""
        check_int(self, "init feature_dim", feature_dim, low=1)
        theta0 = self.prior_scale * jax.random.normal(key, (self.num_members, feature_dim), jnp.float32)
        return LinearEnsembleState(
            precision_inverse=jnp.eye(feature_dim, dtype=jnp.float32) / self.regularization,
            theta=theta0,
            theta_prior=theta0,
            num_queries=jnp.zeros((), jnp.int32),
        )

    def scores(self, state: LinearEnsembleState, features: Array) -> Array:
        """θ_eᵀφ for every member: features ``[..., d]`` -> ``[E, ...]``."""
        # Members last, then moved to the front: on CPU, with many vmapped seeds, this contraction
        # order is several times faster than producing the member axis first.
        scores = jnp.einsum("...d,ed->...e", jnp.asarray(features, jnp.float32), state.theta)
        return jnp.moveaxis(scores, -1, 0)

    def perturbations(self, key: PRNGKey, batch: int) -> Array:
        """The ``[B, E]`` perturbations ε that :meth:`update` draws from its ``key``."""
        return self.noise_scale * rng.normal(key, (batch, self.num_members))

    def update(
        self,
        key: PRNGKey,
        state: LinearEnsembleState,
        first: Array,
        second: Array,
        label: Array,
        mask: Array,
    ) -> tuple[LinearEnsembleState, dict[str, Array]]:
        """Absorbs the masked pairs ``[B, d], [B, d], [B], [B]`` one by one (recursive least squares)."""
        x = jnp.asarray(first, jnp.float32) - jnp.asarray(second, jnp.float32)  # [B, d]
        label = jnp.asarray(label, jnp.float32)
        y = 2.0 * label - 1.0
        mask = jnp.asarray(mask, bool)
        eps = self.perturbations(key, x.shape[0])

        pred = x @ state.theta.T  # [B, E], before the update
        correct = _count_correct(jnp.mean(pred, axis=-1), jnp.zeros(()), label, mask)
        n_masked = jnp.sum(mask, dtype=jnp.int32)
        sq = jnp.where(mask[:, None], jnp.square(y[:, None] - pred), 0.0)
        rm_loss = jnp.sum(sq) / (jnp.maximum(n_masked, 1) * self.num_members)

        # An unmasked row enters as x = 0, for which the update is exactly the identity (px = 0).
        x_masked = jnp.where(mask[:, None], x, 0.0)
        p, theta = linalg.rls_rows(state.precision_inverse, state.theta, x_masked, y[:, None] + eps)
        state = state.replace(precision_inverse=p, theta=theta, num_queries=state.num_queries + n_masked)
        return state, {"rm_loss": rm_loss.astype(jnp.float32), "rm_correct": correct}
