"""Reward models from Hugging Face folders: a frozen backbone and a linear score head, scored as transformers does.

Alignment researchers bring their own reward model (a Skywork or OpenAssistant model, or one trained
with TRL's ``RewardTrainer``): a ``*ForSequenceClassification`` checkpoint with one output.
:func:`load_reward_model` reads such a folder into the library's own NNX models::

    rm = load_reward_model("path/to/reward-model")            # config.json, *.safetensors, tokenizer
    r = rm.score(["Write a haiku."], ["Autumn moonlight..."])  # [N] float64, one jitted pass
    oracle = RewardOracle.from_reward_model(rm)                # Bradley–Terry on r (cdb.environments.llm)

**Decoders** (``LlamaForSequenceClassification`` — Llama 3.x, Qwen2/2.5 through
``Qwen2ForSequenceClassification`` —, ``GPT2ForSequenceClassification``,
``GPTNeoXForSequenceClassification``): the :class:`~cdb.models.Policy` decoder (no second
implementation) and a score head ``w`` ``[D, 1]`` without bias (transformers' ``score.weight``)::

    r(x, y) = h_L[t*] · w,    t* = the rightmost position whose token is real and ≠ pad_token_id

(transformers' "last non-padding token": with ``pad_token_id`` unset in ``config.json``, the last
real token). The text is the tokenizer's chat template of the two turns
``[{"role": "user", "content": x}, {"role": "assistant", "content": y}]`` (as reward models are
trained, e.g. by TRL), or ``plain_template`` with ``chat=False``. Rows are **left**-padded;
positions count from each row's first real token, so a row scores as it does alone.

**DeBERTa-v2 / v3** (``DebertaV2ForSequenceClassification``, :mod:`cdb.models.deberta`): the
encoder with disentangled attention, the pooler on the first token and the classifier (with
bias); ``(x, y)`` is a text pair ``[CLS] x [SEP] y [SEP]`` (``tokenizer(x, y)``, as the OpenAssistant
reward models are used). Rows are **right**-padded.

The library's objects, by level:

* a *score model* (:class:`DecoderScoreModel`, :class:`EncoderScoreModel`) is the definition —
  hashable, a static argument of ``jax.jit`` — with pure ``features(params, tokens, mask,
  token_types) -> [N, D]`` (the score head's input) and ``score(...) -> [N]``;
* :class:`FrozenBackbone` adds the parameters, the tokenizer and the text format (``encode``,
  ``features`` of texts): a frozen model that reads (prompt, response) pairs, e.g. for the
  ensemble's features (:class:`cdb.features.FrozenBackboneFeatures`);
* :class:`PretrainedRewardModel` is a :class:`FrozenBackbone` with a score head: ``score(prompts,
  responses)`` and the jitted array-level :meth:`~PretrainedRewardModel.score_tokens`.

The name ``PretrainedRewardModel`` (like :class:`~cdb.models.Pretrained`) keeps it apart from
:class:`cdb.ensemble.RewardModel`, the protocol of the agent's *learned* epistemic reward heads:
this one is a fixed, loaded function of text that plays the oracle or a frozen feature backbone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cdb.models import deberta, hf
from cdb.models.generate import bucket_length
from cdb.models.pretrained import Pretrained
from cdb.models.transformer import Policy, positions_from_mask
from cdb.validation import check_int

Array = jax.Array

#: ``architectures[0]`` of a reward model's ``config.json`` → its ``model_type``.
REWARD_MODEL_ARCHITECTURES = {
    "LlamaForSequenceClassification": "llama",
    "Qwen2ForSequenceClassification": "qwen2",
    "GPT2ForSequenceClassification": "gpt2",
    "GPTNeoXForSequenceClassification": "gpt_neox",
    "DebertaV2ForSequenceClassification": "deberta-v2",
}
_SUPPORTED_TEXT = (
    "supported: LlamaForSequenceClassification (Llama 2/3.x), Qwen2ForSequenceClassification (Qwen2/2.5), "
    "GPT2ForSequenceClassification, GPTNeoXForSequenceClassification (Pythia) and "
    "DebertaV2ForSequenceClassification (DeBERTa-v2/v3)"
)
#: ``(prompt, response)`` as plain text for a decoder read with ``chat=False``.
DEFAULT_PLAIN_TEMPLATE = "{prompt}\n{response}"


# --------------------------------------------------------------------------------------------
# Score models: definitions (hashable, jit-static) and pure functions
# --------------------------------------------------------------------------------------------


def scored_position(tokens: Array, mask: Array, pad_token_id: int | None) -> Array:
    """transformers' "last non-padding token" ``[N]`` int32: the rightmost ``t`` with ``mask[t]`` and
    ``tokens[t] ≠ pad_token_id`` (any real token when ``pad_token_id`` is None); 0 when there is none."""
    keep = jnp.asarray(mask, bool)
    if pad_token_id is not None:
        keep = keep & (jnp.asarray(tokens) != pad_token_id)
    index = jnp.arange(keep.shape[-1], dtype=jnp.int32)
    return jnp.maximum(jnp.max(jnp.where(keep, index, -1), axis=-1), 0)


@dataclasses.dataclass(frozen=True)
class DecoderScoreModel:
    """A causal decoder with a linear score head at the last non-padding token (transformers'
    ``LlamaForSequenceClassification`` / ``Qwen2…`` / ``GPT2…`` / ``GPTNeoX…``).

    Parameters: ``{"backbone": <Policy parameters>, "score": {"kernel": [D, 1]}}`` (``"score"``
    absent for a causal LM used only for its :meth:`features`). Rows are left-padded (or padded
    on both sides, as ``[prompt, response]`` arrays are): ``mask`` says which tokens are real.

    Attributes:
      policy: the decoder (its ``config.tie_embeddings`` is True so that it has no LM head).
      pad_token_id: ``config.json``'s ``pad_token_id``, which the scored position skips.
    """

    policy: Policy
    pad_token_id: int | None = None
    padding_side = "left"

    @property
    def dim(self) -> int:
        return self.policy.config.d_model

    @property
    def max_len(self) -> int:
        return self.policy.config.max_len

    def features(self, params: Any, tokens: Array, mask: Array, token_types: Array | None = None) -> Array:
        """The last layer's (normed) hidden state at :func:`scored_position`: ``[N, D]`` float32."""
        hidden = self.policy.hidden(params["backbone"], tokens, mask, positions_from_mask(mask))
        index = scored_position(tokens, mask, self.pad_token_id)
        return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0].astype(jnp.float32)

    def score(self, params: Any, tokens: Array, mask: Array, token_types: Array | None = None) -> Array:
        """``r = features · w`` ``[N]`` float32."""
        if "score" not in params:
            raise ValueError(
                "these parameters have no score head (a causal LM's, for features only); load a reward model "
                "with cdb.models.load_reward_model"
            )
        kernel = jnp.asarray(params["score"]["kernel"], jnp.float32)
        return (self.features(params, tokens, mask) @ kernel)[:, 0]


@dataclasses.dataclass(frozen=True)
class EncoderScoreModel:
    """DeBERTa-v2 / v3 with its pooler and one-output classifier (transformers'
    ``DebertaV2ForSequenceClassification``); parameters are :class:`~cdb.models.deberta.Deberta`'s.

    Rows are right-padded; ``token_types`` mark the response (1) after the prompt (0).
    """

    deberta: deberta.Deberta
    padding_side = "right"

    @property
    def dim(self) -> int:
        return self.deberta.config.hidden_size

    @property
    def max_len(self) -> int:
        return self.deberta.config.max_position_embeddings

    def features(self, params: Any, tokens: Array, mask: Array, token_types: Array | None = None) -> Array:
        """The pooler's output (the classifier's input) ``[N, D]`` float32."""
        return self.deberta.pooled(params, tokens, mask, token_types)

    def score(self, params: Any, tokens: Array, mask: Array, token_types: Array | None = None) -> Array:
        """The classifier's single output ``[N]`` float32."""
        return self.deberta.logits(params, tokens, mask, token_types)[:, 0]


ScoreModel = DecoderScoreModel | EncoderScoreModel


@functools.partial(jax.jit, static_argnums=0)
def _features(model: ScoreModel, params, tokens, mask, token_types):
    return model.features(params, tokens, mask, token_types)


@functools.partial(jax.jit, static_argnums=0)
def _score(model: ScoreModel, params, tokens, mask, token_types):
    return model.score(params, tokens, mask, token_types)


# --------------------------------------------------------------------------------------------
# Loaded models: parameters, tokenizer and the text format
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenBackbone:
    """A frozen model that reads (prompt, response) texts: definition, parameters, tokenizer, format.

    Attributes:
      model: the definition (:class:`DecoderScoreModel` or :class:`EncoderScoreModel`; hashable).
      params: its parameters (a pytree).
      tokenizer: a ``transformers`` tokenizer.
      chat: decoders: format each pair with the tokenizer's chat template (user and assistant
        turns); otherwise with ``plain_template``. Encoders read a text pair and take False.
      name: a label for results and configurations.
      plain_template: a ``str.format`` template with ``{prompt}`` and ``{response}`` (``chat=False``).
      batch_size: rows per jitted call of the text-level methods (the last batch is padded to a
        power of two rows, lengths to powers of two, so a run compiles a handful of programs).
    """

    model: ScoreModel
    params: Any = dataclasses.field(repr=False)
    tokenizer: Any = dataclasses.field(repr=False)
    chat: bool = True
    name: str = "reward-model"
    plain_template: str = DEFAULT_PLAIN_TEMPLATE
    batch_size: int = 64

    def __post_init__(self):
        check_int(self, "batch_size", self.batch_size, low=1)
        check_format(self.tokenizer, self.model, self.chat, self.plain_template, self.name)

    @classmethod
    def from_pretrained(cls, pretrained: Pretrained, *, chat: bool | None = None, **kwargs) -> FrozenBackbone:
        """A causal LM as a frozen backbone: its last hidden state at the last real token (no score head).

        ``chat`` defaults to whether its tokenizer has a chat template.
        """
        if chat is None:
            chat = bool(getattr(pretrained.tokenizer, "chat_template", None))
        model = DecoderScoreModel(pretrained.policy, pad_token_id=None)
        return cls(model, {"backbone": pretrained.params}, pretrained.tokenizer, chat, pretrained.name, **kwargs)

    @property
    def dim(self) -> int:
        """D, the width of :meth:`features`."""
        return self.model.dim

    @property
    def pad_id(self) -> int:
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    def text(self, prompt: str, response: str) -> str:
        """The text a decoder reads for ``(prompt, response)`` (chat template or ``plain_template``)."""
        return pair_text(self.tokenizer, prompt, response, self.chat, self.plain_template)

    def token_ids(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids and token types (0 prompt, 1 response for a text pair) of one pair, unpadded."""
        return pair_ids(self.tokenizer, self.model, prompt, response, self.chat, self.plain_template)

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str], *, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tokens, mask, token_types)``, each ``[N, T]`` (int32, bool, int32), padded on the model's side.

        ``T`` is the longest pair rounded up to a power of two (at least 16, at most the model's
        context), or ``length``. A pair longer than the context is a ``ValueError``.
        """
        self._check_pairs(prompts, responses)
        encoded = [self.token_ids(x, y) for x, y in zip(prompts, responses, strict=True)]
        longest = max((len(ids) for ids, _ in encoded), default=1)
        max_len = self.model.max_len
        if longest > max_len:
            raise ValueError(
                f"{self.name}: a (prompt, response) pair is {longest} tokens, more than the model's context "
                f"{max_len}; shorten the responses (e.g. LLMDuel's max_new_tokens) or the prompts"
            )
        width = bucket_length(longest, maximum=max_len) if length is None else length
        if longest > width:
            raise ValueError(f"{self.name}: a pair has {longest} tokens; expected at most length={length}")
        tokens = np.full((len(encoded), width), self.pad_id, np.int32)
        mask = np.zeros((len(encoded), width), bool)
        types = np.zeros((len(encoded), width), np.int32)
        for row, (ids, type_ids) in enumerate(encoded):
            span = slice(width - len(ids), width) if self.model.padding_side == "left" else slice(0, len(ids))
            tokens[row, span], mask[row, span], types[row, span] = ids, True, type_ids
        return tokens, mask, types

    def _check_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> None:
        if isinstance(prompts, str) or isinstance(responses, str):
            raise ValueError("prompts and responses must be lists of strings, not one string")
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(responses)} responses; expected equal")

    def features_tokens(self, params: Any, tokens: Array, mask: Array, token_types: Array | None = None) -> Array:
        """:meth:`features` of token arrays ``[N, T]`` -> ``[N, D]`` float32 (pure; jit-able, vmap-able)."""
        return self.model.features(params, tokens, mask, token_types)

    def _batched(self, fn, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``fn(model, params, tokens, mask, types)`` per ``batch_size`` rows (rows padded to a power of 2)."""
        self._check_pairs(prompts, responses)
        prompts, responses = list(prompts), list(responses)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            part = slice(start, start + self.batch_size)
            tokens, mask, types = self.encode(prompts[part], responses[part])
            n = tokens.shape[0]
            rows = min(self.batch_size, 1 << (n - 1).bit_length())
            if rows > n:  # filler rows: one real token each, results dropped
                extra = rows - n
                tokens = np.concatenate([tokens, np.full((extra, tokens.shape[1]), self.pad_id, np.int32)])
                filler = np.zeros((extra, mask.shape[1]), bool)
                filler[:, -1 if self.model.padding_side == "left" else 0] = True
                mask = np.concatenate([mask, filler])
                types = np.concatenate([types, np.zeros((extra, types.shape[1]), np.int32)])
            out.append(np.asarray(fn(self.model, self.params, tokens, mask, types))[:n])
        return np.concatenate(out) if out else np.zeros((0,))

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The score head's input for each pair, ``[N, D]`` float32 (one jitted pass per ``batch_size`` rows)."""
        return self._batched(_features, prompts, responses).reshape(-1, self.dim).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedRewardModel(FrozenBackbone):
    """A loaded reward model (:func:`load_reward_model`): a :class:`FrozenBackbone` with a one-output score head.

    ``score(prompts, responses) -> [N]`` is the text level (one jitted pass per ``batch_size``
    rows); :meth:`score_tokens` the array level, for use inside JAX programs on the accelerator.
    """

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.model, DecoderScoreModel) and "score" not in self.params:
            raise ValueError(f"PretrainedRewardModel {self.name}: params has no 'score' head")

    def score_tokens(self, params: Any, tokens: Array, mask: Array, token_types: Array | None = None) -> Array:
        """Rewards ``[N]`` float32 of token arrays ``[N, T]`` (pure; jit-able, vmap-able)."""
        return self.model.score(params, tokens, mask, token_types)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``r(x_i, y_i)`` ``[N]`` float64 of each pair as the model reads it (see the module docstring)."""
        return self._batched(_score, prompts, responses).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Text format and its checks
# --------------------------------------------------------------------------------------------


def pair_text(tokenizer: Any, prompt: str, response: str, chat: bool, plain_template: str) -> str:
    """The text of ``(prompt, response)``: the chat template's user and assistant turns, or ``plain_template``."""
    if not chat:
        return plain_template.format(prompt=prompt, response=response)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def pair_ids(
    tokenizer: Any, model: ScoreModel, prompt: str, response: str, chat: bool, plain_template: str
) -> tuple[list[int], list[int]]:
    """Token ids and token types of ``(prompt, response)`` as ``model`` reads them, unpadded.

    An encoder reads the text pair ``tokenizer(prompt, response)`` (types 0, then 1); a decoder the
    tokens of :func:`pair_text` (types 0), with the tokenizer's special tokens only for plain text
    (a chat template writes BOS itself, as ``apply_chat_template(tokenize=True)``).
    """
    if isinstance(model, EncoderScoreModel):
        encoded = tokenizer(prompt, response)
        ids = list(encoded["input_ids"])
        return ids, list(encoded.get("token_type_ids") or [0] * len(ids))
    text = pair_text(tokenizer, prompt, response, chat, plain_template)
    ids = list(tokenizer(text, add_special_tokens=not chat)["input_ids"])
    return ids, [0] * len(ids)


_PROBE = ("Is the sky blue?", "Yes: the air scatters blue light the most.")


def check_format(tokenizer: Any, model: ScoreModel, chat: bool, plain_template: str, name: str) -> None:
    """ValueError, before anything compiles, when the tokenizer or the text format cannot fit the model.

    Checks: a decoder with ``chat=True`` has a chat template that renders a user and an assistant
    turn and keeps the assistant's text; an encoder is not asked for ``chat``; ``plain_template``
    has ``{prompt}`` and ``{response}``; every id of a probe pair is inside the model's vocabulary.
    """
    if isinstance(model, EncoderScoreModel):
        if chat:
            raise ValueError(
                f"{name}: chat=True, but a DeBERTa reward model reads (prompt, response) as a text pair "
                "([CLS] prompt [SEP] response [SEP], as transformers' tokenizer(prompt, response)); pass chat=False"
            )
        vocab = model.deberta.config.vocab_size
    else:
        vocab = model.policy.config.vocab_size
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"{name}: chat=True, but the tokenizer has no chat template. Add the template the model was "
                    "trained with (tokenizer_config.json 'chat_template' or chat_template.jinja in the folder), or "
                    f"pass chat=False to read each pair as plain text through plain_template={plain_template!r}"
                )
            try:
                rendered = pair_text(tokenizer, *_PROBE, chat=True, plain_template=plain_template)
            except Exception as err:  # jinja2 raises its own TemplateError and TypeError subclasses
                raise ValueError(
                    f"{name}: the tokenizer's chat template cannot render a user turn followed by an assistant "
                    f"turn ({type(err).__name__}: {err}); a reward model's template must (it formats (prompt, "
                    "response) as the model was trained); fix the template or pass chat=False with a plain_template"
                ) from err
            if _PROBE[1] not in rendered:
                raise ValueError(
                    f"{name}: the tokenizer's chat template drops the assistant's message (rendered "
                    f"{rendered!r:.200}); a reward model's template must write the response it scores; fix the "
                    "template or pass chat=False with a plain_template"
                )
        else:
            try:
                plain_template.format(prompt="", response="")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"{name}: plain_template={plain_template!r} is not allowed ({err!r}); expected a str.format "
                    "template whose only fields are {prompt} and {response}"
                ) from None
            if "{prompt}" not in plain_template or "{response}" not in plain_template:
                raise ValueError(f"{name}: plain_template={plain_template!r} lacks {{prompt}} or {{response}}")
    probe = pair_ids(tokenizer, model, *_PROBE, chat, plain_template)[0]
    too_large = [i for i in probe if not 0 <= i < vocab]
    if too_large or len(tokenizer) > vocab:
        raise ValueError(
            f"{name}: the tokenizer ({len(tokenizer)} tokens) does not fit the model's vocabulary of {vocab} "
            f"(ids {too_large[:5]} of a probe pair are outside it); the folder's tokenizer files must be the "
            "model's own"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _architecture(hf_config: Mapping[str, Any], path: Path) -> str:
    """The supported ``*ForSequenceClassification`` of ``config.json``; ValueError otherwise."""
    architectures = list(hf_config.get("architectures") or [])
    classifiers = [a for a in architectures if a.endswith("ForSequenceClassification")]
    if not classifiers:
        raise ValueError(
            f"{path}: config.json has architectures={architectures}, no *ForSequenceClassification: this is not a "
            "reward model folder. A reward model is a sequence-classification checkpoint with one output "
            "(num_labels=1), e.g. saved by AutoModelForSequenceClassification or TRL's RewardTrainer; to judge with "
            f"a causal LM use cdb.models.load_pretrained and JudgeOracle. {_SUPPORTED_TEXT}"
        )
    supported = [a for a in classifiers if a in REWARD_MODEL_ARCHITECTURES]
    model_type = hf_config.get("model_type")
    if not supported or (model_type is not None and model_type != REWARD_MODEL_ARCHITECTURES[supported[0]]):
        raise ValueError(
            f"{path}: unsupported reward model architecture {classifiers} (model_type={model_type!r}); "
            f"{_SUPPORTED_TEXT}"
        )
    return supported[0]


def _num_labels(hf_config: Mapping[str, Any]) -> int:
    """transformers' reading: ``num_labels``, else the size of ``id2label``, else its default 2."""
    if hf_config.get("num_labels") is not None:
        return int(hf_config["num_labels"])
    return len(hf_config.get("id2label") or {}) or 2


def _decoder(hf_config: dict, tensors: dict, architecture: str, dtype: Any, path: Path):
    hf_config = {**hf_config, "model_type": REWARD_MODEL_ARCHITECTURES[architecture]}
    # no LM head: a reward model has none, and a tied config builds none (its logits are never used)
    config = dataclasses.replace(hf.config_from_hf(hf_config, dtype=dtype), tie_embeddings=True)
    if "score.weight" not in tensors:
        heads = sorted(k for k in tensors if not k.startswith(("model.", "transformer.", "gpt_neox.")))
        raise ValueError(
            f"{path}: the checkpoint has no score head 'score.weight' (top-level tensors: {heads}); a "
            f"{architecture} reward model's head is score.weight [1, hidden_size]. Was it saved with "
            "AutoModelForSequenceClassification?"
        )
    weight = np.asarray(tensors.pop("score.weight"))
    if weight.shape != (1, config.d_model):
        raise ValueError(
            f"{path}: score.weight has shape {weight.shape}; a reward model's head is [1, {config.d_model}] "
            "(one output, the scalar reward)"
        )
    tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    backbone = hf.decoder_params_from_hf(config, tensors)
    pad = hf_config.get("pad_token_id")
    model = DecoderScoreModel(Policy(config), pad_token_id=None if pad is None else int(pad))
    return model, {"backbone": backbone, "score": {"kernel": jnp.asarray(weight.T, jnp.float32)}}


def _encoder(hf_config: dict, tensors: dict, path: Path):
    config = deberta.DebertaConfig.from_hf(hf_config)
    for head in ("classifier.weight", "pooler.dense.weight"):
        if head not in tensors:
            raise ValueError(
                f"{path}: the checkpoint has no {head!r}; a DebertaV2ForSequenceClassification reward model has a "
                "pooler (pooler.dense) and a one-output classifier (classifier.weight [1, hidden_size])"
            )
    return EncoderScoreModel(deberta.Deberta(config)), deberta.deberta_params_from_hf(config, tensors)


def load_reward_model(
    source: str | os.PathLike,
    *,
    chat: bool | None = None,
    plain_template: str = DEFAULT_PLAIN_TEMPLATE,
    dtype: Any = jnp.float32,
    batch_size: int = 64,
    name: str | None = None,
) -> PretrainedRewardModel:
    """Loads a Hugging Face sequence-classification reward model folder into a :class:`PretrainedRewardModel`.

    The folder holds ``config.json`` (``architectures``: one of :data:`REWARD_MODEL_ARCHITECTURES`,
    one label), ``*.safetensors`` (sharded or not) and the tokenizer files; nothing is downloaded.

    Args:
      source: the folder.
      chat: decoders: format (prompt, response) with the tokenizer's chat template (default True;
        an error says what to do when the tokenizer has none); False: ``plain_template``.
        DeBERTa reads a text pair; its default is False.
      plain_template: ``str.format`` template with ``{prompt}`` and ``{response}`` for ``chat=False``.
      dtype: parameters and activations of a decoder (scores are float32; DeBERTa runs in float32).
      batch_size: rows per jitted call of :meth:`PretrainedRewardModel.score`.
      name: a label (default: the folder's name).

    Raises:
      FileNotFoundError: no such folder, or no ``config.json`` / safetensors / tokenizer in it.
      ValueError: not a ``*ForSequenceClassification`` checkpoint, an unsupported architecture (the
        message lists the supported ones), ``num_labels != 1``, no score head, a tokenizer or chat
        template that does not fit the model — all before anything is compiled.
    """
    try:
        import safetensors
        import transformers
    except ImportError as err:
        raise ImportError(
            f"load_reward_model needs transformers and safetensors ({err}); install them with "
            "pip install 'cdb-jax[llm]'"
        ) from err
    path = Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"load_reward_model source {str(source)!r} is not a folder; expected a local Hugging Face reward model "
            "folder (config.json, *.safetensors, tokenizer files). Nothing is downloaded at run time: fetch it "
            "first, e.g. huggingface-cli download REPO --local-dir FOLDER"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face model folder")
    hf_config = json.loads(config_path.read_text())
    architecture = _architecture(hf_config, path)
    num_labels = _num_labels(hf_config)
    if num_labels != 1:
        raise ValueError(
            f"{path}: config.json has num_labels={num_labels} (id2label={hf_config.get('id2label')}); a reward "
            "model has one output, the scalar reward. A classifier with several labels is not a reward model; "
            'if it is one whose config lost num_labels, set "num_labels": 1 in config.json'
        )
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{path} has no *.safetensors weights (found {sorted(p.name for p in path.iterdir())}); convert a "
            "PyTorch checkpoint where torch is installed: model.save_pretrained(folder, safe_serialization=True)"
        )
    tensors = {}
    for file in files:
        with safetensors.safe_open(file, framework="flax") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{path}: no usable tokenizer ({err}); the folder needs the files written by tokenizer.save_pretrained"
        ) from err
    if architecture == "DebertaV2ForSequenceClassification":
        model, params = _encoder(hf_config, tensors, path)
        chat = False if chat is None else chat
    else:
        model, params = _decoder(hf_config, tensors, architecture, dtype, path)
        chat = True if chat is None else chat
    return PretrainedRewardModel(
        model,
        params,
        tokenizer,
        chat=chat,
        name=name or path.name,
        plain_template=plain_template,
        batch_size=batch_size,
    )
