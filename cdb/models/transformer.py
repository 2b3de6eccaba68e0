"""A causal decoder in Flax NNX (Llama / Qwen2, GPT-2, GPT-NeoX), and :class:`Policy`, its functional face.

Architecture ``"llama"`` (Llama / Qwen2 / SmolLM2, Touvron et al. 2023), the default::

    h = embed_tokens(tokens)
    for layer in layers:                                   # pre-norm residual blocks
        h = h + self_attn(input_layernorm(h))              # grouped-query attention with RoPE
        h = h + mlp(post_attention_layernorm(h))           # SwiGLU: down(silu(gate(h)) * up(h))
    hidden = norm(h)                                       # [B, T, D]
    logits = hidden @ embed_tokens.embedding.T  if tie_embeddings else  lm_head(hidden)   # [B, T, V]

Parameter names follow the Hugging Face module tree (``embed_tokens``, ``layers/<i>/self_attn/
{q,k,v,o}_proj``, ``layers/<i>/mlp/{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``, ``norm``, ``lm_head``) with Flax leaf names (``kernel`` ``[in, out]``,
i.e. the transpose of a torch ``weight``; ``bias``; ``embedding``; ``scale``), so weight
loaders are a rename plus a transpose. The module tree is a tree: a tied LM head reads the
embedding matrix through ``embed_tokens.attend`` rather than sharing a module.

The two other families reuse the same tree and names (weight loaders split their fused QKV
matrices into ``q_proj`` / ``k_proj`` / ``v_proj``, see :mod:`cdb.models.hf`):

* ``"gpt2"`` (Radford et al. 2019; the DPO paper's model): LayerNorm with bias, learned absolute
  positions ``embed_positions`` added to the token embeddings, no rotary embedding, a plain MLP
  ``down_proj(gelu_tanh(up_proj(x)))``, biases on every projection, tied LM head.
* ``"gpt_neox"`` (Black et al. 2022, Pythia: Biderman et al. 2023; the SEA paper's model):
  LayerNorm with bias, rotary embedding on the first ``rotary_pct · d_h`` dimensions of each head
  only, plain GELU MLP, and with ``parallel_residual`` the block
  ``h + attn(input_layernorm(h)) + mlp(post_attention_layernorm(h))``.

Optional LoRA adapters (Hu et al. 2021, ``lora_rank > 0``): every projection named in
``lora_targets`` becomes ``x W + b + (α / r) · x A B`` with ``A`` ``[in, r]`` and ``B`` ``[r, out]``
under ``<proj>/lora/{lora_a, lora_b}`` (``B = 0`` at initialisation); see :mod:`cdb.models.lora`.

Rotary position embeddings use the Hugging Face *rotate-half* convention: with
``inv_freq_i = θ^(−2i/d_h)`` and angles ``a = pos · inv_freq`` (repeated twice to ``d_h``),
``rope(x) = x · cos(a) + rotate_half(x) · sin(a)`` where ``rotate_half([x₁, x₂]) = [−x₂, x₁]``.

**Padding and positions.** Rows are *left*-padded: ``attention_mask[b, t] = 1`` for real
tokens, and ``positions = cumsum(mask) − 1`` (clipped at 0, see :func:`positions_from_mask`)
so each row's first real token has position 0. Keys that are padding are never attended to,
so a row's real tokens get the same logits whatever its padding. Queries at padding positions
produce finite but meaningless outputs.

**KV cache.** :class:`KVCache` is an explicit pytree preallocated to ``S`` slots; a call with a
cache writes the new keys / values at slots ``[index, index + T)`` and attends over all ``S``
slots (masked by which slots hold real tokens and by causality), so prefill and one-token
decoding are the same code and the shapes never change under ``jax.jit``.

**Functional design.** :class:`Policy` is a frozen dataclass holding only the
:class:`TransformerConfig` (it is hashable, hence a valid static argument of ``jax.jit``). The
parameters are the ``nnx.State`` of the module — a plain pytree of arrays keyed by the names
above, which optax, ``jax.tree`` and orbax take as is::

    policy = Policy(TransformerConfig(vocab_size=12, d_model=32, num_layers=2, num_heads=4,
                                      num_kv_heads=2, d_ff=64, max_len=32))
    params = policy.init(key)                                  # nnx.State
    logits, hidden = policy.apply(params, tokens, attention_mask)   # [B, T, V], [B, T, D]

The module graph (``nnx.GraphDef``) is rebuilt from the config on demand and cached, never
stored in the parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from cdb.validation import check_float, check_int

Array = jax.Array
PRNGKey = jax.Array
Params = nnx.State


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


ARCHITECTURES = ("llama", "gpt2", "gpt_neox")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of :class:`Transformer` (hashable; static under ``jax.jit``).

    Attributes:
      vocab_size: V, number of tokens.
      d_model: D, width of the residual stream.
      num_layers: number of decoder blocks.
      num_heads: H, query heads; must divide ``d_model`` (head size ``d_h = D / H``, even).
      num_kv_heads: key / value heads of grouped-query attention; must divide ``num_heads``
        (``num_kv_heads == num_heads`` is multi-head attention, ``1`` multi-query attention).
      d_ff: hidden width of the MLP (SwiGLU for ``"llama"``, plain GELU otherwise).
      max_len: longest sequence (prompt + response) the model is used on (a checkpoint's
        ``max_position_embeddings``); samplers and :meth:`Transformer.hidden_states` check it.
      rope_theta: base θ of the rotary frequencies (Llama 2: 1e4, SmolLM2: 1e5, Qwen2: 1e6).
      norm_eps: ε of RMSNorm / LayerNorm.
      tie_embeddings: whether the LM head is the transposed embedding matrix.
      dtype: compute dtype of activations (logits are always returned in float32).
      param_dtype: dtype of the parameters.
      qkv_bias: whether the q / k / v projections have a bias (Qwen2, GPT-2, NeoX: True; Llama: False).
      init_std: standard deviation of the normal initialisation of every matrix (HF: 0.02).
      architecture: ``"llama"`` (RMSNorm, SwiGLU, rotary), ``"gpt2"`` (LayerNorm, GELU MLP,
        learned absolute positions) or ``"gpt_neox"`` (LayerNorm, GELU MLP, partial rotary).
      activation: the MLP non-linearity: ``"silu"`` (Llama's SwiGLU gate), ``"gelu"`` (exact,
        erf; NeoX) or ``"gelu_tanh"`` (tanh approximation, HF ``gelu_new``; GPT-2).
      out_bias: whether the attention output projection ``o_proj`` has a bias (GPT-2, NeoX).
      mlp_bias: whether the MLP projections have biases (GPT-2, NeoX).
      rotary_pct: fraction of each head's dimensions that are rotated (NeoX / Pythia: 0.25);
        ``rotary_dim = int(d_h · rotary_pct)`` must be even and positive. Unused by ``"gpt2"``.
      rope_scaling: Llama 3.x frequency scaling ``(factor, low_freq_factor, high_freq_factor,
        original_max_position_embeddings)``, or None for plain RoPE.
      parallel_residual: NeoX's ``h + attn(ln₁(h)) + mlp(ln₂(h))`` instead of the sequential
        ``h' = h + attn(ln₁(h)); h' + mlp(ln₂(h'))``.
      lora_rank: rank r of the LoRA adapters (0: none).
      lora_alpha: LoRA scale numerator α (the update is ``(α / r) · A B``).
      lora_targets: names of the projections that carry adapters (a subset of ``LORA_TARGETS``).
      remat: recompute each layer's activations in the backward pass (``jax.checkpoint`` around
        every layer) instead of keeping them, for one more forward pass; passes without a
        gradient are unaffected.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_ff: int
    max_len: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    qkv_bias: bool = False
    init_std: float = 0.02
    architecture: str = "llama"
    activation: str = "silu"
    out_bias: bool = False
    mlp_bias: bool = False
    rotary_pct: float = 1.0
    rope_scaling: tuple[float, float, float, int] | None = None
    parallel_residual: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    remat: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff", "max_len"):
            check_int(self, name, getattr(self, name), low=1)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"TransformerConfig.architecture={self.architecture!r} is not supported; "
                f"expected one of {ARCHITECTURES}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"TransformerConfig.activation={self.activation!r} is not supported; expected one of {ACTIVATIONS}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"TransformerConfig.num_kv_heads={self.num_kv_heads!r} does not divide "
                f"num_heads={self.num_heads}; expected a divisor of num_heads"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerConfig.d_model={self.d_model!r} is not a multiple of "
                f"num_heads={self.num_heads}; "
                "expected d_model = num_heads * head_dim"
            )
        check_float(self, "rotary_pct", self.rotary_pct, low=0.0, high=1.0, low_inclusive=False)
        if self.uses_rope and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise ValueError(
                f"TransformerConfig.d_model={self.d_model!r} gives head_dim {self.head_dim} with "
                f"num_heads={self.num_heads} and rotary_pct={self.rotary_pct}, so {self.rotary_dim} rotated "
                "dimensions; rotary embeddings need an even, positive number (an even head_dim)"
            )
        check_float(self, "rope_theta", self.rope_theta, low=0.0, low_inclusive=False)
        check_float(self, "norm_eps", self.norm_eps, low=0.0, low_inclusive=False)
        check_float(self, "init_std", self.init_std, low=0.0, low_inclusive=False)
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, tuple) or len(self.rope_scaling) != 4:
                raise ValueError(
                    f"TransformerConfig.rope_scaling={self.rope_scaling!r} is not a tuple (factor, "
                    "low_freq_factor, high_freq_factor, original_max_position_embeddings)"
                )
            factor, low, high, original = self.rope_scaling
            if not (factor > 0 and 0 < low < high and original > 0):
                raise ValueError(
                    f"TransformerConfig.rope_scaling={self.rope_scaling!r}; expected factor > 0, "
                    "0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0"
                )
        check_int(self, "lora_rank", self.lora_rank, low=0)
        check_float(self, "lora_alpha", self.lora_alpha, low=0.0, low_inclusive=False)
        if not isinstance(self.lora_targets, tuple) or not set(self.lora_targets) <= set(LORA_TARGETS):
            raise ValueError(
                f"TransformerConfig.lora_targets={self.lora_targets!r}; expected a tuple of names from {LORA_TARGETS}"
            )
        if not isinstance(self.remat, bool):
            raise ValueError(f"TransformerConfig.remat={self.remat!r} is not allowed; expected True or False")
        if self.lora_rank and self.architecture != "llama" and "gate_proj" in self.lora_targets:
            raise ValueError(
                f"TransformerConfig.lora_targets={self.lora_targets!r} names gate_proj, which the "
                f"{self.architecture!r} architecture does not have (its MLP is up_proj, down_proj)"
            )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            try:
                ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"TransformerConfig.{name}={value!r} is not a floating dtype; "
                    "expected e.g. jnp.float32 or jnp.bfloat16"
                )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def uses_rope(self) -> bool:
        """Whether positions enter through rotary embeddings (Llama, NeoX) rather than learned vectors (GPT-2)."""
        return self.architecture != "gpt2"

    @property
    def rotary_dim(self) -> int:
        """Rotated dimensions per head, ``int(d_h · rotary_pct)`` (HF's truncation)."""
        return int(self.head_dim * self.rotary_pct)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def positions_from_mask(attention_mask: Array) -> Array:
    """Per-row positions of left-padded tokens: ``cumsum(mask) − 1`` clipped at 0, ``[B, T]`` int32."""
    mask = jnp.asarray(attention_mask).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def rope_inv_freq(rotary_dim: int, theta: float, scaling: tuple[float, float, float, int] | None = None) -> np.ndarray:
    """Inverse frequencies ``θ^(−2i/r)``, ``i < r/2``, float32 ``[r/2]`` (HF's default RoPE).

    With Llama 3.x ``scaling = (factor, low, high, L₀)`` (HF ``rope_type="llama3"``): wavelengths
    ``λ = 2π / f`` above ``L₀ / low`` are divided by ``factor``, those below ``L₀ / high`` kept, and
    the band between interpolated, ``f' = (1 − s) f / factor + s f`` with ``s = (L₀/λ − low) / (high − low)``.
    """
    inv_freq = (1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))).astype(np.float32)
    if scaling is None:
        return inv_freq
    factor, low, high, original = scaling
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_angles(
    positions: Array,
    head_dim: int,
    theta: float,
    scaling: tuple[float, float, float, int] | None = None,
) -> tuple[Array, Array]:
    """``cos, sin`` of the rotary angles, ``[B, T, head_dim]`` float32 (HF rotate-half layout).

    ``head_dim`` is the number of rotated dimensions (``config.rotary_dim``: all of ``d_h`` for
    Llama, a fraction for NeoX); ``scaling`` is Llama 3's (see :func:`rope_inv_freq`).
    """
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates ``x`` ``[B, T, heads, d_h]`` by angles ``cos, sin`` ``[B, T, r]`` (rotate-half).

    With ``r < d_h`` (partial rotary, GPT-NeoX) only the first ``r`` dimensions of each head are
    rotated and the rest pass through unchanged.
    """
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = r // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = (x_rot.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)
    return out if r == x.shape[-1] else jnp.concatenate([out, x_pass], axis=-1)


@struct.dataclass
class KVCache:
    """Preallocated keys and values of every layer, an explicit pytree.

    Heads before slots, ``[B, head, S, d_h]``: the attention products batch over ``(B, head)``
    and XLA wants batch dimensions major, so a decode step reads the cache in place, with no
    transpose of it.

    Attributes:
      keys: per layer ``[B, num_kv_heads, S, d_h]`` (rotary embedding already applied).
      values: per layer ``[B, num_kv_heads, S, d_h]``.
      mask: ``[B, S]`` bool, which slots hold real (non-padding) tokens.
      index: int32 scalar, the next slot to write (shared by all rows: padding is on the left).
    """

    keys: tuple[Array, ...]
    values: tuple[Array, ...]
    mask: Array
    index: Array

    @property
    def size(self) -> int:
        return self.mask.shape[1]


def init_cache(config: TransformerConfig, batch_size: int, size: int) -> KVCache:
    """An empty :class:`KVCache` of ``size`` slots for ``batch_size`` rows."""
    shape = (batch_size, config.num_kv_heads, size, config.head_dim)
    zeros = tuple(jnp.zeros(shape, config.dtype) for _ in range(config.num_layers))
    return KVCache(
        keys=zeros,
        values=tuple(jnp.zeros(shape, config.dtype) for _ in range(config.num_layers)),
        mask=jnp.zeros((batch_size, size), bool),
        index=jnp.zeros((), jnp.int32),
    )


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class LoRALinear(nnx.Linear):
    """``nnx.Linear`` plus a low-rank update: ``y = x W + b + (α / r) · x A B`` (Hu et al. 2021, LoRA).

    ``A`` ``[in, r]`` (He-uniform) and ``B`` ``[r, out]`` (zeros, so the layer equals its base at
    initialisation) live in ``lora/{lora_a, lora_b}`` as float32 ``nnx.LoRAParam``; ``kernel`` / ``bias``
    keep ``nnx.Linear``'s names, so the base weights load unchanged.
    """

    def __init__(self, n_in: int, n_out: int, *, lora_rank: int, lora_scale: float, rngs: nnx.Rngs, **kwargs):
        super().__init__(n_in, n_out, rngs=rngs, **kwargs)
        # Adapters are float32 whatever the base's dtype: optimiser steps on bf16 factors lose the
        # small updates early in training (the usual mixed-precision LoRA practice).
        self.lora = nnx.LoRA(n_in, lora_rank, n_out, dtype=kwargs.get("dtype"), param_dtype=jnp.float32, rngs=rngs)
        self.lora_scale = lora_scale

    def __call__(self, x: Array) -> Array:
        return super().__call__(x) + self.lora_scale * self.lora(x)


def _linear(
    config: TransformerConfig, n_in: int, n_out: int, rngs: nnx.Rngs, bias: bool = False, name: str = ""
) -> nnx.Linear:
    kwargs = dict(
        use_bias=bias,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nnx.initializers.normal(config.init_std),
    )
    if config.lora_rank and name in config.lora_targets:
        scale = config.lora_alpha / config.lora_rank
        return LoRALinear(n_in, n_out, lora_rank=config.lora_rank, lora_scale=scale, rngs=rngs, **kwargs)
    return nnx.Linear(n_in, n_out, rngs=rngs, **kwargs)


def _norm(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    """RMSNorm (Llama) or LayerNorm with bias (GPT-2, NeoX), statistics in float32."""
    kwargs = dict(epsilon=config.norm_eps, dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
    if config.architecture == "llama":
        return nnx.RMSNorm(config.d_model, **kwargs)
    return nnx.LayerNorm(config.d_model, **kwargs)


def _activation(name: str, x: Array) -> Array:
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=name == "gelu_tanh")


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings (query head h reads kv head ``h // G``).

    Without rotary embeddings (GPT-2, ``cos = sin = None``) the positions are already in ``x``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, hd = config.d_model, config.head_dim
        self.q_proj = _linear(config, d, config.num_heads * hd, rngs, bias=config.qkv_bias, name="q_proj")
        self.k_proj = _linear(config, d, config.num_kv_heads * hd, rngs, bias=config.qkv_bias, name="k_proj")
        self.v_proj = _linear(config, d, config.num_kv_heads * hd, rngs, bias=config.qkv_bias, name="v_proj")
        self.o_proj = _linear(config, config.num_heads * hd, d, rngs, bias=config.out_bias, name="o_proj")

    def __call__(
        self,
        x: Array,
        cos: Array | None,
        sin: Array | None,
        key_mask: Array,
        offset: Array | int,
        cache: tuple[Array, Array] | None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """``x`` ``[B, T, D]``; ``key_mask`` ``[B, S]`` over the key slots (or ``[B, T, S]``, per query);
        ``offset`` = slot of query 0.

        Without a cache the keys are the T new tokens (S = T, offset 0); with a cache
        ``(k, v)`` of S slots the new keys are written at ``[offset, offset + T)`` first.
        """
        cfg = self.config
        b, t, _ = x.shape
        hd, hkv = cfg.head_dim, cfg.num_kv_heads
        groups = cfg.num_heads // hkv
        q = self.q_proj(x).reshape(b, t, cfg.num_heads, hd)
        k = self.k_proj(x).reshape(b, t, hkv, hd)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = self.v_proj(x).reshape(b, t, hkv, hd)
        new_cache = None
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, hkv, T, d_h], the cache's layout
        if cache is not None:
            k_all, v_all = cache
            k = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype), (0, 0, offset, 0))
            v = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype), (0, 0, offset, 0))
            new_cache = (k, v)
        s = k.shape[2]
        q = q.reshape(b, t, hkv, groups, hd)
        scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
        query_slot = offset + jnp.arange(t)[:, None]
        # key_mask [B, S] says which slots are real; a [B, T, S] mask also says which query reads which
        pairs = key_mask[:, None, :] if key_mask.ndim == 2 else key_mask
        allowed = (jnp.arange(s)[None, :] <= query_slot)[None] & pairs  # [B, T, S]
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bksd->btkgd", weights, v).reshape(b, t, cfg.num_heads * hd)
        return self.o_proj(out), new_cache


class MLP(nnx.Module):
    """SwiGLU feed-forward block: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Shazeer, 2020)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.activation = config.activation
        self.gate_proj = _linear(config, config.d_model, config.d_ff, rngs, bias=config.mlp_bias, name="gate_proj")
        self.up_proj = _linear(config, config.d_model, config.d_ff, rngs, bias=config.mlp_bias, name="up_proj")
        self.down_proj = _linear(config, config.d_ff, config.d_model, rngs, bias=config.mlp_bias, name="down_proj")

    def __call__(self, x: Array) -> Array:
        return self.down_proj(_activation(self.activation, self.gate_proj(x)) * self.up_proj(x))


class PlainMLP(nnx.Module):
    """GPT-2 / NeoX feed-forward block: ``down_proj(gelu(up_proj(x)))``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.activation = config.activation
        self.up_proj = _linear(config, config.d_model, config.d_ff, rngs, bias=config.mlp_bias, name="up_proj")
        self.down_proj = _linear(config, config.d_ff, config.d_model, rngs, bias=config.mlp_bias, name="down_proj")

    def __call__(self, x: Array) -> Array:
        return self.down_proj(_activation(self.activation, self.up_proj(x)))


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``h + attn(norm(h))`` then ``h + mlp(norm(h))`` (or both from ``h``, parallel)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.parallel_residual = config.parallel_residual
        self.input_layernorm = _norm(config, rngs)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = _norm(config, rngs)
        self.mlp = MLP(config, rngs=rngs) if config.architecture == "llama" else PlainMLP(config, rngs=rngs)

    def __call__(self, h, cos, sin, key_mask, offset, cache):
        attn, cache = self.self_attn(self.input_layernorm(h), cos, sin, key_mask, offset, cache)
        if self.parallel_residual:
            return h + attn + self.mlp(self.post_attention_layernorm(h)), cache
        h = h + attn
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, cache


class Transformer(nnx.Module):
    """Causal decoder (Llama, GPT-2 or GPT-NeoX, by ``config.architecture``).

    ``(tokens, positions, attention_mask, cache) -> (logits, hidden, cache)``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        embed = functools.partial(
            nnx.Embed,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            embedding_init=nnx.initializers.normal(config.init_std),
            rngs=rngs,
        )
        self.embed_tokens = embed(config.vocab_size, config.d_model)
        if not config.uses_rope:
            self.embed_positions = embed(config.max_len, config.d_model)
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.norm = _norm(config, rngs)
        if not config.tie_embeddings:
            self.lm_head = _linear(config, config.d_model, config.vocab_size, rngs)

    def hidden_states(
        self,
        tokens: Array,
        positions: Array | None = None,
        attention_mask: Array | None = None,
        cache: KVCache | None = None,
        segments: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Final-normed hidden states ``[B, T, D]`` (the LM head's input) and the updated cache.

        ``attention_mask`` ``[B, T]`` (1 = real token; default all ones) marks the new tokens;
        ``positions`` ``[B, T]`` default to :func:`positions_from_mask` of it, which is right only
        when there is no cache (with a cache, continue each row's count of real tokens).
        A sequence longer than ``config.max_len`` (the model's context) is an error; packed rows
        (``segments``) may be longer, since each packed sequence's positions restart, and their
        caller keeps every sequence within the context.
        """
        cfg = self.config
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, time]; got shape {tokens.shape}")
        if cache is None and segments is None and tokens.shape[1] > cfg.max_len:
            raise ValueError(
                f"tokens have {tokens.shape[1]} positions, more than the model's context "
                f"TransformerConfig.max_len={cfg.max_len}; shorten the prompt (or truncate it, e.g. keep its "
                f"last {cfg.max_len} tokens)"
            )
        mask = jnp.ones(tokens.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if mask.shape != tokens.shape:
            raise ValueError(f"attention_mask shape {mask.shape} differs from tokens shape {tokens.shape}")
        if positions is None:
            positions = positions_from_mask(mask)
        positions = jnp.asarray(positions)
        if cache is None:
            offset, key_mask = 0, mask
            if segments is not None:
                # packed sequences: a token reads segment 0 (the shared prefix) and its own segment
                segments = jnp.asarray(segments)
                same = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
                key_mask = mask[:, None, :] & same  # [B, T, T]
        else:
            if segments is not None:
                raise ValueError("hidden_states: segments are for a pass without a cache (packed sequences)")
            offset = cache.index
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, offset))
        h = self.embed_tokens(tokens)
        if cfg.uses_rope:
            cos, sin = rope_angles(positions, cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling)
        else:
            cos = sin = None
            h = h + self.embed_positions(positions)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            if cfg.remat:
                run = jax.checkpoint(lambda h, c, layer=layer: layer(h, cos, sin, key_mask, offset, c))
                h, layer_cache = run(h, layer_cache)
            else:
                h, layer_cache = layer(h, cos, sin, key_mask, offset, layer_cache)
            if cache is not None:
                keys.append(layer_cache[0])
                values.append(layer_cache[1])
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(keys), tuple(values), key_mask, cache.index + tokens.shape[1])
        return self.norm(h), new_cache

    def logits(self, hidden: Array) -> Array:
        """LM head: ``[..., D] -> [..., V]`` float32 (tied: ``hidden @ embedding.T``)."""
        out = self.embed_tokens.attend(hidden) if self.config.tie_embeddings else self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        attention_mask: Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Array, Array, KVCache | None]:
        """``tokens`` ``[B, T]`` -> ``(logits [B, T, V] float32, hidden [B, T, D], new_cache)``."""
        hidden, cache = self.hidden_states(tokens, positions, attention_mask, cache)
        return self.logits(hidden), hidden, cache


# --------------------------------------------------------------------------------------------
# Functional wrapper
# --------------------------------------------------------------------------------------------


@functools.cache
def _graphdef(config: TransformerConfig) -> nnx.GraphDef:
    """The static module graph of ``config``, built once without allocating weights."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    return graphdef


@dataclasses.dataclass(frozen=True)
class Policy:
    """A causal LM as pure functions of an explicit parameter pytree (hashable, jit-static).

    Parameters are the ``nnx.State`` of :class:`Transformer` (see the module docstring for the
    key names). Every method is pure and can be traced by ``jax.jit`` / ``vmap`` / ``grad``.
    """

    config: TransformerConfig

    @property
    def graphdef(self) -> nnx.GraphDef:
        return _graphdef(self.config)

    def init(self, key: PRNGKey) -> Params:
        """Fresh parameters: every matrix ``N(0, init_std²)``, norm scales 1, biases 0."""
        return nnx.split(Transformer(self.config, rngs=nnx.Rngs(key)))[1]

    def abstract_params(self) -> Params:
        """Shapes and dtypes of the parameters (``jax.ShapeDtypeStruct`` leaves), for loaders / orbax."""
        return nnx.split(nnx.eval_shape(lambda: Transformer(self.config, rngs=nnx.Rngs(0))))[1]

    def module(self, params: Params) -> Transformer:
        """The NNX module holding ``params``."""
        return nnx.merge(self.graphdef, params)

    def apply(
        self,
        params: Params,
        tokens: Array,
        attention_mask: Array | None = None,
        positions: Array | None = None,
    ) -> tuple[Array, Array]:
        """Full forward pass: ``tokens`` ``[B, T]`` -> ``(logits [B, T, V] float32, hidden [B, T, D])``.

        Left-padded rows: ``attention_mask`` ``[B, T]`` (default all ones); positions default to
        ``cumsum(mask) − 1``.
        """
        logits, hidden, _ = self.module(params)(tokens, positions, attention_mask)
        return logits, hidden

    def hidden(
        self,
        params: Params,
        tokens: Array,
        attention_mask: Array | None = None,
        positions: Array | None = None,
        segments: Array | None = None,
    ) -> Array:
        """Final-normed hidden states ``[B, T, D]`` without the LM head.

        ``segments`` ``[B, T]`` int packs several sequences that share a prefix into one row: a
        token attends only to earlier real tokens of segment 0 (the prefix) and of its own segment
        (``positions`` then restart each segment after the prefix).
        """
        return self.module(params).hidden_states(tokens, positions, attention_mask, segments=segments)[0]

    def logits_from_hidden(self, params: Params, hidden: Array) -> Array:
        """LM head alone: ``[..., D] -> [..., V]`` float32."""
        return self.module(params).logits(hidden)

    def init_cache(self, batch_size: int, size: int) -> KVCache:
        """An empty :class:`KVCache` of ``size`` slots (at most ``config.max_len``)."""
        check_int("Policy.init_cache", "size", size, low=1, high=self.config.max_len)
        return init_cache(self.config, batch_size, size)

    def apply_cached(
        self,
        params: Params,
        tokens: Array,
        attention_mask: Array,
        positions: Array,
        cache: KVCache,
        *,
        with_logits: bool = True,
    ) -> tuple[Array | None, Array, KVCache]:
        """Forward pass of ``T`` new tokens against ``cache``: ``(logits [B, T, V] | None, hidden, cache)``.

        The new tokens occupy slots ``[cache.index, cache.index + T)``; ``positions`` ``[B, T]``
        continue each row's count of real tokens. ``with_logits=False`` skips the LM head
        (prefill only needs the last position's logits).
        """
        module = self.module(params)
        hidden, cache = module.hidden_states(tokens, positions, attention_mask, cache)
        return (module.logits(hidden) if with_logits else None), hidden, cache
