"""LoRA adapters for the policy π_θ, so that the reference π_ref stays the frozen base model.

Low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
each targeted projection ``y = x W + b`` becomes ``y = x W + b + (α / r) · x A B`` with
``A`` ``[in, r]`` (He-uniform) and ``B`` ``[r, out]`` **zero** at initialisation, so the adapted
policy equals the base exactly until it is trained; only ``A`` and ``B`` are trained::

    reference = load_pretrained("smollm2-135m-instruct")             # π_ref: reference.policy, reference.params
    policy, params = with_lora(reference, rank=8, alpha=16, key=key)   # π_θ: base weights + adapters
    optimizer = lora_optimizer(optax.adamw(1e-4), params)            # updates A, B only
    opt_state = optimizer.init(params)

``policy`` is an ordinary :class:`~cdb.models.Policy` (its config has ``lora_rank > 0``), so every
sampler and loss takes it unchanged. ``params`` holds the very base arrays of ``reference.params``
(not copies) plus the adapter leaves ``<proj>/lora/{lora_a, lora_b}``. :func:`merge_lora` folds
the adapters back into plain base-shaped weights.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cdb.models.transformer import LORA_TARGETS, Params, Policy, PRNGKey
from cdb.validation import check_float, check_int


def _unwrap(model: Any, params: Params | None) -> tuple[Policy, Params | None]:
    from cdb.models.pretrained import Pretrained

    if isinstance(model, Pretrained):
        return model.policy, model.params if params is None else params
    if isinstance(model, Policy):
        return model, params
    raise ValueError(f"model must be a cdb.models.Pretrained or Policy; got {type(model).__name__}")


@functools.partial(jax.jit, static_argnums=0)
def _adapter_leaves(policy: Policy, key: PRNGKey) -> dict:
    """The LoRA leaves of ``policy.init(key)`` (the base matrices' draws are dead code under jit)."""
    return nnx.to_pure_dict(nnx.filter_state(policy.init(key), nnx.LoRAParam))


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def with_lora(
    model: Any,
    params: Params | None = None,
    *,
    rank: int,
    alpha: float | None = None,
    key: PRNGKey,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
) -> tuple[Policy, Params]:
    """π_θ = the base model plus rank-``rank`` adapters on the projections ``targets``.

    Args:
      model: a :class:`~cdb.models.Pretrained` (its ``params`` are the base unless ``params`` is
        given) or a base :class:`~cdb.models.Policy` (then ``params`` is required).
      params: base parameters (``lora_rank == 0`` tree).
      rank: r ≥ 1. alpha: α > 0, the update is scaled by ``α / r`` (default ``α = r``, scale 1).
      key: draws ``A``; ``B = 0``, so the adapted model's outputs equal the base's at initialisation.
      targets: names from ``("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
        "down_proj")`` (``gate_proj`` exists only in Llama-family models); every layer's
        projection of each name is adapted.

    Returns:
      ``(policy, params)``: a :class:`~cdb.models.Policy` whose config has ``lora_rank=rank``,
      and its parameters (the base arrays, shared, plus the adapters).
    """
    policy, params = _unwrap(model, params)
    if params is None:
        raise ValueError("with_lora(policy, params, ...): params (the base parameters) are required with a Policy")
    if policy.config.lora_rank:
        raise ValueError(
            f"with_lora: the model already has adapters (lora_rank={policy.config.lora_rank}); "
            "pass the base model (merge_lora returns one)"
        )
    check_int("with_lora", "rank", rank, low=1)
    alpha = float(rank) if alpha is None else alpha
    check_float("with_lora", "alpha", alpha, low=0.0, low_inclusive=False)
    targets = tuple(targets)
    if not targets or not set(targets) <= set(LORA_TARGETS):
        raise ValueError(f"with_lora: targets={targets!r}; expected a non-empty tuple of names from {LORA_TARGETS}")
    lora_policy = Policy(dataclasses.replace(policy.config, lora_rank=rank, lora_alpha=alpha, lora_targets=targets))
    state = lora_policy.abstract_params()
    nnx.replace_by_pure_dict(state, _deep_merge(nnx.to_pure_dict(params), _adapter_leaves(lora_policy, key)))
    return lora_policy, state


def _is_lora_path(path: tuple) -> bool:
    return any(getattr(k, "key", None) == "lora" for k in path)


def lora_trainable(params: Params) -> Params:
    """A pytree like ``params``: ``True`` on the adapter leaves (``…/lora/lora_a``, ``lora_b``), else ``False``.

    For ``optax.masked`` / ``optax.multi_transform``. Note that ``optax.masked(opt, mask)`` passes
    the gradient of unmasked leaves through unchanged; to keep the base frozen use
    :func:`lora_optimizer` (``set_to_zero`` on them) or zero those gradients.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_lora_path(path), params)


def lora_optimizer(optimizer: optax.GradientTransformation, params: Params) -> optax.GradientTransformation:
    """``optimizer`` on the adapters and zero updates on every base leaf (``optax.multi_transform``)."""
    labels = jax.tree_util.tree_map_with_path(lambda path, _: "lora" if _is_lora_path(path) else "frozen", params)
    return optax.multi_transform({"lora": optimizer, "frozen": optax.set_to_zero()}, labels)


def merge_lora(policy: Policy, params: Params) -> tuple[Policy, Params]:
    """The base-shaped model with each adapted kernel replaced by ``W + (α / r) · A B`` (outputs unchanged)."""
    cfg = policy.config
    if not cfg.lora_rank:
        return policy, params
    scale = cfg.lora_alpha / cfg.lora_rank
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.name.startswith("lora_")}
    base = Policy(dataclasses.replace(cfg, **defaults))  # equal to the model with_lora started from

    def fold(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "lora" in node:
            lora = node["lora"]
            delta = (lora["lora_a"].astype(jnp.float32) @ lora["lora_b"].astype(jnp.float32)) * scale
            kernel = (node["kernel"].astype(jnp.float32) + delta).astype(node["kernel"].dtype)
            return {**{k: v for k, v in node.items() if k != "lora"}, "kernel": kernel}
        return {k: fold(v) for k, v in node.items()}

    state = base.abstract_params()
    nnx.replace_by_pure_dict(state, fold(nnx.to_pure_dict(params)))
    return base, state


def base_params(params: Params) -> Params:
    """``params`` without the adapter leaves (the frozen base, π_ref's parameters)."""
    return nnx.filter_state(params, lambda path, variable: "lora" not in path)
