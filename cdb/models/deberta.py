"""DeBERTa-v2 / v3 (He et al. 2021; 2023) in Flax NNX with transformers' sequence-classification head.

Small public reward models are often DeBERTa-v3 encoders with a one-output head (e.g. the
OpenAssistant reward models, which read ``(prompt, response)`` as a text pair). The module follows
``DebertaV2ForSequenceClassification`` of transformers::

    e = LayerNorm(proj(word[ids] (+ position[0..T)) (+ token_type[types]))) · mask     # [B, T, D]
    h = e
    for layer in layers:                                       # post-LayerNorm blocks
        h = LayerNorm(h + attn_out(DisentangledAttention(h)))
        h = LayerNorm(h + ffn_out(act(ffn_in(h))))
        (after the first layer, with conv_kernel_size > 0:  h = LayerNorm(h + act(conv(e) · mask)) · mask)
    pooled = act(pooler(h[:, 0]))                              # the first token ([CLS])
    score  = classifier(pooled)                                # [B, num_labels]

**Disentangled attention.** With content projections ``Q = h W_q``, ``K = h W_k``, ``V = h W_v``,
relative embeddings ``R`` ``[2k, D]`` (LayerNorm-ed when ``norm_rel_ebd``) and their projections
``K_r = R W_{k,r}``, ``Q_r = R W_{q,r}`` (``W_{k,r} = W_k``, ``W_{q,r} = W_q`` with ``share_att_key``),
the score of query ``i`` for key ``j`` is::

    A[i, j] = ( Q_i·K_j  +  Q_i·K_r[c(i, j)]  +  K_j·Q_r[c'(j, i)] ) / √(d_h · s)     # c2p, p2c
    c(i, j)  = clip(δ(i − j) + k, 0, 2k − 1),    c'(j, i) = clip(−δ(j − i) + k, 0, 2k − 1)

with ``s = 1 + [c2p] + [p2c]`` and ``k = position_buckets`` (or ``max_relative_positions``). The
relative distance ``δ`` is the plain difference, or with ``position_buckets > 0`` (DeBERTa-v3) the
log buckets ``δ(r) = r`` for ``|r| ≤ k/2`` and ``sign(r)·(⌈log(|r|/m)/log((P − 1)/m)·(m − 1)⌉ + m)``
otherwise (``m = k/2``, ``P = max_relative_positions``), computed as transformers does in float32.
Padding keys are masked and padding queries attend uniformly (transformers' mask
``mask_i · mask_j``), so rows are **right**-padded and the pooler reads the real first token.

Parameter names are ours (``word_embeddings``, ``layers/<i>/{query,key,value,pos_query,pos_key,
attn_out,attn_norm,ffn_in,ffn_out,ffn_norm}``, ``rel_embeddings``, ``pooler``, ``classifier`` …),
with Flax leaves (``kernel`` ``[in, out]``, ``bias``, ``scale``, ``embedding``); :func:`deberta_params_from_hf`
maps transformers' names onto them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdb.validation import check_int

Array = jax.Array

#: transformers' ``ACT2FN`` names → ``(function, approximate)``; the tanh forms are one formula.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
POSITION_ATTENTION = ("c2p", "p2c")


@dataclasses.dataclass(frozen=True)
class DebertaConfig:
    """Hyper-parameters of :class:`DebertaV2` (hashable; static under ``jax.jit``), transformers' names.

    Attributes:
      vocab_size, hidden_size (D), num_layers, num_heads, intermediate_size: the shape.
      max_position_embeddings: longest input (rows of the absolute position table when there is one).
      type_vocab_size: token types (segments) added to the embeddings; 0 for none (DeBERTa-v3).
      embedding_size: width of the embedding tables, projected to D when different.
      layer_norm_eps: ε of every LayerNorm.
      hidden_act / pooler_hidden_act / conv_act: activations (keys of :data:`ACTIVATIONS`).
      position_biased_input: add absolute position embeddings to the input (v2: yes, v3: no).
      relative_attention: disentangled attention on relative positions.
      max_relative_positions: P, the largest relative distance (transformers' ``-1`` resolved to
        ``max_position_embeddings`` by :meth:`from_hf`).
      position_buckets: k of the log buckets (DeBERTa-v3: 256), or ``-1`` for plain distances.
      pos_att_type: which relative terms: a subset of ``("c2p", "p2c")``.
      share_att_key: project relative embeddings with the content ``query`` / ``key`` projections.
      norm_rel_ebd: LayerNorm the relative embeddings (``norm_rel_ebd = "layer_norm"``).
      conv_kernel_size, conv_groups: the convolution after the first layer (0: none).
      num_labels: outputs of the classifier (a reward model has one).
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    embedding_size: int | None = None
    layer_norm_eps: float = 1e-7
    hidden_act: str = "gelu"
    position_biased_input: bool = True
    relative_attention: bool = False
    max_relative_positions: int = 512
    position_buckets: int = -1
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: bool = False
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    pooler_hidden_act: str = "gelu"
    num_labels: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "num_labels"):
            check_int(self, name, getattr(self, name), low=1)
        check_int(self, "max_position_embeddings", self.max_position_embeddings, low=1)
        check_int(self, "type_vocab_size", self.type_vocab_size, low=0)
        if self.embedding_size is None:
            object.__setattr__(self, "embedding_size", self.hidden_size)
        check_int(self, "embedding_size", self.embedding_size, low=1)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"DebertaConfig.hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )
        for name in ("hidden_act", "pooler_hidden_act", "conv_act"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(
                    f"DebertaConfig.{name}={getattr(self, name)!r} is not supported; expected one of "
                    f"{sorted(ACTIVATIONS)}"
                )
        if not set(self.pos_att_type) <= set(POSITION_ATTENTION):
            raise ValueError(
                f"DebertaConfig.pos_att_type={self.pos_att_type!r}; expected a subset of {POSITION_ATTENTION}"
            )
        if self.relative_attention:
            check_int(self, "max_relative_positions", self.max_relative_positions, low=1)
            if self.position_buckets > 0:
                check_int(self, "position_buckets", self.position_buckets, low=4)
        check_int(self, "conv_kernel_size", self.conv_kernel_size, low=0)
        if self.conv_kernel_size and (self.conv_kernel_size % 2 == 0 or self.hidden_size % self.conv_groups):
            raise ValueError(
                f"DebertaConfig.conv_kernel_size={self.conv_kernel_size}, conv_groups={self.conv_groups}; expected "
                "an odd kernel (the output keeps the input's length) and groups dividing hidden_size"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def attention_span(self) -> int:
        """k: half the number of relative embeddings (``position_buckets``, else ``max_relative_positions``)."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> DebertaConfig:
        """From a transformers ``config.json`` dict (``model_type`` ``"deberta-v2"``); ValueError if unsupported."""
        if hf.get("model_type") != "deberta-v2":
            raise ValueError(
                f"config.json model_type={hf.get('model_type')!r}; expected 'deberta-v2' (DeBERTa-v2 and -v3)"
            )
        d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        if hf.get("attention_head_size") not in (None, d // heads):
            raise ValueError(
                f"unsupported attention_head_size={hf['attention_head_size']} != hidden_size / num_attention_heads"
            )
        if hf.get("pooler_hidden_size") not in (None, d):
            raise ValueError(f"unsupported pooler_hidden_size={hf['pooler_hidden_size']} != hidden_size={d}")
        if int(hf.get("z_steps", 0) or 0) > 1:
            raise ValueError(f"unsupported z_steps={hf['z_steps']} (the enhanced mask decoder's); expected 0")
        pos_att = hf.get("pos_att_type") or ()
        if isinstance(pos_att, str):
            pos_att = [x.strip() for x in pos_att.lower().split("|")]
        max_relative = int(hf.get("max_relative_positions", -1))
        max_position = int(hf.get("max_position_embeddings", 512))
        norm_rel = [x.strip() for x in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=d,
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            intermediate_size=int(hf["intermediate_size"]),
            max_position_embeddings=max_position,
            type_vocab_size=int(hf.get("type_vocab_size", 0)),
            embedding_size=int(hf.get("embedding_size") or d),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-7)),
            hidden_act=hf.get("hidden_act", "gelu"),
            position_biased_input=bool(hf.get("position_biased_input", True)),
            relative_attention=bool(hf.get("relative_attention", False)),
            max_relative_positions=max_relative if max_relative > 0 else max_position,
            position_buckets=int(hf.get("position_buckets", -1)),
            pos_att_type=tuple(pos_att),
            share_att_key=bool(hf.get("share_att_key", False)),
            norm_rel_ebd="layer_norm" in norm_rel,
            conv_kernel_size=int(hf.get("conv_kernel_size", 0)),
            conv_groups=int(hf.get("conv_groups", 1)),
            conv_act=hf.get("conv_act", "tanh"),
            pooler_hidden_act=hf.get("pooler_hidden_act", "gelu"),
            num_labels=int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2),
        )


# --------------------------------------------------------------------------------------------
# Relative positions
# --------------------------------------------------------------------------------------------


def log_bucket_position(relative: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """DeBERTa-v3's log buckets of relative distances (see the module docstring), int64 of ``relative``'s shape.

    Float32 arithmetic as in transformers' ``make_log_bucket_position``, so ``⌈·⌉`` lands on the same side.
    """
    relative = np.asarray(relative, np.int64)
    mid = buckets // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    ratio = np.log(abs_pos.astype(np.float32) / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(ratio * np.float32(mid - 1)).astype(np.float32) + np.float32(mid)
    return np.where(abs_pos <= mid, relative, log_pos * np.sign(relative)).astype(np.int64)


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
    """``δ(i − j)`` for queries ``i`` and keys ``j`` of a length-``length`` input: ``[T, T]`` int64 (static)."""
    ids = np.arange(length)
    relative = ids[:, None] - ids[None, :]
    if buckets > 0 and max_position > 0:
        relative = log_bucket_position(relative, buckets, max_position)
    return relative


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


def _dense(n_in: int, n_out: int, rngs: nnx.Rngs, bias: bool = True) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=bias, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _norm(config: DebertaConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False, rngs=rngs)


def _embed(n: int, d: int, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(n, d, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)


class DebertaLayer(nnx.Module):
    """One block: disentangled self-attention, then the feed-forward block, each ``LayerNorm(h + f(h))``."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.hidden_size
        self.query = _dense(d, d, rngs)
        self.key = _dense(d, d, rngs)
        self.value = _dense(d, d, rngs)
        if config.relative_attention and not config.share_att_key:
            if "c2p" in config.pos_att_type:
                self.pos_key = _dense(d, d, rngs)
            if "p2c" in config.pos_att_type:
                self.pos_query = _dense(d, d, rngs)
        self.attn_out = _dense(d, d, rngs)
        self.attn_norm = _norm(config, rngs)
        self.ffn_in = _dense(d, config.intermediate_size, rngs)
        self.ffn_out = _dense(config.intermediate_size, d, rngs)
        self.ffn_norm = _norm(config, rngs)

    def attention_scores(self, q: Array, k: Array, relative: np.ndarray | None, rel_embeddings: Array | None):
        """``A`` ``[B, heads, T, T]`` (before masking) from ``q``, ``k`` ``[B, T, heads, d_h]``."""
        cfg = self.config
        heads, hd = cfg.num_heads, cfg.head_dim
        scale = np.sqrt(np.float32(hd) * np.float32(1 + len(cfg.pos_att_type))).astype(np.float32)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / scale
        if relative is None:
            return scores
        span = cfg.attention_span
        if "c2p" in cfg.pos_att_type:
            pos_key = (self.key if cfg.share_att_key else self.pos_key)(rel_embeddings).reshape(-1, heads, hd)
            c2p = jnp.einsum("bqhd,rhd->bhqr", q, pos_key)  # [B, H, T, 2k]
            index = np.clip(relative + span, 0, 2 * span - 1)
            scores = scores + jnp.take_along_axis(c2p, jnp.asarray(index)[None, None], axis=-1) / scale
        if "p2c" in cfg.pos_att_type:
            pos_query = (self.query if cfg.share_att_key else self.pos_query)(rel_embeddings).reshape(-1, heads, hd)
            p2c = jnp.einsum("bkhd,rhd->bhkr", k, pos_query)  # [B, H, T_keys, 2k]
            index = np.clip(-relative + span, 0, 2 * span - 1)
            gathered = jnp.take_along_axis(p2c, jnp.asarray(index)[None, None], axis=-1)  # [B, H, key j, query i]
            scores = scores + jnp.swapaxes(gathered, -1, -2) / scale
        return scores

    def __call__(self, h: Array, allowed: Array, relative: np.ndarray | None, rel_embeddings: Array | None) -> Array:
        b, t, d = h.shape
        heads, hd = self.config.num_heads, self.config.head_dim
        q, k, v = (proj(h).reshape(b, t, heads, hd) for proj in (self.query, self.key, self.value))
        scores = self.attention_scores(q, k, relative, rel_embeddings)
        scores = jnp.where(allowed[:, None], scores, jnp.finfo(scores.dtype).min)
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, d)
        h = self.attn_norm(h + self.attn_out(attn))
        ffn = self.ffn_out(ACTIVATIONS[self.config.hidden_act](self.ffn_in(h)))
        return self.ffn_norm(h + ffn)


class DebertaV2(nnx.Module):
    """DeBERTa-v2 encoder, pooler and classifier: ``(ids, mask, token_types) -> hidden [B, T, D]``.

    :meth:`pooled` is the classifier's input ``[B, D]`` and :meth:`classify` the logits ``[B, num_labels]``.
    """

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, e = config.hidden_size, config.embedding_size
        self.word_embeddings = _embed(config.vocab_size, e, rngs)
        if config.position_biased_input:
            self.position_embeddings = _embed(config.max_position_embeddings, e, rngs)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = _embed(config.type_vocab_size, e, rngs)
        if e != d:
            self.embed_proj = _dense(e, d, rngs, bias=False)
        self.embed_norm = _norm(config, rngs)
        if config.relative_attention:
            self.rel_embeddings = _embed(2 * config.attention_span, d, rngs)
            if config.norm_rel_ebd:
                self.rel_norm = _norm(config, rngs)
        if config.conv_kernel_size:
            k = config.conv_kernel_size
            self.conv = nnx.Conv(
                d,
                d,
                kernel_size=(k,),
                padding=[((k - 1) // 2, (k - 1) // 2)],
                feature_group_count=config.conv_groups,
                kernel_init=nnx.initializers.normal(0.02),
                rngs=rngs,
            )
            self.conv_norm = _norm(config, rngs)
        self.layers = nnx.List([DebertaLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.pooler = _dense(d, d, rngs)
        self.classifier = _dense(d, config.num_labels, rngs)

    def __call__(self, ids: Array, mask: Array, token_types: Array | None = None) -> Array:
        cfg = self.config
        t = ids.shape[1]
        if cfg.position_biased_input and t > cfg.max_position_embeddings:
            raise ValueError(
                f"ids have {t} positions, more than the model's max_position_embeddings={cfg.max_position_embeddings}"
            )
        mask = jnp.asarray(mask, bool)
        h = self.word_embeddings(ids)
        if cfg.position_biased_input:
            h = h + self.position_embeddings(jnp.arange(t))[None]
        if cfg.type_vocab_size > 0:
            h = h + self.token_type_embeddings(jnp.zeros_like(ids) if token_types is None else token_types)
        if cfg.embedding_size != cfg.hidden_size:
            h = self.embed_proj(h)
        embedded = self.embed_norm(h) * mask[..., None].astype(h.dtype)
        relative = rel_embeddings = None
        if cfg.relative_attention:
            relative = relative_positions(t, cfg.position_buckets, cfg.max_relative_positions)
            rel_embeddings = self.rel_embeddings.embedding[...]
            if cfg.norm_rel_ebd:
                rel_embeddings = self.rel_norm(rel_embeddings)
        allowed = mask[:, :, None] & mask[:, None, :]  # transformers' mask_i · mask_j
        h = embedded
        for i, layer in enumerate(self.layers):
            h = layer(h, allowed, relative, rel_embeddings)
            if i == 0 and cfg.conv_kernel_size:
                out = jnp.where(mask[..., None], self.conv(embedded), 0.0)
                h = self.conv_norm(h + ACTIVATIONS[cfg.conv_act](out)) * mask[..., None].astype(h.dtype)
        return h

    def pooled(self, hidden: Array) -> Array:
        """transformers' ``ContextPooler``: ``act(dense(hidden[:, 0]))`` ``[B, D]``."""
        return ACTIVATIONS[self.config.pooler_hidden_act](self.pooler(hidden[:, 0]))

    def classify(self, pooled: Array) -> Array:
        return self.classifier(pooled)


@functools.cache
def _graphdef(config: DebertaConfig) -> nnx.GraphDef:
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: DebertaV2(config, rngs=nnx.Rngs(0))))
    return graphdef


@dataclasses.dataclass(frozen=True)
class Deberta:
    """DeBERTa-v2 as pure functions of an explicit parameter pytree (hashable, jit-static), like :class:`Policy`.

    Inputs are **right**-padded: ``ids`` ``[B, T]`` int32, ``mask`` ``[B, T]`` (1 = real token),
    ``token_types`` ``[B, T]`` (0: first text, 1: second; ignored when ``type_vocab_size = 0``).
    """

    config: DebertaConfig

    def init(self, key: jax.Array) -> nnx.State:
        """Random parameters (``N(0, 0.02²)`` matrices), for tests."""
        return nnx.split(DebertaV2(self.config, rngs=nnx.Rngs(key)))[1]

    def abstract_params(self) -> nnx.State:
        return nnx.split(nnx.eval_shape(lambda: DebertaV2(self.config, rngs=nnx.Rngs(0))))[1]

    def module(self, params: nnx.State) -> DebertaV2:
        return nnx.merge(_graphdef(self.config), params)

    def hidden(self, params: nnx.State, ids: Array, mask: Array, token_types: Array | None = None) -> Array:
        """Last hidden states ``[B, T, D]``."""
        return self.module(params)(ids, mask, token_types)

    def pooled(self, params: nnx.State, ids: Array, mask: Array, token_types: Array | None = None) -> Array:
        """The classifier's input ``[B, D]`` float32: the pooler on the first token."""
        module = self.module(params)
        return module.pooled(module(ids, mask, token_types)).astype(jnp.float32)

    def logits(self, params: nnx.State, ids: Array, mask: Array, token_types: Array | None = None) -> Array:
        """The classifier's output ``[B, num_labels]`` float32."""
        module = self.module(params)
        return module.classify(module.pooled(module(ids, mask, token_types))).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

_EMBEDDINGS = {
    "word_embeddings": "deberta.embeddings.word_embeddings",
    "position_embeddings": "deberta.embeddings.position_embeddings",
    "token_type_embeddings": "deberta.embeddings.token_type_embeddings",
    "embed_proj": "deberta.embeddings.embed_proj",
    "embed_norm": "deberta.embeddings.LayerNorm",
    "rel_embeddings": "deberta.encoder.rel_embeddings",
    "rel_norm": "deberta.encoder.LayerNorm",
    "conv": "deberta.encoder.conv.conv",
    "conv_norm": "deberta.encoder.conv.LayerNorm",
    "pooler": "pooler.dense",
    "classifier": "classifier",
}
_LAYER = {
    "query": "attention.self.query_proj",
    "key": "attention.self.key_proj",
    "value": "attention.self.value_proj",
    "pos_key": "attention.self.pos_key_proj",
    "pos_query": "attention.self.pos_query_proj",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def hf_name(path: tuple) -> str:
    """transformers' tensor name of our parameter ``path`` (e.g. ``('layers', 0, 'query', 'kernel')``)."""
    if path[0] == "layers":
        module = f"deberta.encoder.layer.{path[1]}.{_LAYER[path[2]]}"
    else:
        module = _EMBEDDINGS[path[0]]
    return f"{module}.{'bias' if path[-1] == 'bias' else 'weight'}"


def deberta_params_from_hf(config: DebertaConfig, tensors: Mapping[str, Any]) -> nnx.State:
    """:class:`Deberta` parameters from a ``DebertaV2ForSequenceClassification`` state dict (torch layout).

    Old checkpoints' ``LayerNorm.gamma`` / ``beta`` are read as ``weight`` / ``bias``; buffers
    (``position_ids``) and heads other than the classifier's are ignored. A missing tensor or a
    shape mismatch is a ``ValueError`` naming it.
    """
    named = {}
    for name, value in tensors.items():
        name = name.removesuffix(".gamma") + ".weight" if name.endswith(".gamma") else name
        name = name.removesuffix(".beta") + ".bias" if name.endswith(".beta") else name
        named[name] = value

    def leaf(path, value):
        keys = tuple(k.key for k in path if hasattr(k, "key"))
        name = hf_name(keys)
        if name not in named:
            raise ValueError(
                f"the DeBERTa checkpoint has no tensor {name!r} (for {'/'.join(map(str, keys))}); is it a complete "
                "DebertaV2ForSequenceClassification checkpoint whose config.json is its own?"
            )
        array = np.asarray(named[name], np.float32)
        if keys[-1] == "kernel":
            array = array.transpose(2, 1, 0) if array.ndim == 3 else array.T  # Conv1d [out, in/g, k] -> [k, in/g, out]
        if array.shape != value.shape:
            raise ValueError(
                f"DeBERTa tensor {name!r} has shape {array.shape} (in our layout); the config implies {value.shape}"
            )
        return jnp.asarray(array)

    return jax.tree_util.tree_map_with_path(leaf, Deberta(config).abstract_params())
