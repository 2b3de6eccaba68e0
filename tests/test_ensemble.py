"""Reward ensembles: MLPEnsemble (heads, priors, anchoring, training), LinearEnsemble (exact RLS)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cdb.ensemble import LinearEnsemble, MLPEnsemble, RewardModel
from cdb.losses import bradley_terry_nll

D, B, K = 3, 8, 5
W_TRUE = jnp.array([1.0, -2.0, 0.5])

MODEL = MLPEnsemble(
    num_members=4,
    hidden_sizes=(16, 16),
    prior_scale=1.0,
    anchor=0.1,
    learning_rate=1e-2,
    steps_per_update=4,
    batch_size=16,
    buffer_capacity=256,
)


def _pairs(key, n):
    k1, k2 = jax.random.split(key)
    first = jax.random.normal(k1, (n, D))
    second = jax.random.normal(k2, (n, D))
    return first, second, (first @ W_TRUE > second @ W_TRUE).astype(jnp.float32)


def _leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def mlp():
    """One compiled configuration shared by the MLP tests."""
    return {
        "state": MODEL.init(jax.random.key(0), D),
        "update": jax.jit(MODEL.update),
        "scores": jax.jit(MODEL.scores),
    }


# -------------------------------------------------------------------------------- MLPEnsemble


def test_protocol():
    assert isinstance(MODEL, RewardModel)
    assert isinstance(LinearEnsemble(), RewardModel)


def test_mlp_scores_shapes_under_jit(mlp):
    features = jax.random.normal(jax.random.key(1), (2, K, D))
    by_batch = mlp["scores"](mlp["state"], features)
    assert by_batch.shape == (4, 2, K) and by_batch.dtype == jnp.float32
    one = mlp["scores"](mlp["state"], features[1])
    assert one.shape == (4, K)
    np.testing.assert_allclose(np.asarray(one), np.asarray(by_batch[:, 1]), rtol=1e-5, atol=1e-6)
    eager = MODEL.scores(mlp["state"], features)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(by_batch), rtol=1e-5, atol=1e-6)


def test_mlp_members_differ_at_init(mlp):
    scores = np.asarray(MODEL.scores(mlp["state"], jax.random.normal(jax.random.key(2), (K, D))))
    for e in range(1, 4):
        assert not np.allclose(scores[0], scores[e])
    kernel = np.asarray(mlp["state"].params["hidden"][0]["kernel"])
    assert kernel.shape == (4, D, 16)
    assert not np.allclose(kernel[0], kernel[1])


def test_prior_functions_add_to_scores_but_get_no_gradient(mlp):
    state = mlp["state"]
    no_prior = dataclasses.replace(MODEL, prior_scale=0.0)
    base = no_prior.init(jax.random.key(0), D)
    assert base.prior_params is None
    assert _leaves_equal(base.params, state.params)  # same key -> same trained heads
    x = jax.random.normal(jax.random.key(3), (K, D))
    prior_only = no_prior.scores(base.replace(params=state.prior_params), x)
    assert float(jnp.max(jnp.abs(prior_only))) > 1e-3
    np.testing.assert_allclose(
        np.asarray(MODEL.scores(state, x)),
        np.asarray(no_prior.scores(base, x) + prior_only),
        rtol=1e-5,
        atol=1e-6,
    )

    # the objective has exactly zero gradient with respect to the prior heads
    first, second, label = _pairs(jax.random.key(4), 6)
    batch = (jnp.stack([first] * 4), jnp.stack([second] * 4), jnp.stack([label] * 4), jnp.ones((4, 6)))
    grad = jax.grad(lambda pp: MODEL.loss(state.params, state.replace(prior_params=pp), *batch)[0])(state.prior_params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grad))


def test_update_trains_heads_and_leaves_priors_and_anchor_unchanged(mlp):
    state = mlp["state"]
    first, second, label = _pairs(jax.random.key(6), B)
    new, info = mlp["update"](jax.random.key(7), state, first, second, label, jnp.ones(B, bool))
    assert _leaves_equal(new.prior_params, state.prior_params)
    assert _leaves_equal(new.anchor_params, state.anchor_params)
    assert _leaves_equal(new.anchor_params, state.params)
    assert not _leaves_equal(new.params, state.params)
    assert int(new.num_queries) == B and int(new.buffer.size) == B
    assert info["rm_loss"].dtype == jnp.float32 and info["rm_loss"].shape == ()
    assert info["rm_correct"].dtype == jnp.int32 and info["rm_correct"].shape == ()
    assert np.isfinite(float(info["rm_loss"])) and float(info["rm_loss"]) > 0.0


def test_rm_correct_counts_mean_score_rankings_before_update(mlp):
    state = mlp["state"]
    first, second, label = _pairs(jax.random.key(8), B)
    mask = jnp.array([True, True, False, True, True, False, True, True])
    _, info = mlp["update"](jax.random.key(9), state, first, second, label, mask)
    s1 = np.asarray(MODEL.scores(state, first)).mean(0)
    s2 = np.asarray(MODEL.scores(state, second)).mean(0)
    expected = sum(((s1[i] > s2[i]) if label[i] == 1 else (s2[i] > s1[i])) for i in range(B) if mask[i])
    assert int(info["rm_correct"]) == expected
    # ties are wrong, whatever the label
    _, info = mlp["update"](jax.random.key(9), state, first, first, label, jnp.ones(B, bool))
    assert int(info["rm_correct"]) == 0


def test_masked_rows_are_ignored(mlp):
    state = mlp["state"]
    first, second, label = _pairs(jax.random.key(10), B)
    new, info = mlp["update"](jax.random.key(11), state, first, second, label, jnp.zeros(B, bool))
    assert int(new.buffer.size) == 0 and int(new.num_queries) == 0
    assert _leaves_equal(new.params, state.params)  # nothing trains on an empty buffer
    assert _leaves_equal(new.opt_state, state.opt_state)
    assert int(info["rm_correct"]) == 0 and float(info["rm_loss"]) == 0.0

    mask = jnp.array([False, True, False, False, True, False, False, False])
    new, _ = mlp["update"](jax.random.key(11), state, first, second, label, mask)
    assert int(new.buffer.size) == 2 and int(new.num_queries) == 2
    np.testing.assert_array_equal(np.asarray(new.buffer.first[:2]), np.asarray(first[jnp.array([1, 4])]))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("schedule", ["fixed", "data"])
def test_anchor_penalty_matches_hand_computation(mlp, schedule, reduction):
    anchored = dataclasses.replace(MODEL, anchor=0.5, anchor_schedule=schedule, anchor_reduction=reduction)
    free = dataclasses.replace(MODEL, anchor=0.0)
    state = mlp["state"].replace(num_queries=jnp.asarray(10, jnp.int32))
    shift = 0.1
    params = jax.tree.map(lambda p: p + shift, state.params)
    n_params = 4 * ((D * 16 + 16) + (16 * 16 + 16) + (16 + 1))
    lam = 0.5 if schedule == "fixed" else 0.5 * 16 / 10
    np.testing.assert_allclose(float(anchored.anchor_coefficient(10)), lam, rtol=1e-6)
    # 'sum': λ Σ_e ‖ϕ_e − ϕ_e⁰‖² over all 4 members' parameters; 'mean': λ Σ_e mean_p (shift²) = λ · 4 · shift²
    penalty = lam * (n_params if reduction == "sum" else 4) * shift**2
    assert anchored.parameters_per_member(params) == n_params // 4

    first, second, label = _pairs(jax.random.key(12), 6)
    batch = (jnp.stack([first] * 4), jnp.stack([second] * 4), jnp.stack([label] * 4), jnp.ones((4, 6)))
    total, bt = jax.jit(anchored.loss)(params, state, *batch)
    total_free, bt_free = free.loss(params, state, *batch)
    np.testing.assert_allclose(float(total - total_free), penalty, rtol=1e-4)
    np.testing.assert_allclose(float(bt), float(bt_free), rtol=1e-6)
    # BT term by hand: mean over pairs, summed over members
    s1, s2 = (
        MODEL.scores(state.replace(params=params), first),
        MODEL.scores(state.replace(params=params), second),
    )
    np.testing.assert_allclose(
        float(total_free), float(jnp.sum(jnp.mean(bradley_terry_nll(s1, s2, label), -1))), rtol=1e-5
    )

    # zero weight (empty buffer): only the penalty remains
    zero_batch = batch[:3] + (jnp.zeros((4, 6)),)
    np.testing.assert_allclose(float(anchored.loss(params, state, *zero_batch)[0]), penalty, rtol=1e-4)


def test_data_schedule_decays_with_queries():
    model = dataclasses.replace(MODEL, anchor=2.0, anchor_schedule="data")
    np.testing.assert_allclose(float(model.anchor_coefficient(0)), 2.0 * 16, rtol=1e-6)  # N_t floored at 1
    np.testing.assert_allclose(float(model.anchor_coefficient(64)), 2.0 * 16 / 64, rtol=1e-6)


def test_training_on_separable_problem_reaches_high_accuracy(mlp):
    update = mlp["update"]
    state = mlp["state"]
    key = jax.random.key(13)
    correct = []
    for _ in range(40):
        key, k_pairs, k_update = jax.random.split(key, 3)
        first, second, label = _pairs(k_pairs, B)
        state, info = update(k_update, state, first, second, label, jnp.ones(B, bool))
        correct.append(int(info["rm_correct"]))
    first, second, label = _pairs(jax.random.key(99), 200)
    s1, s2 = MODEL.scores(state, first).mean(0), MODEL.scores(state, second).mean(0)
    accuracy = float(jnp.mean((s1 > s2) == (label > 0.5)))
    assert accuracy > 0.9
    assert sum(correct[-10:]) > 0.85 * 10 * B  # online accuracy improved too
    assert int(state.num_queries) == 40 * B  # N_t counts every pair; the buffer keeps the newest 256
    assert int(state.buffer.size) == 256 and int(state.buffer.pointer) == 40 * B - 256


def test_mlp_vmaps_over_seeds():
    model = MLPEnsemble(num_members=2, hidden_sizes=(4,), batch_size=4, buffer_capacity=8, steps_per_update=1)
    keys = jax.random.split(jax.random.key(14), 2)
    states = jax.vmap(model.init, in_axes=(0, None))(keys, D)
    first, second, label = _pairs(jax.random.key(15), 3)
    mask = jnp.array([[True, False, True], [False, False, False]])
    rep = lambda a: jnp.stack([a, a])
    states, info = jax.jit(jax.vmap(model.update))(keys, states, rep(first), rep(second), rep(label), mask)
    np.testing.assert_array_equal(np.asarray(states.buffer.size), [2, 0])
    assert info["rm_loss"].shape == (2,)
    assert jax.vmap(model.scores)(states, jnp.ones((2, K, D))).shape == (2, 2, K)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_members": 0}, "num_members"),
        ({"hidden_sizes": (8, 0)}, "hidden_sizes"),
        ({"hidden_sizes": (-3,)}, "hidden_sizes"),
        ({"prior_scale": -0.1}, "prior_scale"),
        ({"anchor": -1.0}, "anchor"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"anchor_schedule": "linear"}, "anchor_schedule"),
        ({"steps_per_update": 0}, "steps_per_update"),
        ({"batch_size": 0}, "batch_size"),
        ({"buffer_capacity": 0}, "buffer_capacity"),
        ({"anchor_reduction": "max"}, "anchor_reduction"),
        ({"weight_decay": -1e-5}, "weight_decay"),
        ({"init_scale": 0.0}, "init_scale"),
        ({"init_scale": -0.5}, "init_scale"),
        ({"minibatch": "bootstrap"}, "minibatch"),
        ({"minibatch": "shared", "batch_size": 64, "buffer_capacity": 32}, "buffer_capacity"),
    ],
)
def test_mlp_rejects_bad_hyperparameters(kwargs, field):
    with pytest.raises(ValueError, match=f"MLPEnsemble.{field}="):
        MLPEnsemble(**kwargs)


def test_mlp_hidden_sizes_list_is_normalised():
    model = MLPEnsemble(hidden_sizes=[8, 4])
    assert model.hidden_sizes == (8, 4)
    hash(model)  # usable as a static argument


# ------------------------------------------------------------------------------ Oat's choices

# Oat's reward model (shared minibatch without replacement, mean anchoring with the data schedule,
# weight decay, 0.5/√fan_in truncated-normal weights) at toy size. Capacity = batch = B, so once
# the buffer is full every step's minibatch is the whole buffer and the steps can be recomputed.
OAT_LIKE = MLPEnsemble(
    num_members=4,
    hidden_sizes=(16, 16),
    anchor=0.5,
    anchor_schedule="data",
    anchor_reduction="mean",
    weight_decay=5e-3,
    init_scale=0.5,
    minibatch="shared",
    learning_rate=1e-2,
    steps_per_update=3,
    batch_size=B,
    buffer_capacity=B,
)


@pytest.fixture(scope="module")
def oat():
    return {"state": OAT_LIKE.init(jax.random.key(30), D), "update": jax.jit(OAT_LIKE.update)}


def _truncated_normal_std(bound: float = 2.0) -> float:
    """Standard deviation of N(0, 1) truncated to [−bound, bound], in closed form."""
    density = math.exp(-(bound**2) / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1 - 2 * bound * density / mass)


def test_init_scale_draws_truncated_normal_kernels_and_zero_biases():
    fan_in = 256
    oat_like = MLPEnsemble(num_members=8, hidden_sizes=(64,), init_scale=0.5).init(jax.random.key(31), fan_in).params
    default = MLPEnsemble(num_members=8, hidden_sizes=(64,)).init(jax.random.key(31), fan_in).params
    kernel = np.asarray(oat_like["hidden"][0]["kernel"])  # [8, 256, 64]: 131072 draws
    sigma = 0.5 / math.sqrt(fan_in)
    assert np.abs(kernel).max() <= 2 * sigma * (1 + 1e-6)  # truncated at two standard deviations
    np.testing.assert_allclose(kernel.std(), _truncated_normal_std() * sigma, rtol=0.02)
    out = np.asarray(oat_like["out"]["kernel"])  # [8, 64, 1]
    assert np.abs(out).max() <= 2 * 0.5 / math.sqrt(64) * (1 + 1e-6)
    for layer in (oat_like["hidden"][0], oat_like["out"]):
        np.testing.assert_array_equal(np.asarray(layer["bias"]), 0.0)
    # nnx.Linear's default (LeCun normal) has standard deviation 1/√fan_in: 2/0.88 ≈ 2.3 times wider
    np.testing.assert_allclose(np.asarray(default["hidden"][0]["kernel"]).std(), 1 / math.sqrt(fan_in), rtol=0.02)


def test_shared_minibatch_waits_until_the_buffer_holds_a_batch(oat):
    state = oat["state"]
    first, second, label = _pairs(jax.random.key(32), B)
    partial, _ = oat["update"](jax.random.key(33), state, first, second, label, jnp.arange(B) < B - 1)
    assert int(partial.buffer.size) == B - 1
    assert _leaves_equal(partial.params, state.params) and _leaves_equal(partial.opt_state, state.opt_state)
    full, _ = oat["update"](jax.random.key(34), partial, first, second, label, jnp.arange(B) == B - 1)
    assert int(full.buffer.size) == B
    assert not _leaves_equal(full.params, partial.params)


def test_oat_configuration_takes_adams_steps_on_oats_member_averaged_objective(oat):
    """Recomputed from Oat's objective, written out independently: the members' *mean* BT loss
    on one shared minibatch, plus λ·B/N_t times the mean squared distance of *all* parameters to
    their initial values, with wd·ϕ added to the gradient (torch's Adam weight_decay), then Adam.
    The ensemble sums its members' losses instead: its gradient must be E times Oat's, which Adam
    turns into Oat's steps up to its ε. The reference feeds Adam E times Oat's gradient, because ε
    does matter here: gradients of 1e-6 move by ~1% of a step, and after a few steps a ReLU
    switching on one side only makes the trajectories part."""
    state = oat["state"]
    first, second, label = _pairs(jax.random.key(35), B)
    new, _ = oat["update"](jax.random.key(36), state, first, second, label, jnp.ones(B, bool))

    init = state.params
    flat0 = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(init)])
    lam = 0.5 * B / B  # enn_lambda · train_bs / total_num_queries

    def oat_loss(params):
        scores = lambda x: OAT_LIKE.scores(state.replace(params=params), x)  # noqa: E731
        bt = jnp.mean(bradley_terry_nll(scores(first), scores(second), label))  # mean over members and pairs
        flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])
        return bt + lam * jnp.mean(jnp.square(flat - flat0))

    adam = optax.adam(1e-2)
    params, opt = init, adam.init(init)
    for _ in range(3):
        grads = jax.tree.map(lambda g, p: 4 * (g + 5e-3 * p), jax.grad(oat_loss)(params), params)
        updates, opt = adam.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, (params, init)), strict=True)]
    # every leaf but the output bias moved (it cancels in r(first) − r(second), and starts at 0)
    assert sorted(m > 1e-3 for m in moved) == [False] + [True] * 5
    for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ LinearEnsemble

LIN = LinearEnsemble(num_members=3, prior_scale=1.0, noise_scale=0.5, regularization=2.0)


def test_linear_matches_closed_form_least_squares():
    d = 4
    state = LIN.init(jax.random.key(20), d)
    update = jax.jit(LIN.update)
    rng = np.random.default_rng(0)
    xs, ys, epss = [], [], []
    for round_ in range(3):
        first = rng.normal(size=(5, d)).astype(np.float32)
        second = rng.normal(size=(5, d)).astype(np.float32)
        label = rng.integers(0, 2, 5).astype(np.float32)
        mask = np.array([True, round_ != 1, True, False, True])
        key = jax.random.key(100 + round_)
        state, _ = update(key, state, first, second, label, mask)
        eps = np.asarray(LIN.perturbations(key, 5))
        xs.append((first - second)[mask])
        ys.append((2 * label - 1)[mask])
        epss.append(eps[mask])
    x, y, eps = (np.concatenate(a).astype(np.float64) for a in (xs, ys, epss))
    assert int(state.num_queries) == len(x) == 11

    gram = 2.0 * np.eye(d) + x.T @ x
    np.testing.assert_allclose(np.asarray(state.precision_inverse), np.linalg.inv(gram), rtol=1e-4, atol=1e-5)
    theta0 = np.asarray(state.theta_prior, np.float64)
    np.testing.assert_allclose(theta0, np.asarray(LIN.init(jax.random.key(20), d).theta), rtol=0, atol=0)
    for e in range(3):
        expected = np.linalg.solve(gram, 2.0 * theta0[e] + x.T @ (y + eps[:, e]))
        np.testing.assert_allclose(np.asarray(state.theta[e]), expected, rtol=1e-4, atol=1e-5)


def test_linear_scores_shapes_and_values():
    state = LIN.init(jax.random.key(21), D)
    features = jax.random.normal(jax.random.key(22), (2, K, D))
    scores = jax.jit(LIN.scores)(state, features)
    assert scores.shape == (3, 2, K)
    assert LIN.scores(state, features[0]).shape == (3, K)
    np.testing.assert_allclose(
        np.asarray(scores), np.einsum("bkd,ed->ebk", np.asarray(features), np.asarray(state.theta)), rtol=1e-5
    )
    assert not np.allclose(np.asarray(scores[0]), np.asarray(scores[1]))  # members differ at init


def test_linear_info_and_masking():
    state = LIN.init(jax.random.key(23), D)
    first, second, label = _pairs(jax.random.key(24), B)
    mask = jnp.array([True, False, True, True, False, True, True, False])
    new, info = jax.jit(LIN.update)(jax.random.key(25), state, first, second, label, mask)
    pred = np.asarray((first - second) @ state.theta.T)  # [B, E] before the update
    y = 2 * np.asarray(label) - 1
    m = np.asarray(mask)
    np.testing.assert_allclose(float(info["rm_loss"]), np.mean((y[m, None] - pred[m]) ** 2), rtol=1e-5)
    mean = pred.mean(1)
    assert int(info["rm_correct"]) == int(np.sum(((y > 0) & (mean > 0) | (y < 0) & (mean < 0)) & m))
    assert info["rm_correct"].dtype == jnp.int32 and info["rm_loss"].dtype == jnp.float32
    assert int(new.num_queries) == 5

    same, info = LIN.update(jax.random.key(25), state, first, second, label, jnp.zeros(B, bool))
    assert _leaves_equal(same, state)
    assert int(info["rm_correct"]) == 0 and float(info["rm_loss"]) == 0.0


def test_linear_learns_separable_problem():
    model = LinearEnsemble(num_members=4)
    state = model.init(jax.random.key(26), D)
    update = jax.jit(model.update)
    key = jax.random.key(27)
    for _ in range(10):
        key, k_pairs, k_update = jax.random.split(key, 3)
        state, _ = update(k_update, state, *_pairs(k_pairs, B), jnp.ones(B, bool))
    first, second, label = _pairs(jax.random.key(98), 200)
    s1, s2 = model.scores(state, first).mean(0), model.scores(state, second).mean(0)
    assert float(jnp.mean((s1 > s2) == (label > 0.5))) > 0.9


def test_linear_vmaps_over_seeds():
    keys = jax.random.split(jax.random.key(28), 3)
    states = jax.vmap(LIN.init, in_axes=(0, None))(keys, D)
    first, second, label = _pairs(jax.random.key(29), B)
    rep = lambda a: jnp.broadcast_to(a, (3,) + a.shape)
    states, info = jax.jit(jax.vmap(LIN.update))(
        keys, states, rep(first), rep(second), rep(label), rep(jnp.ones(B, bool))
    )
    assert states.theta.shape == (3, 3, D) and info["rm_correct"].shape == (3,)
    np.testing.assert_allclose(
        np.asarray(states.precision_inverse[0]), np.asarray(states.precision_inverse[2]), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_members": 0}, "num_members"),
        ({"prior_scale": -1.0}, "prior_scale"),
        ({"noise_scale": -0.5}, "noise_scale"),
        ({"regularization": 0.0}, "regularization"),
    ],
)
def test_linear_rejects_bad_hyperparameters(kwargs, field):
    with pytest.raises(ValueError, match=f"LinearEnsemble.{field}="):
        LinearEnsemble(**kwargs)
